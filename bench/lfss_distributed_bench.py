"""Data-parallel LFSS under torchrun: images/s of 1 and N processes, what the collectives cost
per step, and the epoch-end k-means done two ways.

Step: the Keras LFSS step through ``model.fit`` with ``batch`` images per process (the global
batch grows with the processes), median of the timed steps; "all-reduce" is the time inside
the flat gradient all-reduce per step, "collectives" all of them (the gathers of L_I and L_C and
the row counts too), and "raw all-reduce" a plain ``torch.distributed.all_reduce`` of a buffer of
the same size, timed alone. Every configuration runs in fresh processes.

k-means: ``--kmeans`` times the epoch-end clustering of N embeddings held in shards, as deepstab
does it (``cosine_kmeans(sharded=True)``: each rank keeps its rows, every sum over rows is
all-reduced) and the other way (all rows gathered, k-means on rank 0, labels broadcast), and
checks that both give the same labels.

    python bench/lfss_distributed_bench.py --width 0.25 --steps 8
    python bench/lfss_distributed_bench.py --kmeans --sizes 100000 1281167
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_collectives():
    """Wrap torch.distributed's collectives so that their time is summed (clock waits for the device)."""
    import torch.distributed as dist
    from device import clock

    spent = {"all": 0.0}
    for name in ("all_reduce", "all_gather", "broadcast"):
        original = getattr(dist, name)

        def wrapper(*args, _original=original, **kwargs):
            start = clock()
            try:
                return _original(*args, **kwargs)
            finally:
                spent["all"] += clock() - start

        setattr(dist, name, wrapper)
    return spent


def step_side(args) -> dict:
    import keras
    import numpy as np
    import torch
    import torch.distributed as dist
    from device import clock

    import deepstab  # noqa: F401
    from deepstab import allocator, distributed
    from deepstab.datasets.streaming import IndexedImages
    from deepstab.methods.lfss import LFSSModel, lfss_optimizer

    allocator.keep_large_blocks()
    distributed.setup()
    world = distributed.world_size()
    spent = timed_collectives()
    in_average = {"all": 0.0}
    average = distributed.average_gradients

    def timed_average(grads):
        start = clock()
        try:
            return average(grads)
        finally:
            in_average["all"] += clock() - start

    distributed.average_gradients = timed_average
    n = args.batch * world * (args.steps + 2)
    x = np.random.default_rng(0).random((n, 32, 32, 3), dtype=np.float32)
    model = LFSSModel((32, 32, 3), 10, width=args.width, eta=10**6, seed=0)  # no epoch-end k-means
    model.set_cluster_state(np.arange(n) % 10, np.arange(n) % 10 != 0)  # L_C active
    data = IndexedImages(x, args.batch, seed=0)
    model.compile(optimizer=lfss_optimizer(0.05, len(data), 1000))
    marks: list[tuple[float, float, float]] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            marks.append((clock(), spent["all"], in_average["all"]))

        def on_train_end(self, logs=None):
            marks.append((clock(), spent["all"], in_average["all"]))

    model.fit(data, epochs=1, verbose=0, callbacks=[Clock()])
    steps = [tuple(b - a for a, b in zip(m0, m1)) for m0, m1 in zip(marks[2:], marks[3:])]  # 2 warm-up steps
    step_s, collective_s, average_s = (statistics.median(s[i] for s in steps) for i in range(3))
    size = sum(int(np.prod(v.shape)) for v in model.trainable_variables_of_step())
    raw = float("nan")
    if distributed.active():
        buffer = torch.zeros(size)
        dist.all_reduce(buffer)
        start = clock()
        for _ in range(10):
            dist.all_reduce(buffer)
        raw = (clock() - start) / 10
    return {
        "rate": args.batch * world / step_s,
        "step_ms": 1e3 * step_s,
        "average_ms": 1e3 * average_s,
        "collective_ms": 1e3 * collective_s,
        "raw_ms": 1e3 * raw,
        "parameters": size,
    }


def kmeans_side(args) -> dict:
    import numpy as np
    from device import clock

    from deepstab import allocator, distributed
    from deepstab.nn.kmeans import cosine_kmeans

    allocator.keep_large_blocks()  # as the command line
    distributed.setup()
    out = {}
    for n in args.sizes:
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((args.k, args.dim)).astype(np.float32)
        part = distributed.shard(n)
        noise = rng.standard_normal((part.stop - part.start, args.dim), dtype=np.float32)
        rows = centres[rng.integers(0, args.k, n)[part]] + 0.5 * noise
        del noise
        kmeans = dict(n_init=1, max_iter=args.iterations, seed=0)
        # deepstab's way: each rank's rows stay, every sum over rows is all-reduced.
        distributed.barrier()
        start = clock()
        sharded_labels = cosine_kmeans(rows, args.k, sharded=True, **kmeans)
        sharded = clock() - start
        # The other way: all rows gathered, k-means on rank 0, the labels broadcast.
        distributed.barrier()
        start = clock()
        full = distributed.gather_array(rows, n)
        gathered = clock() - start
        labels = cosine_kmeans(full, args.k, **kmeans) if distributed.is_main() else None
        labels = distributed.broadcast_object(labels)
        whole = clock() - start
        same = bool(np.array_equal(labels[part], sharded_labels))
        out[n] = {"sharded_s": sharded, "gather_s": gathered, "gather_kmeans_s": whole, "same": same}
        del full, rows, labels
    return out


def launch(processes: int, threads: int, argv: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "KERAS_BACKEND": "torch"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    done = subprocess.run([*run, __file__, *argv], check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-4000:])
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per process and step")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=8, help="timed steps after two warm-up steps")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--kmeans", action="store_true", help="time the epoch-end k-means instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_281_167])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20, help="Lloyd iterations at most")
    parser.add_argument("--side", choices=["step", "kmeans"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        from deepstab import distributed

        result = (step_side if args.side == "step" else kmeans_side)(args)
        if distributed.is_main():
            print(json.dumps(result))
        distributed.teardown()
        return

    import torch

    common = ["--batch", str(args.batch), "--width", str(args.width), "--steps", str(args.steps)]
    p = args.processes
    if args.kmeans:
        common = ["--dim", str(args.dim), "--k", str(args.k), "--iterations", str(args.iterations), "--sizes"]
        common += [str(s) for s in args.sizes]
        rows = {"1 process": launch(1, p, ["--side", "kmeans", *common])}
        rows[f"{p} processes"] = launch(p, 1, ["--side", "kmeans", *common])
        print(
            f"Epoch-end k-means of N embeddings (d={args.dim}, K={args.k}), one restart of at most "
            f"{args.iterations} Lloyd iterations, float64, torch {torch.__version__}"
        )
        print(f"{'N':>9}  {'run':<13}{'sharded s':>10}{'gather s':>10}{'gather + k-means s':>20}  same labels")
        for name, result in rows.items():
            for n, r in result.items():
                print(
                    f"{int(n):>9}  {name:<13}{r['sharded_s']:>10.2f}{r['gather_s']:>10.2f}"
                    f"{r['gather_kmeans_s']:>20.2f}  {r['same']}"
                )
        return
    configs = [(1, 1), (1, p), (p, 1)]
    rows = {f"{n} x {t} thread{'s' if t > 1 else ''}": launch(n, t, ["--side", "step", *common]) for n, t in configs}
    print(
        f"LFSS step under torchrun (gloo on CPU, NCCL on GPUs), ResNet-18 x{args.width:g}, 32x32x3, "
        f"{args.batch} images per process, median of {args.steps} steps, torch {torch.__version__}"
    )
    head = f"{'processes x threads':<22}{'images/s':>10}{'step ms':>10}{'all-reduce ms':>15}{'collectives ms':>16}"
    print(head + f"{'raw all-reduce ms':>19}")
    for name, r in rows.items():
        print(
            f"{name:<22}{r['rate']:>10.1f}{r['step_ms']:>10.1f}{r['average_ms']:>15.1f}{r['collective_ms']:>16.1f}"
            f"{r['raw_ms']:>19.1f}"
        )
    print(f"gradient: {rows[next(iter(rows))]['parameters']:,} float32 values")


if __name__ == "__main__":
    main()
