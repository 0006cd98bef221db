"""Files deepstab writes and reads: atomic writes (nothing a user saved is ever left
half-written), locks on a run's output, checks that an output can be written before any
training starts, model files and label CSVs."""

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


def writable_folder(folder: str | os.PathLike, what: str = "The folder") -> Path:
    """Create ``folder`` when it does not exist and make sure a file can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".deepstab-write-test-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except (FileExistsError, NotADirectoryError) as exc:
        raise DeepstabError(
            f"{what} {folder} cannot be created: a file stands where a folder of its path should be "
            f"({exc.filename}). Choose another path."
        ) from exc
    except OSError as exc:
        raise DeepstabError(
            f"{what} {folder} is not writable ({exc.strerror}). Choose a folder you can write to."
        ) from exc
    return folder


def check_model_path(path: str | os.PathLike) -> Path:
    """``path`` as a model file to write: a ``.keras`` name in a writable folder."""
    path = Path(path)
    if path.suffix != ".keras":
        raise DeepstabError(f"Model files must end in .keras, got {path}. Choose a name like models/decs-usps.keras.")
    if path.is_dir():
        raise DeepstabError(f"{path} is a folder; give the model file's name, e.g. {path / 'model.keras'}.")
    writable_folder(path.parent, "The output folder")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``path`` (it holds this process's id) while the block runs,
    so that a second run on the same output stops with a clear error instead of writing into
    the same files. A lock whose process is gone is taken over; so are the temporary files
    that a killed run left beside ``path`` (``.<name>.*.part-*``)."""
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    writable_folder(path.parent, "The output folder")
    for attempt in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if attempt or (holder and holder != os.getpid() and _alive(holder)):
                raise DeepstabError(
                    f"Another run (process {holder}) is using {path}. Wait for it to finish or choose another "
                    f"--output. If no such run is going on, delete {lock}."
                ) from None
            lock.unlink(missing_ok=True)  # left by a run that no longer exists
            continue
        with os.fdopen(handle, "w") as out:
            out.write(str(os.getpid()))
        break
    for stale in path.parent.glob(f".{path.stem}.*.part-*"):
        stale.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save ``model`` to ``path`` (``.keras``) through a temporary file and a rename,
    so an interrupted save never leaves a half-written model behind."""
    path = check_model_path(path)
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
