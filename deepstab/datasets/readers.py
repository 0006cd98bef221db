"""Readers of dataset formats: USPS text files, IDX, UCI optdigits, ``.npz`` archives and image
folders, and the image sources of the large sets kept in the uint8 disk store.

Every reader returns ``(x, y)``: ``x`` float32 NHWC in [0, 1], ``y`` int64 labels or ``None``."""

from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from deepstab.datasets.store import Source, class_folder_source
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
    return load_folder(split)


def as_unit_images(x: np.ndarray, origin: str) -> np.ndarray:
    """Validate an image array and bring it to float32 NHWC in [0, 1]."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DeepstabError(
            f"{origin}: expected images shaped (N, H, W) or (N, H, W, C) with C = 1 or 3, got "
            f"shape {x.shape}. Reshape the array to images before saving it."
        )
    if len(x) == 0:
        raise DeepstabError(f"{origin}: the array holds no samples.")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        top = 255 if x.max() <= 255 else np.iinfo(x.dtype).max
        return (x.astype(np.float32) / top).astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise DeepstabError(f"{origin}: expected numeric pixel values, got dtype {x.dtype}.")
    bad = ~np.isfinite(x)
    if bad.any():
        raise DeepstabError(
            f"{origin}: {int(bad.sum())} pixel values are NaN or infinite (first in sample "
            f"{int(np.argwhere(bad)[0][0])}). Remove or repair those samples before clustering."
        )
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        warnings.warn(f"{origin}: values span [{lo:g}, {hi:g}]; rescaling them to [0, 1].", DeepstabNote, stacklevel=3)
        x = (x - lo) / (hi - lo if hi > lo else 1.0)
    return x.astype(np.float32)


def as_labels(y: np.ndarray, n: int, origin: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != n:
        raise DeepstabError(f"{origin}: 'y' must hold one label per sample ({n}), got shape {y.shape}.")
    _, codes = np.unique(y, return_inverse=True)
    return codes.astype(np.int64)


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a ``.npz`` file with an image array ``x`` and optional labels ``y``."""
    path = Path(path)
    if not path.is_file():
        raise DeepstabError(f"npz file {path} does not exist. Give the path of a .npz file holding an array 'x'.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zlib.error, EOFError) as exc:
        raise DeepstabError(
            f"Cannot read {path} as a .npz archive ({exc}). Save it with numpy.savez(path, x=..., y=...)."
        ) from exc
    if "x" not in arrays:
        raise DeepstabError(f"{path} holds the arrays {sorted(arrays)} but no 'x'. Save the images under the name 'x'.")
    x = as_unit_images(arrays["x"], str(path))
    y = as_labels(arrays["y"], len(x), str(path)) if "y" in arrays else None
    return x, y


def _read_image(path: Path) -> np.ndarray:
    from skimage import io

    try:
        image = io.imread(path)
    except Exception as exc:  # imageio/PIL raise many types for unreadable files
        raise DeepstabError(f"Cannot read the image {path} ({exc}). Remove or replace it.") from exc
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise DeepstabError(f"The image {path} has shape {image.shape}; expected grey (H, W) or colour (H, W, 3).")
    return image


def load_folder(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a folder of images: one sub-folder per class (labelled), or a flat folder (unlabelled).

    All images must have the same height and width; grey images are stacked
    as one channel unless some image is colour, then all become RGB.
    """
    root = Path(path)
    if not root.is_dir():
        raise DeepstabError(f"Image folder {root} does not exist. Give a folder of images or of class sub-folders.")

    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    classes = sorted(p for p in root.iterdir() if p.is_dir() and images_in(p))
    if classes:
        files = [(f, label) for label, c in enumerate(classes) for f in images_in(c)]
    else:
        files = [(f, -1) for f in images_in(root)]
    if not files:
        raise DeepstabError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {root} or its sub-folders.")
    images = [_read_image(f) for f, _ in files]
    sizes: dict[tuple[int, int], Path] = {}
    for (f, _), image in zip(files, images):
        sizes.setdefault(image.shape[:2], f)
    if len(sizes) > 1:
        examples = "; ".join(f"{h}x{w} (e.g. {f})" for (h, w), f in list(sizes.items())[:3])
        raise DeepstabError(
            f"The images in {root} have mixed sizes: {examples}. Resize them all to one size "
            f"(height x width) before clustering."
        )
    colour = any(image.ndim == 3 for image in images)
    if colour:
        images = [np.repeat(i[..., None], 3, axis=-1) if i.ndim == 2 else i for i in images]
    x = as_unit_images(np.stack(images), str(root))
    y = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return x, y


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
