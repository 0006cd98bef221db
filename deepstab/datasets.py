"""Dataset registry, loaders and checksummed downloads (DESIGN §8).

Every loader returns ``(x, y)``: ``x`` float32 in NHWC layout with values in
[0, 1], ``y`` int64 labels or ``None`` when the data has none.

Files are looked for in the data directory, resolved in this order: the
``data_dir`` argument, the ``DEEPSTAB_DATA`` environment variable, then
``./data``. Each dataset has its own sub-folder (``usps/``, ``mnist/``, ...).
Missing files are downloaded into that folder and checked against their
sha256 before they are kept; set ``DEEPSTAB_OFFLINE=1`` (or pass
``download=False``) to never touch the network.

Example:

>>> from deepstab import datasets
>>> x, y = datasets.load("digits")
>>> x.shape, x.dtype.name, int(y.max())
((1797, 8, 8, 1), 'float32', 9)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from deepstab.errors import DeepstabError
from deepstab.files import atomic_path
from deepstab.image_store import Source, cache_paths, class_folder_source, open_cached, tfds_source, to_unit_float

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".webp")


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: where it lives, where it comes from, its checksum.

    ``content_sha256`` is the sha256 of the decompressed content when the file
    is gzip-compressed and ``verify_content`` is set, so that a recompressed
    copy of the same data is accepted; otherwise it is the file's own sha256.
    """

    name: str
    sha256: str
    url: str | None = None
    verify_content: bool = False


@dataclass(frozen=True)
class Dataset:
    """A registry entry: how a named dataset is found and read."""

    name: str
    shape: tuple[int, int, int]
    n_classes: int | None
    source: str
    folder: str = ""
    files: tuple[DataFile, ...] = field(default_factory=tuple)
    reader: Callable[[Path], tuple[np.ndarray, np.ndarray | None]] | None = None
    tfds_name: str | None = None
    tfds_splits: tuple[str, ...] = ()
    tfds_label: str = "label"
    # Large datasets: a function of the dataset folder giving the images one by one, kept as a
    # uint8 cache on disk and read batch by batch (``deepstab.image_store``).
    stored: Callable[[Path], Source] | None = None


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """Resolve the data directory: ``path``, else ``$DEEPSTAB_DATA``, else ``./data``."""
    if path:
        return Path(path).expanduser()
    if os.environ.get("DEEPSTAB_DATA"):
        return Path(os.environ["DEEPSTAB_DATA"]).expanduser()
    return Path("data")


def _downloads_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("DEEPSTAB_OFFLINE", "").lower() not in ("1", "true", "yes")


# --------------------------------------------------------------------------- files


def _sha256_of(path: Path, decompress: bool) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if decompress else open
    try:
        with opener(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise DeepstabError(
            f"The file {path} is corrupted or truncated ({exc}). Delete it and run again to "
            f"download a fresh copy, or replace it with an intact one."
        ) from exc
    return digest.hexdigest()


def verify(path: Path, spec: DataFile) -> None:
    """Raise a :class:`DeepstabError` unless ``path`` matches ``spec``'s checksum."""
    actual = _sha256_of(path, spec.verify_content)
    if actual != spec.sha256:
        what = "decompressed content" if spec.verify_content else "file"
        raise DeepstabError(
            f"Checksum mismatch for {path}: the sha256 of its {what} is {actual}, expected "
            f"{spec.sha256}. The file is corrupted, truncated or a different version. Delete it "
            f"and run again to download it{' from ' + spec.url if spec.url else ''}, or replace it "
            f"with the original file."
        )


def download(spec: DataFile, folder: Path) -> Path:
    """Download ``spec`` into ``folder``, verify it, then move it into place atomically."""
    target = folder / spec.name
    try:
        with atomic_path(target) as partial:
            with open(partial, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
            verify(partial, spec)
    except urllib.error.URLError as exc:
        raise DeepstabError(
            f"Could not download {spec.url} ({exc.reason}). If this machine is offline, download "
            f"the file elsewhere and put it at {target}."
        ) from exc
    except OSError as exc:
        raise DeepstabError(
            f"Could not write {target} ({exc}). Point --data-dir or DEEPSTAB_DATA at a writable "
            f"folder, or put {spec.name} there by hand."
        ) from exc
    return target


def fetch(dataset: Dataset, root: Path, download_missing: bool) -> Path:
    """Make sure every file of ``dataset`` is in ``root/<folder>`` and intact."""
    folder = root / dataset.folder
    missing = [spec for spec in dataset.files if not (folder / spec.name).is_file()]
    if missing and not (download_missing and all(spec.url for spec in missing)):
        names = ", ".join(spec.name for spec in missing)
        sources = "; ".join(f"{spec.name} from {spec.url}" for spec in missing if spec.url)
        raise DeepstabError(
            f"Dataset {dataset.name!r} is not available: {names} not found in {folder}. Put the "
            f"files there (point --data-dir or DEEPSTAB_DATA at the folder that holds "
            f"{dataset.folder}/){'; they can be downloaded: ' + sources if sources else ''}."
        )
    for spec in dataset.files:
        if spec in missing:
            download(spec, folder)
        else:
            verify(folder / spec.name, spec)
    return folder


# ------------------------------------------------------------------------- readers


def _read_gzip(path: Path) -> bytes:
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
    lines = _read_gzip(path).decode("ascii", errors="replace").strip().splitlines()
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
    raw = _read_gzip(path)
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


def _idx_pairs(folder: Path, prefixes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
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


def _read_usps(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_usps_file(folder / name) for name in ("usps_train.jf.gz", "usps_test.jf.gz")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_digits(_: Path) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[..., None], digits.target.astype(np.int64)


def _idx_names(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{p}-{k}-idx{n}-ubyte.gz" for p in prefixes for k, n in (("images", 3), ("labels", 1)))


def _mnist_files(prefixes: tuple[str, ...]) -> tuple[DataFile, ...]:
    return tuple(DataFile(name, MNIST_SHA256[name], verify_content=True) for name in _idx_names(prefixes))


# sha256 of the decompressed IDX content (../shared/data/README.md), so a recompressed copy passes.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
USPS_URL = "http://www-i6.informatik.rwth-aachen.de/~keysers/"

# ImageNet subsets (DESIGN §8): ImageNet-10 and the 15 dog classes of ImageNet-Dogs (Chang et
# al. 2017, as used by the LFSS and Contrastive Clustering code), read from a local ImageNet-style
# folder and resized to 96x96.
IMAGENET10_WNIDS = (
    "n02056570", "n02085936", "n02128757", "n02690373", "n02692877",
    "n03095699", "n04254680", "n04285008", "n04467665", "n07747607",
)
IMAGENET_DOGS_WNIDS = (
    "n02085936", "n02086646", "n02088238", "n02091467", "n02097130",
    "n02099601", "n02101388", "n02101556", "n02102177", "n02105056",
    "n02105412", "n02105855", "n02107142", "n02110958", "n02112137",
)
IMAGENET_SIDE = 96
TINY_IMAGENET_SIDE = 64
GTSRB_SIDE = 32
OPTDIGITS_FILES = {"optdigits.tra": 3823, "optdigits.tes": 1797}


def _imagenet_subset(name: str, title: str, wnids: tuple[str, ...]) -> Dataset:
    return Dataset(
        name,
        (IMAGENET_SIDE, IMAGENET_SIDE, 3),
        len(wnids),
        f"{title} ({len(wnids)} WNIDs, {1300 * len(wnids):,} images) from a local ImageNet folder "
        f"imagenet/train/<wnid>/, resized to {IMAGENET_SIDE}x{IMAGENET_SIDE}",
        folder="imagenet",
        stored=lambda folder: wnid_source(folder, wnids),
    )


def _tfds_stored(name: str, shape: tuple[int, int, int], n_classes: int, source: str, tfds_name: str, splits: tuple[str, ...], label: str = "label") -> Dataset:
    return Dataset(
        name, shape, n_classes, source, folder=name, tfds_name=tfds_name, tfds_splits=splits, tfds_label=label,
        stored=lambda folder: _tfds_call(REGISTRY[name], folder.parent, lambda: tfds_source(tfds_name, splits, label, folder.parent / "tfds")),
    )


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "digits", (8, 8, 1), 10, "scikit-learn's bundled digits (1,797 images), no download", reader=_read_digits
        ),
        Dataset(
            "usps",
            (16, 16, 1),
            10,
            "USPS train+test (9,298), usps_{train,test}.jf.gz from RWTH Aachen, sha256-checked",
            folder="usps",
            files=(
                DataFile(
                    "usps_train.jf.gz",
                    "5b73274db884db90c888291f9d58d777ec5d9487f84ff9039ccb0f4d6d766125",
                    USPS_URL + "usps_train.jf.gz",
                ),
                DataFile(
                    "usps_test.jf.gz",
                    "29e95113f390aeb4a8327c3e0ff0b49a7f0dfd1a3fb44aba6377d64df223ed20",
                    USPS_URL + "usps_test.jf.gz",
                ),
            ),
            reader=_read_usps,
        ),
        Dataset(
            "mnist",
            (28, 28, 1),
            10,
            "MNIST train+test (70,000): IDX files in mnist/, else tensorflow-datasets 'mnist'",
            folder="mnist",
            files=_mnist_files(("train", "t10k")),
            reader=lambda folder: _idx_pairs(folder, ("train", "t10k")),
            tfds_name="mnist",
            tfds_splits=("train", "test"),
        ),
        Dataset(
            "mnist-test",
            (28, 28, 1),
            10,
            "MNIST test split (10,000): IDX files in mnist/, else tensorflow-datasets 'mnist'",
            folder="mnist",
            files=_mnist_files(("t10k",)),
            reader=lambda folder: _idx_pairs(folder, ("t10k",)),
            tfds_name="mnist",
            tfds_splits=("test",),
        ),
        Dataset(
            "fmnist",
            (28, 28, 1),
            10,
            "Fashion-MNIST train+test (70,000): IDX files in fmnist/, else tensorflow-datasets 'fashion_mnist'",
            folder="fmnist",
            reader=lambda folder: _idx_pairs(folder, ("train", "t10k")),
            tfds_name="fashion_mnist",
            tfds_splits=("train", "test"),
        ),
        Dataset(
            "kmnist",
            (28, 28, 1),
            10,
            "Kuzushiji-MNIST train+test (70,000): IDX files in kmnist/, else tensorflow-datasets 'kmnist'",
            folder="kmnist",
            reader=lambda folder: _idx_pairs(folder, ("train", "t10k")),
            tfds_name="kmnist",
            tfds_splits=("train", "test"),
        ),
        Dataset(
            "optdigits",
            (8, 8, 1),
            10,
            "UCI optical digits (5,620): optdigits/optdigits.tra and optdigits.tes from "
            "https://archive.ics.uci.edu/ml/machine-learning-databases/optdigits/",
            folder="optdigits",
            reader=lambda folder: _read_optdigits(folder),
        ),
        Dataset(
            "gtsrb",
            (GTSRB_SIDE, GTSRB_SIDE, 3),
            43,
            f"German traffic signs, training set (39,209, 43 classes) from a local folder "
            f"gtsrb/GTSRB/Final_Training/Images/<class>/*.ppm, resized to {GTSRB_SIDE}x{GTSRB_SIDE}",
            folder="gtsrb",
            stored=lambda folder: gtsrb_source(folder),
        ),
        Dataset(
            "cifar10-jpg",
            (32, 32, 3),
            10,
            "CIFAR-10 test split as JPEGs (10,000): cifar10-jpg/test/<class>/*.jpg",
            folder="cifar10-jpg",
            reader=lambda folder: _read_cifar10_jpg(folder),
        ),
        _tfds_stored("cifar10", (32, 32, 3), 10, "CIFAR-10 train+test (60,000) from tensorflow-datasets 'cifar10'", "cifar10", ("train", "test")),
        _tfds_stored(
            "cifar20",
            (32, 32, 3),
            20,
            "CIFAR-100 train+test (60,000) with its 20 coarse labels, from tensorflow-datasets 'cifar100'",
            "cifar100",
            ("train", "test"),
            label="coarse_label",
        ),
        _tfds_stored(
            "stl10",
            (96, 96, 3),
            10,
            "STL-10 train+test (13,000 labelled) + unlabelled (100,000, label -1, trained on, not scored), "
            "from tensorflow-datasets 'stl10'",
            "stl10",
            ("train", "test", "unlabelled"),
        ),
        Dataset(
            "tiny-imagenet",
            (TINY_IMAGENET_SIDE, TINY_IMAGENET_SIDE, 3),
            200,
            "Tiny-ImageNet train split (100,000, 200 classes) from a local folder "
            "tiny-imagenet/tiny-imagenet-200/train/<wnid>/images/ (the extracted tiny-imagenet-200.zip)",
            folder="tiny-imagenet",
            stored=lambda folder: tiny_imagenet_source(folder),
        ),
        _imagenet_subset("imagenet10", "ImageNet-10", IMAGENET10_WNIDS),
        _imagenet_subset("imagenet-dogs", "ImageNet-Dogs", IMAGENET_DOGS_WNIDS),
    )
}

FMNIST_FILES = _idx_names(("train", "t10k"))


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


def gtsrb_source(folder: Path) -> Source:
    """GTSRB's training images, ``GTSRB/Final_Training/Images/<00000..00042>/*.ppm`` under
    ``folder`` (or class folders directly in ``folder``), resized to 32x32."""
    return _sorted_class_folders(
        (folder / "GTSRB" / "Final_Training" / "Images", folder / "Final_Training" / "Images", folder),
        GTSRB_SIDE,
        f"GTSRB is read from {folder}/GTSRB/Final_Training/Images/<class>/*.ppm: extract "
        f"GTSRB_Final_Training_Images.zip (https://benchmark.ini.rub.de/gtsrb_dataset.html) into {folder}",
    )


def _sorted_class_folders(candidates: tuple[Path, ...], side: int, where: str) -> Source:
    """The class sub-folders (sorted by name, searched recursively) of the first existing
    folder among ``candidates``, resized to ``side``; ``where`` says how to get them."""
    base = next((b for b in candidates if b.is_dir()), None)
    if base is None:
        raise DeepstabError(f"{where}, or point --data-dir at the folder that holds it.")
    classes = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
    return class_folder_source(base, classes, side, IMAGE_EXTENSIONS)


def _read_optdigits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
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
        if table.shape != (rows, 65) or table[:, :64].min() < 0 or table[:, :64].max() > 16 or not np.isin(table[:, 64], range(10)).all():
            raise DeepstabError(
                f"{path} holds a {table.shape[0]}x{table.shape[1]} table; the UCI file has {rows} rows of 64 counts "
                f"in 0..16 and a digit label. Download it again."
            )
        xs.append(table[:, :64])
        ys.append(table[:, 64])
    return (np.concatenate(xs).reshape(-1, 8, 8, 1) / 16.0).astype(np.float32), np.concatenate(ys)


def _read_cifar10_jpg(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    split = folder / "test"
    if not split.is_dir():
        raise DeepstabError(
            f"Dataset 'cifar10-jpg' expects the CIFAR-10 test split as JPEGs in {split}/<class>/*.jpg "
            f"(10 class folders). Point --data-dir or DEEPSTAB_DATA at the folder that holds cifar10-jpg/."
        )
    return load_folder(split)


# ------------------------------------------------------------------- npz, folder


def _as_unit_images(x: np.ndarray, origin: str) -> np.ndarray:
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
        warnings.warn(f"{origin}: values span [{lo:g}, {hi:g}]; rescaling them to [0, 1].", stacklevel=3)
        x = (x - lo) / (hi - lo if hi > lo else 1.0)
    return x.astype(np.float32)


def _as_labels(y: np.ndarray, n: int, origin: str) -> np.ndarray:
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
        raise DeepstabError(f"Cannot read {path} as a .npz archive ({exc}). Save it with numpy.savez(path, x=..., y=...).") from exc
    if "x" not in arrays:
        raise DeepstabError(f"{path} holds the arrays {sorted(arrays)} but no 'x'. Save the images under the name 'x'.")
    x = _as_unit_images(arrays["x"], str(path))
    y = _as_labels(arrays["y"], len(x), str(path)) if "y" in arrays else None
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
        raise DeepstabError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {root} or its sub-folders."
        )
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
    x = _as_unit_images(np.stack(images), str(root))
    y = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return x, y


# ---------------------------------------------------------------------- tfds


def _tfds_call(dataset: Dataset, root: Path, build: Callable):
    """Run ``build`` (which uses tensorflow-datasets, downloading into ``root/tfds``) and turn
    its failures into one clear error."""
    try:
        return build()
    except DeepstabError:
        raise
    except Exception as exc:  # tfds surfaces network, build and format errors as many types
        local = (
            f"Put the IDX files {', '.join(_expected_files(dataset))} in {root / dataset.folder}, or run"
            if not dataset.stored
            else "Run"
        )
        raise DeepstabError(
            f"Dataset {dataset.name!r}: no local copy in {root / dataset.folder} and tensorflow-datasets could not "
            f"provide {dataset.tfds_name!r} ({type(exc).__name__}: {str(exc)[:200]}). {local} once on a machine "
            f"with internet access (tensorflow-datasets keeps its copy in {root / 'tfds'})."
        ) from exc


def _load_tfds(dataset: Dataset, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Build ``dataset`` with tensorflow-datasets (downloads into ``root/tfds``), in memory."""

    def build():
        n, items = tfds_source(dataset.tfds_name, dataset.tfds_splits, dataset.tfds_label, root / "tfds")
        pairs = list(items())
        return np.stack([image for image, _ in pairs]), np.array([label for _, label in pairs], dtype=np.int64)

    x, y = _tfds_call(dataset, root, build)
    return _as_unit_images(x, dataset.name), y


# ------------------------------------------------------------------------ public


def slug(name: str) -> str:
    """A short file-name-safe form of a dataset name (``npz:/a/b.npz`` -> ``b``)."""
    base = Path(name.split(":", 1)[1]).stem if name.startswith(("npz:", "folder:")) else name
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in base) or "data"


def names() -> list[str]:
    """Every registered dataset name (``npz:PATH`` and ``folder:PATH`` come on top)."""
    return list(REGISTRY)


def _expected_files(dataset: Dataset) -> list[str]:
    return [f.name for f in dataset.files] or list(FMNIST_FILES)


def _local_files_present(dataset: Dataset, root: Path) -> bool:
    if dataset.stored and cache_paths(root / dataset.folder, dataset.name)[0].is_file():
        return True
    if dataset.stored and dataset.tfds_name:
        return (root / "tfds" / dataset.tfds_name).is_dir()
    if not dataset.files and not dataset.tfds_name:  # an image folder
        return (root / dataset.folder).is_dir()
    return all((root / dataset.folder / name).is_file() for name in _expected_files(dataset))


def _downloadable(dataset: Dataset) -> bool:
    return bool(dataset.tfds_name) or any(f.url for f in dataset.files)


def is_available(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``name`` can be loaded now without a download."""
    dataset = REGISTRY[name]
    return not dataset.folder or _local_files_present(dataset, resolve_data_dir(data_dir))


def _how_to_get(dataset: Dataset, root: Path) -> str:
    if dataset.stored and dataset.tfds_name:
        return f"no: allow downloads (tensorflow-datasets keeps it in {root / 'tfds'})"
    return f"no: put files in {root / dataset.folder}" + (" or allow download" if _downloadable(dataset) else "")


def describe(data_dir: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """One row per dataset: name, image shape, source and availability (for ``cli.py datasets``)."""
    root = resolve_data_dir(data_dir)
    rows = []
    for name, d in REGISTRY.items():
        here = is_available(name, root)
        where = f"files in {root / d.folder}" if d.folder else "bundled"
        rows.append(
            {
                "name": name,
                "shape": "x".join(map(str, d.shape)),
                "source": d.source,
                "available": f"yes ({where})" if here else _how_to_get(d, root),
            }
        )
    rows.append({"name": "npz:PATH", "shape": "any", "source": "a .npz file with 'x' (N,H,W[,C]) and optional 'y'", "available": "-"})
    rows.append({"name": "folder:PATH", "shape": "any", "source": "a folder of class sub-folders of images, or a flat folder", "available": "-"})
    return rows


def load(
    name: str, data_dir: str | os.PathLike | None = None, download: bool | None = None, stream: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a dataset by name as ``(x, y)``: float32 NHWC in [0, 1] and labels (or ``None``;
    ``-1`` marks the unlabelled images of STL-10, which metrics leave out).

    Args:
        name: a registered name (see :func:`names`), ``npz:PATH`` or ``folder:PATH``.
        data_dir: where dataset files live; defaults to ``$DEEPSTAB_DATA``, then ``./data``.
        download: whether missing files may be downloaded; defaults to yes unless
            ``DEEPSTAB_OFFLINE=1``.
        stream: for the large datasets (CIFAR-10/20, STL-10, Tiny-ImageNet, ImageNet subsets),
            return ``x`` as the read-only uint8 memory map of their on-disk cache instead of
            float32 in memory; :func:`~deepstab.image_store.to_unit_float` converts a batch.
    """
    if not isinstance(name, str) or not name:
        raise DeepstabError(f"Dataset name must be a non-empty string, got {name!r}.")
    if name.startswith("npz:"):
        return load_npz(name[4:])
    if name.startswith("folder:"):
        return load_folder(name[7:])
    if name not in REGISTRY:
        raise DeepstabError(
            f"Unknown dataset {name!r}. Choose one of {', '.join(REGISTRY)}, or give 'npz:PATH' "
            f"or 'folder:PATH' for your own data (`python cli.py datasets` lists them)."
        )
    dataset = REGISTRY[name]
    if not dataset.folder:
        return dataset.reader(Path("."))
    root = resolve_data_dir(data_dir)
    allowed = _downloads_allowed(download)
    if dataset.stored:
        if dataset.tfds_name and not allowed and not _local_files_present(dataset, root):
            raise DeepstabError(
                f"Dataset {name!r} is not available offline: neither {root / dataset.folder} nor a prepared "
                f"tensorflow-datasets copy in {root / 'tfds'} exists. Allow downloads (unset DEEPSTAB_OFFLINE) or "
                f"point --data-dir or DEEPSTAB_DATA at the folder that holds them."
            )
        x, y = open_cached(root / dataset.folder, name, dataset.shape, lambda: dataset.stored(root / dataset.folder))
        return (x, y) if stream else (to_unit_float(x), y)
    if _local_files_present(dataset, root) or not dataset.tfds_name:
        return dataset.reader(fetch(dataset, root, allowed) if dataset.files else root / dataset.folder)
    if not allowed:
        raise DeepstabError(
            f"Dataset {name!r} is not available offline: put the IDX files "
            f"{', '.join(_expected_files(dataset))} in {root / dataset.folder} (point --data-dir or "
            f"DEEPSTAB_DATA at the folder that holds {dataset.folder}/), or allow downloads "
            f"through tensorflow-datasets (unset DEEPSTAB_OFFLINE)."
        )
    return _load_tfds(dataset, root)
