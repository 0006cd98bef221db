"""One rank of the two-process tests in test_distributed.py, started by torchrun:
``python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py SCENARIO OUT [ARGS...]``.
Each rank writes what it computed to ``OUT/rank<r>.npz``."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import torch

import deepstab  # noqa: F401
from deepstab import distributed
from deepstab.checkpoint import Checkpoint
from deepstab.methods.lfss import LFSSModel, lfss_optimizer
from deepstab.methods.losses import nt_xent
from deepstab.nn.kmeans import cosine_kmeans
from deepstab.nn.optimizers import SGD

TINY = dict(width=0.0625, hidden=16, dim=8)
SHAPE = (16, 16, 3)


def images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, *SHAPE), dtype=np.float32)


def rows(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def clustered_rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.standard_normal((5, 6))[rng.integers(0, 5, n)] + 0.8 * rng.standard_normal((n, 6))


def lfss(**kwargs) -> LFSSModel:
    keras.utils.set_random_seed(0)
    return LFSSModel(SHAPE, 3, seed=0, **{**TINY, **kwargs})


def weights(model) -> dict[str, np.ndarray]:
    return {f"w{i}": np.array(keras.ops.convert_to_numpy(w.value)) for i, w in enumerate(model.weights)}


def one_step(model: LFSSModel, x: np.ndarray, index: np.ndarray) -> None:
    """One train step on fixed views (no augmentation) of this rank's images ``x``; ``index``,
    the global batch's (as IndexedImages gives it): what one process of the whole batch
    computes from the same images is then comparable."""
    object.__setattr__(model, "augment", lambda images, training=None: images)
    n = len(index)
    model.set_cluster_state(np.arange(n) % 3, np.arange(n) % 5 != 0)
    model.compile(optimizer=SGD(0.1, momentum=0.9))
    model.optimizer.build(model.trainable_variables_of_step())
    model.train_step((keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(index)))


def core(out: str) -> dict[str, np.ndarray]:
    result = {}
    # The gathered NT-Xent: 13 rows split 7 / 6 over the ranks.
    part = distributed.shard(13)
    z1, z2 = (rows(13, 8, seed)[part].clone().requires_grad_() for seed in (1, 2))
    loss = nt_xent(distributed.gather(z1), distributed.gather(z2), 0.5)
    loss.backward()
    world = distributed.world_size()
    result |= {"nt_xent": loss.detach().numpy(), "grad_z1": z1.grad.numpy() / world, "grad_z2": z2.grad.numpy() / world}

    # Sharded k-means: overlapping clusters, 301 rows split 151 / 150.
    z = clustered_rows(301)
    result["kmeans"] = distributed.gather_array(cosine_kmeans(z[distributed.shard(301)], 5, seed=3, sharded=True), 301)

    # Pseudo-labels and stabilities from the embeddings of all ranks.
    x = images(41)
    model = lfss(eta=1)
    result["stability"] = model.refresh_pseudo_labels(x)
    result["labels"], result["keep"] = (keras.ops.convert_to_numpy(t) for t in (model.pseudo_labels, model.keep))

    # Two epochs straight, and one epoch, a checkpoint, a new model and the second epoch.
    x = images(40)
    straight = lfss(eta=1)
    straight.compile(optimizer=lfss_optimizer(0.05 * world, 3, 2))
    straight.fit(x, epochs=2, batch_size=6, verbose=0)
    result |= {f"straight_{k}": v for k, v in weights(straight).items()}
    views = straight.augment(keras.ops.convert_to_tensor(x[:4]), training=True)  # this rank's next draw
    result["views"] = keras.ops.convert_to_numpy(views)

    first = lfss(eta=1)
    first.compile(optimizer=lfss_optimizer(0.05 * world, 3, 2))
    folder = os.path.join(out, "checkpoint")
    saver = [Checkpoint(folder, {"test": 1})] if distributed.is_main() else []
    first.fit(x, epochs=1, batch_size=6, verbose=0, callbacks=saver)
    distributed.barrier()
    second = lfss(eta=1)
    second.compile(optimizer=lfss_optimizer(0.05 * world, 3, 2))
    epoch = distributed.broadcast_object(
        Checkpoint(folder, {"test": 1}).restore(second) if distributed.is_main() else 0
    )
    second.fit(x, epochs=2, initial_epoch=epoch, batch_size=6, verbose=0)
    result |= {f"resumed_{k}": v for k, v in weights(second).items()}
    result["epoch_of_resume"] = np.array(epoch)
    return result


def resume(out: str, folder: str) -> dict[str, np.ndarray]:
    """The second epoch from a checkpoint written by a run on another number of processes."""
    x = images(40)
    model = lfss(eta=1)
    model.compile(optimizer=lfss_optimizer(0.05 * distributed.world_size(), 3, 2))
    restored = Checkpoint(folder, {"test": 1}).restore(model) if distributed.is_main() else 0
    epoch = distributed.broadcast_object(restored)
    model.fit(x, epochs=2, initial_epoch=epoch, batch_size=6, verbose=0)
    return {"epoch_of_resume": np.array(epoch), **{f"resumed_{k}": v for k, v in weights(model).items()}}


def step(out: str, batch: int) -> dict[str, np.ndarray]:
    """One step of 2 ranks x ``batch`` with synchronised batch statistics."""
    x = images(2 * batch)
    model = lfss(sigma=0.0, sync_batch_norm=True, eta=0)
    one_step(model, x[distributed.shard(2 * batch)], np.arange(2 * batch))
    return weights(model)


def command(out: str, *args: str) -> dict[str, np.ndarray]:
    """The command line; on ranks other than 0, every file created or renamed is recorded."""
    written: list[str] = []
    if not distributed.is_main():
        replace, open_ = os.replace, os.open

        def recording_replace(src, dst, *a, **k):
            written.append(str(dst))
            return replace(src, dst, *a, **k)

        def recording_open(path, flags, *a, **k):
            if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
                written.append(str(path))
            return open_(path, flags, *a, **k)

        os.replace, os.open = recording_replace, recording_open
    from deepstab.cli import cli

    try:
        cli.main(list(args), standalone_mode=False)
    finally:
        os.replace, os.open = (replace, open_) if not distributed.is_main() else (os.replace, os.open)
    return {"written": np.array(written, dtype=str)}


def main() -> None:
    scenario, out, *args = sys.argv[1:]
    distributed.setup()
    rank, world = distributed.rank(), distributed.world_size()  # the command line leaves the group at its end
    if scenario == "core":
        result = core(out)
    elif scenario == "step":
        result = step(out, int(args[0]))
    elif scenario == "resume":
        result = resume(out, args[0])
    else:
        result = command(out, *args)
    result["world"] = np.array(world)
    np.savez(os.path.join(out, f"rank{rank}.npz"), **result)
    distributed.teardown()


if __name__ == "__main__":
    main()
