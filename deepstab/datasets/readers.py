"""Readers of dataset formats: USPS text files, IDX, UCI optdigits, ``.npz`` archives and image
folders, and the image sources of the large sets kept in the uint8 disk store.

Every reader returns ``(x, y)``: ``x`` float32 NHWC in [0, 1], ``y`` int64 labels or ``None``."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from deepstab.datasets.store import CACHE_FOLDER, Source, class_folder_source
from deepstab.errors import DeepstabError, DeepstabNote

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".webp")

IMAGENET_SIDE = 96

TINY_IMAGENET_SIDE = 64

GTSRB_SIDE = 32

OPTDIGITS_FILES = {"optdigits.tra": 3823, "optdigits.tes": 1797}


def read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DeepstabError(
            f"The file {path} is corrupted or truncated ({exc}). Delete it and run again to "
            f"download a fresh copy, or replace it with an intact one."
        ) from exc


def read_usps_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``usps_*.jf.gz`` file: header ``10 256``, rows ``label v1..v256``, then ``-1``.

    Pixel values lie in [0, 2] and are divided by 2.
    """
    lines = read_gzip(path).decode("ascii", errors="replace").strip().splitlines()
    bad = DeepstabError(
        f"The file {path} is not a valid USPS file (expected a '10 256' header, rows of 257 "
        f"numbers and a closing '-1'). Delete it and run again to download a fresh copy."
    )
    if len(lines) < 3 or lines[0].split() != ["10", "256"] or lines[-1].strip() != "-1":
        raise bad
    try:
        values = np.array(" ".join(lines[1:-1]).split(), dtype=np.float32)
    except ValueError as exc:
        raise bad from exc
    if values.size % 257:
        raise bad
    rows = values.reshape(-1, 257)
    labels = rows[:, 0]
    if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise bad
    x = np.clip(rows[:, 1:] / 2.0, 0.0, 1.0).reshape(-1, 16, 16, 1)
    return x.astype(np.float32), labels.astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file (uint8 data, 1 or 3 dimensions)."""
    raw = read_gzip(path)
    if len(raw) < 8 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DeepstabError(f"The file {path} is not an IDX file of unsigned bytes. Replace it with the original.")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DeepstabError(
            f"The file {path} is truncated: its header promises {int(np.prod(shape))} bytes of data "
            f"but it holds {data.size}. Delete it and replace it with an intact copy."
        )
    return data.reshape(shape)


def idx_names(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{p}-{k}-idx{n}-ubyte.gz" for p in prefixes for k, n in (("images", 3), ("labels", 1)))


def idx_pairs(folder: Path, prefixes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for prefix in prefixes:
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise DeepstabError(
                f"{folder}: {prefix}-images holds {len(images)} images but {prefix}-labels holds "
                f"{len(labels)} labels. Replace the files with a matching pair."
            )
        xs.append(images)
        ys.append(labels)
    x = np.concatenate(xs).astype(np.float32)[..., None] / 255.0
    return x, np.concatenate(ys).astype(np.int64)


def read_usps(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_usps_file(folder / name) for name in ("usps_train.jf.gz", "usps_test.jf.gz")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_digits(_: Path) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[..., None], digits.target.astype(np.int64)


def read_optdigits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """UCI optdigits: rows of 64 block counts (0-16) and a label; ``.tra`` then ``.tes``."""
    xs, ys = [], []
    for name, rows in OPTDIGITS_FILES.items():
        path = folder / name
        if not path.is_file():
            raise DeepstabError(
                f"Dataset 'optdigits' needs {path}. Download optdigits.tra and optdigits.tes from "
                f"https://archive.ics.uci.edu/ml/machine-learning-databases/optdigits/ into {folder}."
            )
        try:
            table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
        except ValueError as exc:
            raise DeepstabError(f"{path} is not a UCI optdigits file (comma-separated integers): {exc}.") from exc
        if (
            table.shape != (rows, 65)
            or table[:, :64].min() < 0
            or table[:, :64].max() > 16
            or not np.isin(table[:, 64], range(10)).all()
        ):
            raise DeepstabError(
                f"{path} holds a {table.shape[0]}x{table.shape[1]} table; the UCI file has {rows} rows of 64 counts "
                f"in 0..16 and a digit label. Download it again."
            )
        xs.append(table[:, :64])
        ys.append(table[:, 64])
    return (np.concatenate(xs).reshape(-1, 8, 8, 1) / 16.0).astype(np.float32), np.concatenate(ys)


def read_cifar10_jpg(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    split = folder / "test"
    if not split.is_dir():
        raise DeepstabError(
            f"Dataset 'cifar10-jpg' expects the CIFAR-10 test split as JPEGs in {split}/<class>/*.jpg "
            f"(10 class folders). Point --data-dir or DEEPSTAB_DATA at the folder that holds cifar10-jpg/."
        )
    (n, items), shape, _, _ = folder_source(split)
    pairs = list(items())
    return as_unit_images(np.stack([image for image, _ in pairs]), str(split)), np.array([label for _, label in pairs])


def as_unit_images(x: np.ndarray, origin: str) -> np.ndarray:
    """Validate an image array and bring it to float32 NHWC in [0, 1] by the rule of its dtype:
    ``bool`` as 0/1; ``uint8`` / 255; ``uint16`` / 65535; other integers whose values lie in
    0..255 / 255; floats in [0, 1] as they are; any other range min-max scaled to [0, 1], with a
    note. NaN or infinite values, constant arrays and non-numeric dtypes are refused."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DeepstabError(
            f"{origin}: expected images shaped (N, H, W) or (N, H, W, C) with C = 1 or 3, got "
            f"shape {x.shape}. Reshape the array to images before saving it."
        )
    if len(x) == 0:
        raise DeepstabError(f"{origin}: the array holds no samples.")
    if x.dtype != np.bool_ and not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DeepstabError(f"{origin}: expected numeric pixel values, got dtype {x.dtype}.")
    if x.size > 1 and np.all(x == x.flat[0]):
        raise DeepstabError(f"{origin}: every pixel has the value {x.flat[0]}; there is nothing to cluster.")
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if x.dtype in (np.uint8, np.uint16):
        return (x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)).astype(np.float32)
    bad = ~np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else None
    if bad is not None and bad.any():
        raise DeepstabError(
            f"{origin}: {int(bad.sum())} pixel values are NaN or infinite (first in sample "
            f"{int(np.argwhere(bad)[0][0])}). Remove or repair those samples before clustering."
        )
    lo, hi = float(x.min()), float(x.max())
    if np.issubdtype(x.dtype, np.integer) and lo >= 0 and hi <= 255:
        return (x.astype(np.float32) / np.float32(255.0)).astype(np.float32)
    if np.issubdtype(x.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return x.astype(np.float32)
    _note(f"{origin}: {x.dtype} values span [{lo:g}, {hi:g}]; scaling them to [0, 1] (min-max).")
    return ((x.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def as_labels(y: np.ndarray, n: int, origin: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != n:
        raise DeepstabError(f"{origin}: 'y' must hold one label per sample ({n}), got shape {y.shape}.")
    labelled = y >= 0 if np.issubdtype(y.dtype, np.number) else np.ones(len(y), bool)
    codes = np.full(len(y), -1, np.int64)  # -1: unlabelled, left out of ACC/NMI/ARI
    codes[labelled] = np.unique(y[labelled], return_inverse=True)[1]
    return codes


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a ``.npz`` file with an image array ``x`` and optional labels ``y`` (or a ``.npy``
    file holding the images alone)."""
    path = Path(path)
    if not path.is_file():
        raise DeepstabError(f"npz file {path} does not exist. Give the path of a .npz file holding an array 'x'.")
    try:
        with open(path, "rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            arrays = {"x": loaded} if isinstance(loaded, np.ndarray) else {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise DeepstabError(
            f"Cannot read {path} as a .npz archive ({type(exc).__name__}: {exc}). It is truncated, damaged or of "
            f"another format; save it with numpy.savez(path, x=..., y=...)."
        ) from exc
    if "x" not in arrays:
        raise DeepstabError(f"{path} holds the arrays {sorted(arrays)} but no 'x'. Save the images under the name 'x'.")
    x = as_unit_images(arrays["x"], str(path))
    y = as_labels(arrays["y"], len(x), str(path)) if "y" in arrays else None
    return x, y


def read_image_uint8(path: Path, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as uint8 (H, W, ``channels``): 16-bit images scaled by 65535 (and other
    integer modes by their range), colour made grey or grey made colour as asked, resized
    (bilinear) to ``size`` when given."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                values = np.asarray(image, dtype=np.float64)
                top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
                image = Image.fromarray(np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8), "L")
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except OSError as exc:
        raise DeepstabError(f"Cannot read the image {path} ({exc}). Remove or replace it.") from exc
    return array[..., None] if array.ndim == 2 else array


def resize_images(x: np.ndarray, side: int, origin: str) -> np.ndarray:
    """Images ``x`` (N, H, W, C) resized to ``side`` x ``side`` with PIL's bilinear filter (as a
    folder's images are), with a note; uint8 images stay uint8, others become float32. Images
    of that size already are returned as they are."""
    from PIL import Image

    if tuple(x.shape[1:3]) == (side, side):
        return x
    uint8 = x.dtype == np.uint8
    out = np.empty((len(x), side, side, x.shape[-1]), np.uint8 if uint8 else np.float32)
    for i, image in enumerate(x):
        for c in range(x.shape[-1]):
            channel = np.ascontiguousarray(image[..., c], np.uint8 if uint8 else np.float32)
            out[i, ..., c] = np.asarray(Image.fromarray(channel).resize((side, side), Image.BILINEAR))
    _note(f"{origin}: {len(x)} images of {x.shape[1]}x{x.shape[2]} pixels are resized to {side}x{side} (bilinear).")
    return out


def _examples(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _note(message: str) -> None:
    warnings.warn(message, DeepstabNote, stacklevel=3)


def folder_listing(root: Path) -> tuple[list[tuple[Path, int]], bool]:
    """The images of a folder with their labels: one label per class sub-folder (its images
    found at any depth), or, with no class sub-folders, the folder's own images unlabelled
    (-1). Returns ``(files, labelled)``.

    Invariant: every image left out or merged is named in a note (:class:`DeepstabNote`):
    images at the top level beside class folders, sub-folders without images, files that are
    not images by their extension, and class folders whose images lie in several folders below
    them (``a/0/*.png`` and ``a/1/*.png`` are both class ``a``). A folder with one class
    sub-folder has one class: its images are read as unlabelled, and a note says why."""
    if not root.is_dir():
        raise DeepstabError(f"Image folder {root} does not exist. Give a folder of images or of class sub-folders.")
    found = sorted(p for p in root.rglob("*") if CACHE_FOLDER not in p.relative_to(root).parts and p.is_file())
    top, below, others = [], {}, []
    for path in found:
        parts = path.relative_to(root).parts
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            others += [] if any(part.startswith(".") for part in parts) else [path]
        elif len(parts) == 1:
            top.append(path)
        else:
            below.setdefault(parts[0], []).append(path)
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != CACHE_FOLDER)
    classes = [name for name in folders if name in below]
    if others:
        kinds = sorted({p.suffix.lower() or "no extension" for p in others})
        _note(f"{root}: {len(others)} files that are not images ({_examples(kinds)}) are left out.")
    if not classes:
        if not top:
            raise DeepstabError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {root} or its sub-folders.")
        return [(f, -1) for f in top], False
    if top:
        _note(
            f"{root}: {len(top)} images at the top level are left out: with class sub-folders, each class "
            f"is one sub-folder. Move them into a class folder to use them."
        )
    empty = [name for name in folders if name not in below]
    if empty:
        _note(f"{root}: the sub-folders {_examples(empty)} hold no images and are left out.")
    if len(classes) == 1:
        (only,) = classes
        _note(
            f"{root}: all {len(below[only])} images lie in its one class folder {only} (the images below it "
            f"count as that class), so they are read as unlabelled and the number of clusters must be given "
            f"(--n-clusters). To take the sub-folders of {only} as the classes, give folder:{root / only}."
        )
        return [(f, -1) for f in below[only]], False
    merged = []
    for name in classes:
        places = sorted({str(f.parent.relative_to(root)) for f in below[name]})
        if len(places) > 1:
            merged.append(f"{name} (from {_examples(places, 2)})")
    if merged:
        _note(
            f"{root}: the images in several folders below a class folder are merged into that class: "
            f"{_examples(merged)}. Each sub-folder of {root} is one class."
        )
    return [(f, label) for label, name in enumerate(classes) for f in below[name]], True


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def folder_source(root: Path, image_size: int | None = None) -> tuple[Source, tuple[int, int, int], bool, str]:
    """An image folder as a source for the uint8 disk store: ``(source, image shape, labelled,
    cache name)``. Without ``image_size`` every image must have the same height and width; the
    images are grey unless one of them is colour. The cache name changes with the files (names,
    sizes, times) and ``image_size``, so an edited folder is converted again."""
    from PIL import Image

    files, labelled = folder_listing(root)
    sizes: dict[tuple[int, int], Path] = {}
    count: dict[tuple[int, int], int] = {}
    colour = False
    digest = hashlib.sha256(f"{image_size}".encode())
    for path, label in files:
        try:
            with Image.open(path) as image:
                sizes.setdefault((image.height, image.width), path)
                count[image.height, image.width] = count.get((image.height, image.width), 0) + 1
                palette = image.palette.mode if image.mode == "P" and image.palette else "L"
                colour = colour or (image.mode not in GREY_MODES and not (image.mode == "P" and palette == "L"))
        except OSError as exc:
            raise DeepstabError(f"Cannot read the image {path} ({exc}). Remove or replace it.") from exc
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    if image_size is None and len(sizes) > 1:
        examples = "; ".join(f"{h}x{w} (e.g. {f})" for (h, w), f in list(sizes.items())[:3])
        raise DeepstabError(
            f"The images in {root} have mixed sizes: {examples}. Pass --image-size N to resize them all to NxN, "
            f"or resize them to one size before clustering."
        )
    shape = (image_size, image_size) if image_size else next(iter(sizes))
    resized = {size: n for size, n in count.items() if size != shape}
    if resized:
        were = _examples([f"{h}x{w}" for h, w in resized])
        _note(
            f"{root}: {sum(resized.values())} images of {were} pixels are resized to {shape[0]}x{shape[1]} (bilinear)."
        )
    channels = 3 if colour else 1

    def items():
        for path, label in files:
            yield read_image_uint8(path, channels, shape), label

    return (len(files), items), (*shape, channels), labelled, f"folder-{digest.hexdigest()[:16]}"


def wnid_source(folder: Path, wnids: tuple[str, ...], side: int = IMAGENET_SIDE) -> Source:
    """The classes ``wnids`` (in that order, labels 0..) of an ImageNet-style folder
    (``folder/train/<wnid>/*`` or ``folder/<wnid>/*``), every image resized to ``side`` x ``side`` RGB."""
    base = folder / "train" if (folder / "train").is_dir() else folder
    missing = [w for w in wnids if not (base / w).is_dir()]
    if missing:
        raise DeepstabError(
            f"The ImageNet folder {base} lacks the class folders {', '.join(missing[:5])}"
            f"{' and more' if len(missing) > 5 else ''} ({len(missing)} of {len(wnids)}). Put the ImageNet training "
            f"images as {base}/<wnid>/*.JPEG, or point --data-dir at the folder that holds imagenet/."
        )
    return class_folder_source(base, wnids, side, IMAGE_EXTENSIONS)


def tiny_imagenet_source(folder: Path) -> Source:
    """Tiny-ImageNet's training split: ``tiny-imagenet-200/train/<wnid>/images/*.JPEG`` under
    ``folder`` (or ``folder/train/...``), classes in sorted WNID order."""
    return _sorted_class_folders(
        (folder / "tiny-imagenet-200" / "train", folder / "train"),
        TINY_IMAGENET_SIDE,
        f"Tiny-ImageNet is read from {folder}/tiny-imagenet-200/train/<wnid>/images/*.JPEG: extract "
        f"tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) into {folder}",
    )


# The 5-class subset of the BRB authors' code (after DipDECK): speed limit 50, priority road,
# no entry, general caution, ahead only; 7,860 images of the official training set.
GTSRB_5_CLASSES = ("00002", "00012", "00017", "00018", "00035")


def gtsrb_source(folder: Path, classes: tuple[str, ...] | None = None, equalize: bool = False) -> Source:
    """GTSRB's training images, ``GTSRB/Final_Training/Images/<00000..00042>/*.ppm`` under
    ``folder`` (or class folders directly in ``folder``), resized to 32x32: every class, or the
    ``classes`` named (labels in their order). ``equalize``: each image resized with bicubic
    interpolation and histogram-equalised per channel afterwards, as the BRB authors' ``gtsrb``
    (PIL's ``ImageOps.equalize``, the algorithm of torchvision's ``equalize``)."""
    return _sorted_class_folders(
        (folder / "GTSRB" / "Final_Training" / "Images", folder / "Final_Training" / "Images", folder),
        GTSRB_SIDE,
        f"GTSRB is read from {folder}/GTSRB/Final_Training/Images/<class>/*.ppm: extract "
        f"GTSRB_Final_Training_Images.zip (https://benchmark.ini.rub.de/gtsrb_dataset.html) into {folder}",
        classes,
        "equalize" if equalize else None,
    )


def _sorted_class_folders(
    candidates: tuple[Path, ...],
    side: int,
    where: str,
    classes: tuple[str, ...] | None = None,
    style: str | None = None,
) -> Source:
    """The class sub-folders (sorted by name, searched recursively, or the ``classes`` named) of
    the first existing folder among ``candidates``, resized to ``side`` (``style``: see
    :func:`~deepstab.datasets.store.class_folder_source`); ``where`` says how to get them."""
    base = next((b for b in candidates if b.is_dir()), None)
    if base is None:
        raise DeepstabError(f"{where}, or point --data-dir at the folder that holds it.")
    present = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
    missing = sorted(set(classes or ()) - set(present))
    if missing:
        raise DeepstabError(f"{base} lacks the class folders {', '.join(missing)}. {where}.")
    return class_folder_source(base, classes or present, side, IMAGE_EXTENSIONS, style)
