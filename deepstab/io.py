"""Files deepstab writes and reads: atomic writes (nothing a user saved is ever left
half-written), model files and label CSVs."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from deepstab.errors import DeepstabError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it onto ``target``.

    The temporary file keeps ``target``'s suffixes (Keras checks them) and gets the
    permissions a new file would get. If the body raises, ``target`` is untouched
    and the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(
        prefix=f".{target.name}.part-", suffix="".join(target.suffixes), dir=target.parent
    )
    os.close(handle)
    try:
        yield Path(partial)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save ``model`` to ``path`` (``.keras``) through a temporary file and a rename,
    so an interrupted save never leaves a half-written model behind."""
    path = Path(path)
    if path.suffix != ".keras":
        raise DeepstabError(f"Model files must end in .keras, got {path}. Choose a name like models/decs-usps.keras.")
    with atomic_path(path) as partial:
        model.save(partial)
    return path


def load_model(path: str | os.PathLike, expect: type | tuple[type, ...] | None = None) -> keras.Model:
    """Load a model saved by deepstab; ``expect`` names the class(es) it must be."""
    path = Path(path)
    if not path.is_file():
        raise DeepstabError(
            f"Model file {path} does not exist. Train one first (e.g. `python cli.py decs`) or fix the path."
        )
    if not zipfile.is_zipfile(path):
        raise DeepstabError(
            f"{path} is not a Keras model file (.keras files are zip archives); it is corrupted or "
            f"of another format. Retrain the model or restore the file from a backup."
        )
    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # Keras raises many types for damaged or foreign archives
        raise DeepstabError(
            f"Cannot load the model in {path} ({type(exc).__name__}: {str(exc)[:300]}). The file is "
            f"corrupted or was not saved by deepstab; retrain the model or restore the file."
        ) from exc
    if expect is not None and not isinstance(model, expect):
        wanted = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise DeepstabError(f"{path} holds a {type(model).__name__} model, but a {wanted} model is needed here.")
    return model


def write_labels_csv(path: Path, labels: np.ndarray, confidence: np.ndarray | None, truth: np.ndarray | None) -> Path:
    """Write ``index,cluster[,confidence][,label]`` rows to ``path`` atomically."""
    header = (
        ["index", "cluster"]
        + (["confidence"] if confidence is not None else [])
        + (["label"] if truth is not None else [])
    )
    with atomic_path(path) as partial, open(partial, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for i, label in enumerate(labels):
            row = [i, int(label)] + ([f"{confidence[i]:.6f}"] if confidence is not None else [])
            writer.writerow(row + ([int(truth[i])] if truth is not None else []))
    return path
