"""Where a bench's plain-PyTorch side runs, and a clock that waits for the device.

Both sides of a speed comparison run on the same device: a CUDA GPU when there is one (the
Keras torch backend picks it by itself), else the CPU. GPU work is asynchronous, so every
timer reading waits for the queued work first.
"""

from __future__ import annotations

import time

import torch


def accelerator() -> torch.device:
    """The GPU when there is one, else the CPU; ``with accelerator():`` creates tensors and
    modules there (only around the PyTorch side: Keras's own data loading expects the CPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def clock() -> float:
    """``time.perf_counter()`` once the queued device work has finished."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()
