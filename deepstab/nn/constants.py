"""Numbers and small tables as tensors on the device of the tensors they meet, made once.

Keras's ops turn every plain Python number or tuple they are given into a new tensor. On a
GPU that is a copy from pageable host memory, which waits until all queued work has finished,
so a training step full of them cannot queue its work ahead of the device. The training steps
take their constants from here instead (``bench/sync_count.py`` counts what is left).

Example:

>>> import numpy as np
>>> from keras import ops
>>> x = ops.convert_to_tensor(np.array([0.5, 2.0], dtype="float32"))
>>> ops.convert_to_numpy(ops.minimum(x, like(1.0, x))).tolist()
[0.5, 1.0]
>>> like(1.0, x) is like(1.0, x)
True
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _constant(value, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # usable by autograd later, whatever mode made it
        return torch.tensor(value, dtype=dtype, device=device)


def like(value: float | tuple, x: torch.Tensor) -> torch.Tensor:
    """``value`` (a number, or nested tuples of numbers) as a constant tensor of ``x``'s dtype
    on ``x``'s device; the same tensor on every call."""
    return _constant(value, x.dtype, x.device)
