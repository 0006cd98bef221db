"""Files deepstab writes and reads: atomic writes (nothing a user saved is ever left
half-written, and a full disk, a read-only folder or a file in the way is one clear error),
locks on a run's output, checks that an output can be written before any training starts,
model files, weights files and label CSVs."""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np

from deepstab.errors import DeepstabError
from deepstab.precision import EXACT, PRECISIONS, policy_scope

# What a failed write means and what to do about it, by errno: (the cause, the remedy).
_FULL = "Free space on that disk, or write to a folder on another one, then run the command again"
_FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full (no space left on the device)", _FULL),
    errno.EDQUOT: ("this user's disk quota is used up", _FULL),
    errno.EFBIG: ("the file is larger than its file system allows", "Write it to another file system"),
    errno.EACCES: ("permission denied", "Make the folder writable for this user, or choose another one"),
    errno.EPERM: ("the operation is not permitted", "Make the folder writable for this user, or choose another one"),
    errno.EROFS: ("its file system is read-only", "Choose a folder on a writable disk"),
    errno.EEXIST: ("a file stands where a folder of its path should be", "Move that file or choose another path"),
    errno.ENOTDIR: ("a file stands where a folder of its path should be", "Move that file or choose another path"),
    errno.EISDIR: ("a folder stands where the file should be", "Remove the folder or choose another file name"),
    errno.EIO: ("the device reported an input/output error", "Check the disk, or write to another one"),
    errno.ENAMETOOLONG: ("the name is too long for its file system", "Choose a shorter path"),
}

# A cause only some file systems give when asked for a hard link (FAT, some network shares).
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}

# How often a run that waits for another run's lock looks again, in seconds.
LOCK_POLL_SECONDS = 0.5


def is_file_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` of the file system that a user can fix (a full disk,
    permissions, a read-only file system, a file or folder in the way)."""
    return isinstance(exc, OSError) and exc.errno in _FAULTS


def file_fault(path: str | os.PathLike, exc: OSError, detail: str = "") -> DeepstabError:
    """The one-paragraph error for ``exc``, a file-system fault (:func:`is_file_fault`) met in
    writing ``path``: the path, the cause (and ``detail``), that nothing saved before changed,
    and what to do."""
    cause, remedy = _FAULTS[exc.errno]
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) and exc.filename:
        detail = f" ({exc.filename})"
    return DeepstabError(
        f"Cannot write {path}: {cause}{detail}. Nothing was changed there, and the files saved before are intact. "
        f"{remedy} (--output, --models-dir or --data-dir choose where deepstab writes); a run that was interrupted "
        f"goes on from its last checkpoint."
    )


def _ensure_space(target: Path, need: int) -> None:
    """Refuse, before writing, a file of about ``need`` bytes whose disk has less free."""
    free = shutil.disk_usage(target.parent).free
    if free < need:
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        raise file_fault(target, full, f": {free / 2**20:.1f} MB free, about {need / 2**20:.1f} MB needed")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, need_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it onto ``target``. Every file
    deepstab writes goes through here.

    Invariants: ``target`` is either untouched or complete, never half-written; the temporary
    file (``.<name>.part-*<suffixes>``: it keeps ``target``'s suffixes, which Keras checks) is
    removed whatever happens, and gets the permissions a new file would get. A file-system fault
    (:func:`is_file_fault`) in creating, writing or moving it becomes the one-paragraph
    :class:`DeepstabError` of :func:`file_fault`; other exceptions pass unchanged. With
    ``need_bytes``, a disk with less free space is refused before anything is written (for
    writers that cannot recover from a disk that fills under them).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        if need_bytes:
            _ensure_space(target, need_bytes)
        handle, partial = tempfile.mkstemp(
            prefix=f".{target.name}.part-", suffix="".join(target.suffixes), dir=target.parent
        )
        os.close(handle)
    except OSError as exc:
        if not is_file_fault(exc):
            raise
        raise file_fault(target, exc) from exc
    try:
        yield Path(partial)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, target)
    except OSError as exc:
        if not is_file_fault(exc):
            raise
        raise file_fault(target, exc) from exc
    finally:
        with contextlib.suppress(OSError):
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
        cause, remedy = _FAULTS.get(exc.errno, (exc.strerror or str(exc), "Choose a folder you can write to"))
        raise DeepstabError(f"{what} {folder} is not writable ({cause}). {remedy}.") from exc
    return folder


def check_output_file(path: str | os.PathLike, what: str = "The output file") -> Path:
    """``path`` as a file to write: not a folder, in a folder that exists (or can be made) and
    can be written. Called before any work, so a bad path costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise DeepstabError(f"{what} {path} is a folder; give a file name, e.g. {path / 'labels.csv'}.")
    writable_folder(path.parent, "The output folder")
    return path


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


def _create_lock(lock: Path, text: str) -> bool:
    """Create ``lock`` holding ``text`` unless it exists; True when this call created it. The text
    is written to a temporary file first and hard-linked into place, so the lock is never seen
    empty; where the file system has no hard links, the lock is created exclusively and then
    written (a reader may see it empty for an instant, and takes that as held)."""
    handle, fresh = tempfile.mkstemp(prefix=f"{lock.name}.new-", dir=lock.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.link(fresh, lock)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    finally:
        with contextlib.suppress(OSError):
            os.remove(fresh)
    try:
        handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as out:
        out.write(text)
    return True


def _lock_text(lock: Path) -> str | None:
    """What ``lock`` holds (``""`` when it cannot be read), or ``None`` when it is gone."""
    try:
        return lock.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return ""


def _take_over(lock: Path, stale: str) -> None:
    """Remove ``lock``, whose text ``stale`` names a process that is gone. It is moved aside
    first and checked, so that a lock another run took meanwhile is put back, not deleted."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.replace(lock, aside)
    except FileNotFoundError:  # another run took it over first
        return
    moved = _lock_text(aside)
    if moved != stale:
        _create_lock(lock, moved or "")
    aside.unlink(missing_ok=True)


def _own_partials(path: Path) -> list[Path]:
    """The temporary files of the files a run on ``path`` writes, ``<stem>.<suffix>`` with one
    suffix (``o.keras`` → ``.o.keras.part-*``, ``.o.csv.part-*``; never ``.o.v2.keras.part-*``,
    which a run on ``o.v2.keras`` writes)."""
    own = re.compile(re.escape(f".{path.stem}.") + r"[^.]+\.part-")
    return [p for p in path.parent.glob(f".{glob.escape(path.stem)}.*.part-*") if own.match(p.name)]


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, on_wait: Callable[[int], None] | None = None) -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``path`` while the block runs, so that a second run on the
    same output does not write into the same files: it stops with a clear error, or, given
    ``on_wait``, waits until the lock is free (``on_wait(pid)`` is called once, when it starts
    waiting for process ``pid``).

    Invariants: the lock holds its owner's process id from the moment it exists
    (:func:`_create_lock`). A lock whose process is gone, or that names this process (left by a
    killed run whose id was reused), is taken over; an empty or unreadable lock names no
    process and is never taken over. Taking the lock removes the temporary files that killed
    runs left of this run's own files (:func:`_own_partials`), and nothing else.
    """
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    writable_folder(path.parent, "The output folder")
    waiting = False
    try:
        while not _create_lock(lock, str(os.getpid())):
            text = _lock_text(lock)
            if text is None:  # released meanwhile
                continue
            holder = int(text) if text.isdigit() else 0
            if holder and (holder == os.getpid() or not _alive(holder)):
                _take_over(lock, text)
                continue
            if on_wait is None or not holder:
                who = f"Another run (process {holder})" if holder else f"Another run (its lock {lock} names no process)"
                raise DeepstabError(
                    f"{who} is using {path}. Wait for it to finish or choose another --output. If no such run is "
                    f"going on, delete {lock}."
                )
            if not waiting:
                on_wait(holder)
                waiting = True
            time.sleep(LOCK_POLL_SECONDS)
        for stale in _own_partials(path):
            stale.unlink(missing_ok=True)
    except OSError as exc:
        if not is_file_fault(exc):
            raise
        raise file_fault(lock, exc) from exc
    try:
        yield lock
    finally:
        if _lock_text(lock) == str(os.getpid()):
            lock.unlink(missing_ok=True)


def h5_size_estimate(model: keras.Model) -> int:
    """An upper bound, in bytes, of the file that holds ``model``'s weights with the state of
    its optimizer and of the optimizers of the models inside it (an autoencoder keeps its
    pretraining one): their bytes plus 10 %, 4 KiB of HDF5 bookkeeping a variable and 1 MiB.
    Measured on deepstab's models: at most 1.12 times their bytes, 1.6 KiB a variable."""
    seen: dict[int, int] = {}

    def visit(layer) -> None:
        optimizer = getattr(layer, "optimizer", None)
        owned = list(layer.variables) + (list(optimizer.variables) if getattr(optimizer, "built", False) else [])
        for variable in owned:
            seen[id(variable)] = int(np.prod(variable.shape)) * _itemsize(variable.dtype)
        for inner in getattr(layer, "layers", ()):
            visit(inner)

    visit(model)
    return int(1.1 * sum(seen.values())) + 4096 * len(seen) + 2**20


def _itemsize(dtype) -> int:
    try:
        return np.dtype(keras.backend.standardize_dtype(dtype)).itemsize
    except TypeError:  # bfloat16 and the like, unknown to numpy: take the widest
        return 8


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save ``model`` to ``path`` (``.keras``) through :func:`atomic_path`, so an interrupted
    save never leaves a half-written model behind; a disk with less free space than
    :func:`h5_size_estimate` is refused before the write (see :func:`save_weights`)."""
    path = check_model_path(path)
    with atomic_path(path, need_bytes=h5_size_estimate(model)) as partial:
        model.save(partial)
    return path


def save_weights(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save ``model``'s weights and optimizer state to ``path`` (``.weights.h5``) through
    :func:`atomic_path`. HDF5 does not survive a disk that fills while it writes: the error is
    raised, but the process then crashes at exit (measured: exit status 139, a segmentation
    fault, with h5py 3 on a full tmpfs). So a disk with less free space than
    :func:`h5_size_estimate` is refused, with the clear error, before anything is written."""
    with atomic_path(path, need_bytes=h5_size_estimate(model)) as partial:
        model.save_weights(partial)
    return Path(path)


def existing_model_file(path: str | os.PathLike) -> Path:
    """``path``, a model file that exists (nothing is read from it)."""
    path = Path(path)
    if not path.is_file():
        raise DeepstabError(
            f"Model file {path} does not exist. Train one first (e.g. `python cli.py decs`) or fix the path."
        )
    return path


def load_model(path: str | os.PathLike, expect: type | tuple[type, ...] | None = None) -> keras.Model:
    """Load a model saved by deepstab; ``expect`` names the class(es) it must be."""
    path = existing_model_file(path)
    if not zipfile.is_zipfile(path):
        raise DeepstabError(
            f"{path} is not a Keras model file (.keras files are zip archives); it is corrupted or "
            f"of another format. Retrain the model or restore the file from a backup."
        )
    try:
        with policy_scope(_saved_policy(path)):  # the networks built by the model's constructor too
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


def _saved_policy(path: Path) -> str:
    """The dtype policy a saved model was built with (``float32`` when its archive does not say)."""
    try:
        with zipfile.ZipFile(path) as archive:
            dtype = json.loads(archive.read("config.json"))["config"].get("dtype")
        name = dtype["config"]["name"] if isinstance(dtype, dict) else dtype
    except (KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return EXACT
    return name if name in PRECISIONS.values() else EXACT


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
