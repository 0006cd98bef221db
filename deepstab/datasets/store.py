"""Large image datasets kept on disk as uint8 arrays and read batch by batch.

CIFAR-10/20, STL-10 (113,000 images of 96x96), Tiny-ImageNet and the ImageNet subsets are
too large to hold as float32 in memory. The first load converts the source (a folder of
class sub-folders, or tensorflow-datasets splits) image by image into
``<folder>/.deepstab-cache/<name>-x.npy`` (uint8, NHWC, written through a memory map) and
``<name>-y.npy`` (int64, ``-1`` for unlabelled images); both are written under temporary
names and renamed when complete, so an interrupted conversion leaves nothing half-written, and
their space is taken before the conversion starts, so a full disk is one clear error.
Later loads memory-map the cache: :class:`~deepstab.datasets.streaming.IndexedImages` then reads only the
batch it needs, and :func:`to_unit_float` turns it into float32 in [0, 1].

Delete the ``.deepstab-cache`` folder to rebuild a cache after the source files change.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from deepstab.errors import DeepstabError
from deepstab.io import atomic_path, is_file_fault

CACHE_FOLDER = ".deepstab-cache"

# A source: the number of images, and a function that yields (uint8 HxWxC image, label) pairs.
Source = tuple[int, Callable[[], Iterator[tuple[np.ndarray, int]]]]


def to_unit_float(x: np.ndarray) -> np.ndarray:
    """A batch of images as float32 in [0, 1] (uint8 is divided by 255, floats pass through)."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return np.asarray(x, dtype=np.float32)


def cache_paths(folder: Path, name: str) -> tuple[Path, Path]:
    """Where the images and the labels of ``name`` are cached under ``folder``."""
    return folder / CACHE_FOLDER / f"{name}-x.npy", folder / CACHE_FOLDER / f"{name}-y.npy"


def open_cached(
    folder: Path, name: str, shape: tuple[int, int, int], source: Callable[[], Source]
) -> tuple[np.ndarray, np.ndarray]:
    """The cached ``(x, y)`` of ``name`` under ``folder``, memory-mapped read-only; built from
    ``source()`` first if absent. ``x`` is uint8 ``(N, *shape)``, ``y`` int64 (``-1``: no label)."""
    x_path, y_path = cache_paths(folder, name)
    if not (x_path.is_file() and y_path.is_file()):
        n, items = source()
        _write(x_path, y_path, n, shape, items(), name)
    x = np.load(x_path, mmap_mode="r")
    y = np.load(y_path)
    if x.dtype != np.uint8 or tuple(x.shape[1:]) != tuple(shape) or len(x) != len(y):
        raise DeepstabError(
            f"The cache {x_path} does not hold {name!r} images of shape {shape} (found {x.dtype} {x.shape} with "
            f"{len(y)} labels). Delete the folder {x_path.parent} and load the dataset again to rebuild it."
        )
    return x, y


def _write(x_path: Path, y_path: Path, n: int, shape: tuple[int, int, int], items: Iterable, name: str) -> None:
    if n == 0:
        raise DeepstabError(f"The source of {name!r} holds no images.")
    labels = np.empty(n, dtype=np.int64)
    progress = _Progress(n, f"Converting {name} into {x_path.parent} (once)")
    with atomic_path(x_path, need_bytes=n * int(np.prod(shape))) as partial:
        x = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(n, *shape))
        _reserve(partial)
        count = 0
        for count, (image, label) in enumerate(items, start=1):
            if count > n:
                break
            image = np.asarray(image)
            if image.ndim == 2:
                image = image[..., None]
            if image.shape[-1] == 1 and shape[-1] == 3:
                image = np.repeat(image, 3, axis=-1)
            if image.shape != tuple(shape) or image.dtype != np.uint8:
                raise DeepstabError(
                    f"Image {count - 1} of {name!r} is {image.dtype} {image.shape}; expected uint8 {tuple(shape)}."
                )
            x[count - 1] = image
            labels[count - 1] = label
            progress.update(count)
        if count != n:
            raise DeepstabError(f"The source of {name!r} announced {n} images but gave {count}.")
        x.flush()
        del x
    with atomic_path(y_path) as partial, open(partial, "wb") as out:
        np.save(out, labels)


def _reserve(path: Path) -> None:
    """Allocate the disk blocks of the (sparse) file ``path`` now: a write through a memory map
    onto a disk that fills kills the process (SIGBUS, measured on a full tmpfs), while this
    raises the ``OSError`` that :func:`~deepstab.io.atomic_path` turns into a clear error. Where
    the system cannot allocate ahead, the free-space check of ``atomic_path`` stands alone."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as exc:
                if is_file_fault(exc):
                    raise


class _Progress:
    """A one-line progress report on stderr (the conversion of a large dataset takes minutes)."""

    def __init__(self, total: int, title: str):
        self.total, self.title, self.shown = total, title, -1

    def update(self, done: int) -> None:
        percent = 100 * done // self.total
        if percent // 5 != self.shown // 5 or done == self.total:
            self.shown = percent
            end = "\n" if done == self.total else "\r"
            print(f"{self.title}: {done:,}/{self.total:,} images ({percent}%)", end=end, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ sources


def class_folder_source(
    base: Path, classes: tuple[str, ...], side: int | None, extensions: tuple[str, ...], style: str | None = None
) -> Source:
    """Images of the class folders ``base/<class>/`` (searched recursively), labels in the order
    of ``classes``, converted to RGB and resized to ``side`` x ``side`` when ``side`` is given
    (bilinear; ``style="equalize"``: bicubic, then histogram equalisation per channel)."""
    files = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (base / name).rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        files.extend((path, label) for path in found)
    if not files:
        raise DeepstabError(f"No images ({', '.join(extensions)}) found in the class folders of {base}.")

    def items() -> Iterator[tuple[np.ndarray, int]]:
        from PIL import Image, ImageOps

        for path, label in files:
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    resample = Image.BICUBIC if style == "equalize" else Image.BILINEAR
                    if side is not None and image.size != (side, side):
                        image = image.resize((side, side), resample)
                    if style == "equalize":
                        image = ImageOps.equalize(image)
                    yield np.asarray(image, dtype=np.uint8), label
            except OSError as exc:
                raise DeepstabError(f"Cannot read the image {path} ({exc}). Remove or replace it.") from exc

    return len(files), items
