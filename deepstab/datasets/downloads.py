"""Dataset files: the data directory, sha256 checks, and downloads that are verified before
they are kept."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from deepstab.errors import DeepstabError
from deepstab.io import atomic_path


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


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """Resolve the data directory: ``path``, else ``$DEEPSTAB_DATA``, else ``./data``."""
    if path:
        return Path(path).expanduser()
    if os.environ.get("DEEPSTAB_DATA"):
        return Path(os.environ["DEEPSTAB_DATA"]).expanduser()
    return Path("data")


def downloads_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get("DEEPSTAB_OFFLINE", "").lower() not in ("1", "true", "yes")


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
    except OSError as exc:  # of the network: atomic_path makes the faults of writing clear errors itself
        raise DeepstabError(
            f"Could not download {spec.url} ({getattr(exc, 'reason', exc)}). If this machine is offline, download "
            f"the file elsewhere and put it at {target}."
        ) from exc
    return target
