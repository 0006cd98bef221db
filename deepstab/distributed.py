"""Data-parallel training on ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N cli.py lfss ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`setup` joins them into one process group (NCCL
with one GPU per process, gloo on CPUs). A process started without them is a world of one,
and every function here is then the identity or a no-op, so single-process code needs no
branch.

What keeps the ranks one model (the invariants :class:`~deepstab.methods.lfss.LFSSModel` relies on):

- every variable starts equal (:func:`broadcast_variables` from rank 0, also after a resume);
- every step applies the same gradient: the mean over ranks, all-reduced as one flat buffer
  (:func:`average_gradients`);
- a loss over the whole global batch is computed on every rank from :func:`gather` (whose
  backward sums the gradients of all ranks into each rank's slice), so that the averaged
  gradient is the gradient of the full-batch loss;
- state set outside a step (moving statistics, pseudo-labels) is made equal at each epoch end.

Keras 3 has no data-parallel training on the torch backend, and wrapping a model with a custom
``train_step`` in ``DistributedDataParallel`` would not synchronise anything: the step calls its
sub-networks directly. So the step synchronises itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from deepstab.errors import DeepstabError


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(timeout_minutes: float = 30.0) -> None:
    """Join the process group torchrun describes, once: NCCL with the GPU ``LOCAL_RANK`` when
    GPUs exist, else gloo. Without torchrun, nothing happens."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def teardown() -> None:
    """Leave the process group (after a run, before the process exits: gloo's threads otherwise
    may abort the exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def refuse(what: str) -> None:
    """Stop with an error when started by torchrun: ``what`` trains on one process only."""
    if launched():
        raise DeepstabError(
            f"{what} trains on one process; only lfss trains on several under torchrun. "
            f"Run it without torchrun (python cli.py ...)."
        )


def active() -> bool:
    """Whether more than one process trains (a process group of size > 1 is up)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0, or the only process."""
    return rank() == 0


def device() -> torch.device:
    """Where this rank's collectives run: its GPU under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


def shard(n: int, parts: int | None = None, index: int | None = None) -> slice:
    """The ``index``-th of ``parts`` contiguous, nearly equal slices of ``range(n)`` (the first
    ``n % parts`` one longer), this rank's by default.

    >>> [shard(10, 3, i) for i in range(3)]
    [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    parts = world_size() if parts is None else parts
    index = rank() if index is None else index
    size, extra = divmod(n, parts)
    start = index * size + min(index, extra)
    return slice(start, start + size + (index < extra))


def shard_sizes(n: int) -> list[int]:
    """The length of every rank's :func:`shard` of ``range(n)``, in rank order."""
    return [shard(n, world_size(), r).stop - shard(n, world_size(), r).start for r in range(world_size())]


@torch.no_grad()
def broadcast_variables(variables: Sequence) -> None:
    """Copy rank 0's values of Keras ``variables`` to every rank (one flat buffer per dtype)."""
    if not active():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for v in variables:
        by_dtype.setdefault(v.value.dtype, []).append(v.value)
    for tensors in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.broadcast(flat, src=0)
        torch._foreach_copy_(tensors, [p.view_as(t) for p, t in zip(flat.split([t.numel() for t in tensors]), tensors)])


def broadcast_object(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def average_gradients(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of ``grads`` over the ranks, in one all-reduce of one flattened buffer
    (a missing gradient counts as zero). Returns the averaged gradients."""
    if not active():
        return grads
    present = [g for g in grads if g is not None]
    flat = torch.cat([g.reshape(-1) for g in present])
    dist.all_reduce(flat)
    flat /= world_size()
    averaged = iter(p.view_as(g) for p, g in zip(flat.split([g.numel() for g in present]), present))
    return [None if g is None else next(averaged) for g in grads]


@torch.no_grad()
def average_(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in place (one all-reduce)."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    for part, t in zip(flat.split([t.numel() for t in tensors]), tensors):
        t.copy_(part.view_as(t))


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with the gradient: the backward is the same sum of the incoming gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks, differentiable (each rank's gradient is the sum of all
    ranks' gradients with respect to the sum)."""
    return _AllReduceSum.apply(x) if active() else x


class _Gather(torch.autograd.Function):
    """All-gather of rows with the gradient: forward, every rank's rows in rank order; backward,
    each rank's slice of the sum over ranks of the incoming gradients (all ranks' losses
    depend on every rank's rows)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...]):
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        width = max(sizes)
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def row_counts(n: int, device=None) -> list[int]:
    """The number of rows ``n`` of every rank, in rank order (``[n]`` alone)."""
    if not active():
        return [int(n)]
    counts = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor(int(n), device=device))
    return [int(c) for c in counts]


def gather(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """The rows of ``x`` of every rank, concatenated in rank order, with gradients flowing
    back to each rank's rows. ``sizes``, the number of rows of each rank, saves a round of
    communication when known; without it the sizes are exchanged first."""
    if not active():
        return x
    if sizes is None:
        sizes = row_counts(x.shape[0], x.device)
    return _Gather.apply(x, tuple(int(s) for s in sizes))


@torch.no_grad()
def gather_array(array: np.ndarray, total: int) -> np.ndarray:
    """Rows of a NumPy array held as :func:`shard` slices of ``range(total)``, concatenated on
    every rank (the full array)."""
    if not active():
        return array
    rows = torch.as_tensor(np.ascontiguousarray(array), device=device())
    return gather(rows, shard_sizes(total)).cpu().numpy()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The first process of each node (``LOCAL_RANK`` 0) runs the block first (a download, a
    cache on the node's disk), the other processes after it."""
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not first:
        barrier()
    yield
    if first:
        barrier()
