"""Atomic file writes: nothing a user saved is ever left half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it onto ``target``.

    The temporary file keeps ``target``'s suffix (Keras checks it) and gets the
    permissions a new file would get. If the body raises, ``target`` is untouched
    and the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{target.name}.part-", suffix=target.suffix, dir=target.parent)
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
