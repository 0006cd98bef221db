"""glibc's allocator set up for training: large blocks kept on the heap.

glibc serves every block above its mmap threshold (128 KiB, raised at run time up to 32 MiB)
with a fresh mapping and returns freed memory at the top of the heap to the system, so a
training step that frees and re-allocates large activations pays page faults for every one of
them on every step. On a CPU this cost the Keras LFSS step a quarter of its speed
(``bench/lfss_bench.py --malloc``, docs/speed.md). :func:`keep_large_blocks` sets, from inside
the process, what the environment variables ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` set at its start: blocks up to 32 MiB come from the heap, and up to
2 GiB of freed memory stays there for the next step (the resident size stays near its peak, as
with jemalloc or tcmalloc).
Every model's ``fit`` (and ``pretrain``) calls it, and so does the command line at start, unless
``DEEPSTAB_MALLOC=default``: a script gets the command line's speed without doing anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters in glibc's malloc.h


def keep_large_blocks() -> bool:
    """Set glibc's mmap and trim thresholds (see the module); ``False`` where the C library is
    not glibc, where it refuses, or where ``DEEPSTAB_MALLOC=default``."""
    if os.environ.get("DEEPSTAB_MALLOC", "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it, and mallopt's parameters)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
