"""Datasets by name: the registry, loaders, checksummed downloads and the uint8 disk store.

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
((1797, 8, 8, 1), 'float32', 9)"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import numpy as np

from deepstab.datasets.downloads import DataFile, download, downloads_allowed, resolve_data_dir, verify
from deepstab.datasets.readers import (
    IMAGE_EXTENSIONS,
    folder_source,
    load_npz,
    read_idx,
    read_usps_file,
    resize_images,
)
from deepstab.datasets.registry import IMAGENET10_WNIDS, IMAGENET_DOGS_WNIDS, REGISTRY, Dataset, names, slug
from deepstab.datasets.store import cache_paths, open_cached, to_unit_float
from deepstab.datasets.tfds import load_tfds
from deepstab.errors import DeepstabError, DeepstabNote

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET10_WNIDS",
    "IMAGENET_DOGS_WNIDS",
    "REGISTRY",
    "DataFile",
    "Dataset",
    "describe",
    "download",
    "fetch",
    "is_available",
    "load",
    "load_folder",
    "load_npz",
    "names",
    "read_idx",
    "read_usps_file",
    "resolve_data_dir",
    "slug",
    "to_unit_float",
    "verify",
]


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


def _local_files_present(dataset: Dataset, root: Path) -> bool:
    if dataset.stored and cache_paths(root / dataset.folder, dataset.name)[0].is_file():
        return True
    if dataset.stored and dataset.tfds_name:
        return (root / "tfds" / dataset.tfds_name).is_dir()
    if not dataset.files and not dataset.tfds_name:  # an image folder
        return (root / dataset.folder).is_dir()
    return all((root / dataset.folder / name).is_file() for name in dataset.expected_files)


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
    rows.append(
        {
            "name": "npz:PATH",
            "shape": "any",
            "source": "a .npz file with 'x' (N,H,W[,C]) and optional 'y'",
            "available": "-",
        }
    )
    rows.append(
        {
            "name": "folder:PATH",
            "shape": "any",
            "source": "a folder of class sub-folders of images, or a flat folder",
            "available": "-",
        }
    )
    return rows


def load_folder(path: str | os.PathLike, image_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A folder of images (class sub-folders, or a flat folder) as uint8 ``(x, y)``: converted once,
    with a progress line, into the uint8 store ``<folder>/.deepstab-cache/`` and memory-mapped
    from there (held in memory instead when the folder is read-only). ``y`` is ``None`` for a
    flat folder."""
    root = Path(path)
    source, shape, labelled, name = folder_source(root, image_size)
    try:
        x, y = open_cached(root, name, shape, lambda: source)
    except DeepstabError as exc:
        if getattr(exc.__cause__, "errno", None) not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        note = f"{root} is read-only: its images are converted in memory, on every load."
        warnings.warn(note, DeepstabNote, stacklevel=3)
        pairs = list(source[1]())
        x, y = np.stack([image for image, _ in pairs]), np.array([label for _, label in pairs], np.int64)
    return x, (y if labelled else None)


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    stream: bool = False,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a dataset by name as ``(x, y)``: float32 NHWC in [0, 1] and labels (or ``None``;
    ``-1`` marks the unlabelled images of STL-10, which metrics leave out).

    Args:
        name: a registered name (see :func:`names`), ``npz:PATH`` or ``folder:PATH``.
        data_dir: where dataset files live; defaults to ``$DEEPSTAB_DATA``, then ``./data``.
        download: whether missing files may be downloaded; defaults to yes unless
            ``DEEPSTAB_OFFLINE=1``.
        stream: for the large datasets (CIFAR-10/20, STL-10, Tiny-ImageNet, ImageNet subsets)
            and ``folder:`` sets, return ``x`` as the read-only uint8 memory map of their on-disk
            store instead of float32 in memory; :func:`~deepstab.datasets.store.to_unit_float`
            converts a batch.
        image_size: resize the images to this square side (bilinear, with a note when any
            image had another size): a ``folder:`` set's when it is converted (needed when they
            have mixed sizes), any other set's when it is loaded.
    """
    if not isinstance(name, str) or not name:
        raise DeepstabError(f"Dataset name must be a non-empty string, got {name!r}.")
    if name.startswith("folder:"):
        x, y = load_folder(name[7:], image_size)
        return (x, y) if stream else (to_unit_float(x), y)
    x, y = _load_arrays(name, data_dir, download, stream)
    return (x, y) if image_size is None else (resize_images(x, image_size, name), y)


def _load_arrays(
    name: str, data_dir: str | os.PathLike | None, download: bool | None, stream: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`load` of a registered name or ``npz:PATH``, at the images' own size."""
    if name.startswith("npz:"):
        return load_npz(name[4:])
    if name not in REGISTRY:
        raise DeepstabError(
            f"Unknown dataset {name!r}. Choose one of {', '.join(REGISTRY)}, or give 'npz:PATH' "
            f"or 'folder:PATH' for your own data (`python cli.py datasets` lists them)."
        )
    dataset = REGISTRY[name]
    if not dataset.folder:
        return dataset.reader(Path("."))
    root = resolve_data_dir(data_dir)
    allowed = downloads_allowed(download)
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
            f"{', '.join(dataset.expected_files)} in {root / dataset.folder} (point --data-dir or "
            f"DEEPSTAB_DATA at the folder that holds {dataset.folder}/), or allow downloads "
            f"through tensorflow-datasets (unset DEEPSTAB_OFFLINE)."
        )
    return load_tfds(dataset, root)
