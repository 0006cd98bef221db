"""The images sorted into one folder per cluster: ``python cli.py report --export DIR``.

:func:`export_clusters` writes ``DIR/cluster-<k>/`` for every cluster ``k`` and ``DIR/labels.csv``.
The images of a ``folder:`` dataset are hard-linked (or, with ``copy``, copied) under their
path relative to the dataset's folder (``cluster-3/cat/0001.jpg``), so names never collide;
where the file system refuses hard links (another disk, FAT, some network shares) they are
copied, and a note says so. The images of an array dataset are written as PNGs named by their
index (``cluster-3/000123.png``).

Invariants: every image is in exactly one file, in the folder of its cluster, and
``labels.csv`` has one row per image in dataset order (``index,cluster,file`` with ``file``
relative to ``DIR``, then ``source``, ``confidence`` and ``label`` where known). ``DIR`` must be
empty or absent, so no image of an earlier export is left beside them. Copies, PNGs and the CSV
go through :func:`deepstab.io.atomic_path`; a hard link is made whole or not at all.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from deepstab.errors import DeepstabError, DeepstabNote
from deepstab.io import _NO_HARD_LINKS, atomic_path, file_fault, is_file_fault

# Why a hard link can fail where a copy would not: the file system has none, or another disk.
LINK_REFUSED = _NO_HARD_LINKS | {errno.EXDEV}


def check_export_folder(folder: str | os.PathLike) -> Path:
    """``folder`` as the place of an export: absent or empty (checked before any work)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is a file" if not folder.is_dir() else "is not empty"
        raise DeepstabError(
            f"The export folder {folder} {what}: the images are sorted into a new or empty folder, so that none of "
            f"an earlier export is left among them. Delete it or choose another --export folder."
        )
    return folder


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as partial:
        shutil.copyfile(source, partial)


def _link(source: Path, target: Path) -> bool:
    """Hard-link ``source`` as ``target``; False where the file system refuses links."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in LINK_REFUSED:
            return False
        if is_file_fault(exc):
            raise file_fault(target, exc) from exc
        raise
    return True


def _png(image: np.ndarray, target: Path) -> None:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(target) as partial:
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(partial, format="PNG")


def export_clusters(
    folder: str | os.PathLike,
    labels: np.ndarray,
    n_clusters: int,
    *,
    files: Sequence[Path] | None = None,
    root: Path | None = None,
    x=None,
    confidence: np.ndarray | None = None,
    y: np.ndarray | None = None,
    copy: bool = False,
) -> dict[str, object]:
    """Sort the images into ``folder/cluster-<k>/`` by ``labels``: the ``files`` of a
    ``folder:`` dataset (under ``root``, in dataset order) linked or copied, else the images
    ``x`` as PNGs. Returns ``{"counts": images per cluster, "linked": n, "copied": n,
    "written": n PNGs, "labels": the CSV's path}``."""
    labels = np.asarray(labels).reshape(-1)
    if (files is None) == (x is None) or (files is not None and (root is None or len(files) != len(labels))):
        raise ValueError("give either files (one per label) with their root, or the images x")
    out = check_export_folder(folder)
    for k in range(n_clusters):
        (out / f"cluster-{k}").mkdir(parents=True, exist_ok=True)
    width = len(str(max(len(labels) - 1, 0)))
    done = {"linked": 0, "copied": 0, "written": 0}
    rows = []
    for i, k in enumerate(labels.tolist()):
        if files is not None:
            source = Path(files[i])
            relative = source.relative_to(root)
            target = out / f"cluster-{k}" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not copy and _link(source, target):
                done["linked"] += 1
            else:
                if not copy:
                    warnings.warn(
                        f"{target.parent} cannot hold hard links to {root} (another disk, or a file system without "
                        f"them), so the images are copied.",
                        DeepstabNote,
                        stacklevel=2,
                    )
                    copy = True
                _copy(source, target)
                done["copied"] += 1
            row = [i, k, target.relative_to(out).as_posix(), str(source)]
        else:
            target = out / f"cluster-{k}" / f"{i:0{width}d}.png"
            _png(x[i], target)
            done["written"] += 1
            row = [i, k, target.relative_to(out).as_posix()]
        row += [f"{confidence[i]:.6f}"] if confidence is not None else []
        rows.append(row + ([int(y[i])] if y is not None else []))
    header = ["index", "cluster", "file"] + (["source"] if files is not None else [])
    header += (["confidence"] if confidence is not None else []) + (["label"] if y is not None else [])
    with atomic_path(out / "labels.csv") as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return {"counts": np.bincount(labels, minlength=n_clusters).tolist(), **done, "labels": out / "labels.csv"}
