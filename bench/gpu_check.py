"""The device check: every training step's speed against plain PyTorch on this machine's
accelerator, and LFSS data-parallel under torchrun, in one run (sized for a few minutes on one
GPU, under the 8 the issue allows; not yet timed on one).

Part 1, one table: for each training step, the Keras images/s (through ``fit``, as a user runs
it), the plain-PyTorch images/s of the same computation on the same device in the same process
(``bench/torch_reference.py``, ``torch_dec_reference.py``, ``torch_lfss_reference.py``), and
their ratio. The steps: LFSS (ResNet-18 at width 1, batch 256, 32x32x3: the timing of
``bench/lfss_bench.py``), DECS pretraining and clustering at the USPS (16x16x1) and MNIST
(28x28x1) shapes, batch 256 (``bench/decs_bench.py``), and the DEC, IDEC and DCN clustering
steps at the USPS shape, batch 256 (``bench/dec_bench.py``). ``--precision bf16`` builds the
Keras models in mixed bfloat16 (``--precision bf16`` of the commands) and runs the PyTorch side
under ``torch.autocast`` with bfloat16.

Part 2, LFSS under torchrun: one process per GPU (NCCL; two gloo processes on a CPU) trains
``--dist-steps`` steps of a fixed global batch with synchronised batch statistics and fixed
views, and one process without torchrun trains the same steps on the whole global batch. The
check passes when every step's loss (L_S summed over the ranks, plus λ (L_I + L_C)) matches the
one-process loss to ``LOSS_RTOL``. With one GPU, torchrun starts one NCCL process: a world of
one, in which no collective runs (the line says so).

    python bench/gpu_check.py                  # on a GPU machine: the full check
    python bench/gpu_check.py --smoke          # anywhere, in a minute: tiny sizes, the CPU's threads
    python bench/gpu_check.py --precision bf16
    python bench/gpu_check.py --json out.json  # also the rows as JSON
    python bench/gpu_check.py --only decs dec-family --skip-distributed   # some rows only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

import keras
import numpy as np
import torch
from device import accelerator, device_name

import deepstab  # noqa: F401  (selects the torch backend)
from deepstab.precision import precision_scope

LOSS_RTOL = 5e-3  # per-step loss, N processes against one: float sums in another order
LFSS_SHAPE = (32, 32, 3)
GROUPS = ("lfss", "decs", "dec-family")  # the rows of part 1


def sizes(smoke: bool) -> dict:
    """The check's sizes: the full ones, or tiny ones that run on a CPU in about a minute."""
    if smoke:
        return dict(batch=32, steps=2, repeats=1, lfss_width=0.0625, lfss_batch=16, lfss_steps=3, dist_width=0.0625)
    return dict(batch=256, steps=20, repeats=3, lfss_width=1.0, lfss_batch=256, lfss_steps=12, dist_width=1.0)


def torch_precision(precision: str):
    """The PyTorch side's counterpart of the Keras side's precision."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(accelerator().type, dtype=torch.bfloat16)


def step_rows(args, size: dict) -> list[dict]:
    """Part 1: one row per training step."""
    import dec_bench
    import decs_bench
    import lfss_bench

    rows = []

    def measure(step: str, shape: tuple, batch: int, keras_side, torch_side) -> None:
        keras.utils.set_random_seed(0)
        start = time.perf_counter()
        with precision_scope(args.precision):
            ours = keras_side()
        with accelerator(), torch_precision(args.precision):
            theirs = torch_side()
        torch.set_default_device(None)
        row = dict(step=step, shape="x".join(map(str, shape)), batch=batch, keras=ours, torch=theirs)
        rows.append(row | dict(ratio=ours / theirs, seconds=time.perf_counter() - start))
        print(format_row(rows[-1]), flush=True)

    lfss = argparse.Namespace(batch=size["lfss_batch"], steps=size["lfss_steps"], width=size["lfss_width"])
    if "lfss" in args.only:
        measure(
            f"lfss (width {size['lfss_width']:g})",
            LFSS_SHAPE,
            lfss.batch,
            lambda: lfss.batch / statistics.median(lfss_bench.keras_side(lfss)),
            lambda: lfss.batch / statistics.median(lfss_bench.torch_side(lfss)),
        )
    for shape in ((16, 16, 1), (28, 28, 1)) if "decs" in args.only else ():
        x = np.random.default_rng(0).random((size["batch"] * size["steps"], *shape), dtype=np.float32)
        for stage in ("pretrain", "clustering"):
            measure(
                f"decs {stage}",
                shape,
                size["batch"],
                lambda stage=stage, x=x: decs_bench.keras_rate(stage, x, size["batch"], size["repeats"]),
                lambda stage=stage, x=x: decs_bench.torch_rate(stage, x, size["batch"], size["repeats"]),
            )
    x = np.random.default_rng(0).random((size["batch"] * size["steps"], 16, 16, 1), dtype=np.float32)
    for method in ("dec", "idec", "dcn") if "dec-family" in args.only else ():
        measure(
            method,
            x.shape[1:],
            size["batch"],
            lambda method=method: dec_bench.keras_rate(method, x, size["batch"], size["repeats"]),
            lambda method=method: dec_bench.torch_rate(method, x, size["batch"], size["repeats"]),
        )
    return rows


HEADER = f"{'step':<22}{'shape':>9}{'batch':>7}{'keras img/s':>13}{'torch img/s':>13}{'ratio':>7}"


def format_row(row: dict) -> str:
    return (
        f"{row['step']:<22}{row['shape']:>9}{row['batch']:>7}{row['keras']:>13.0f}{row['torch']:>13.0f}"
        f"{row['ratio']:>7.2f}"
    )


# ----------------------------------------------------------------------- part 2: torchrun


def lfss_steps(out: str, width: float, batch: int, steps: int, shape: tuple) -> None:
    """``steps`` LFSS steps on fixed views of a fixed global batch of ``batch`` images per
    process; this process's share of every step's loss goes to ``out/rank<r>.json``."""
    from deepstab import distributed
    from deepstab.methods.lfss import LFSSModel
    from deepstab.nn.optimizers import SGD

    distributed.setup()
    rank, world = distributed.rank(), distributed.world_size()
    keras.utils.set_random_seed(0)
    model = LFSSModel(shape, 10, width=width, seed=0, sigma=0.0, eta=0, sync_batch_norm=True)
    object.__setattr__(model, "augment", lambda images, training=None: images)  # the same views everywhere
    total = batch * world
    model.set_cluster_state(np.arange(total) % 10, np.arange(total) % 7 != 0)  # L_C on
    model.compile(optimizer=SGD(0.05, momentum=0.9))
    x = np.random.default_rng(0).random((steps, total, *shape), dtype=np.float32)
    mine = distributed.shard(total)
    losses = []
    for step in range(steps):
        for tracker in model.loss_trackers.values():
            tracker.reset_state()
        result = model.train_step((keras.ops.convert_to_tensor(x[step][mine]), keras.ops.arange(total)))
        losses.append({name: float(keras.ops.convert_to_numpy(result[name])) for name in ("l_s", "l_i", "l_c")})
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    record = {"rank": rank, "world": world, "backend": backend, "losses": losses, "lam": model.lam}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
    distributed.teardown()


def read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def total_losses(records: list[dict]) -> list[float]:
    """Each step's Eq. 10 loss of the whole global batch: L_S averaged over the ranks (equal
    shards: each rank's is the mean over its rows), plus λ (L_I + L_C), which every rank
    computes on the gathered rows."""
    first = records[0]
    return [
        statistics.fmean(r["losses"][s]["l_s"] for r in records) + first["lam"] * (step["l_i"] + step["l_c"])
        for s, step in enumerate(first["losses"])
    ]


def distributed_check(args, size: dict) -> dict:
    """Part 2: torchrun with one process per GPU (two on a CPU) against one process."""
    processes = torch.cuda.device_count() or 2
    batch = size["lfss_batch"]
    common = ["--width", str(size["dist_width"]), "--dist-steps", str(args.dist_steps)]
    with tempfile.TemporaryDirectory() as many, tempfile.TemporaryDirectory() as one:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            + [__file__, "--worker", many, "--worker-batch", str(batch), *common],
            check=True,
        )
        seconds = time.perf_counter() - start
        subprocess.run(
            [sys.executable, __file__, "--worker", one, "--worker-batch", str(batch * processes), *common], check=True
        )
        ranks = [read_json(os.path.join(many, f"rank{r}.json")) for r in range(processes)]
        single = [read_json(os.path.join(one, "rank0.json"))]
    got, expected = total_losses(ranks), total_losses(single)
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got, expected))
    return dict(
        processes=processes,
        backend=ranks[0]["backend"],
        world=ranks[0]["world"],
        batch_per_process=batch,
        steps=args.dist_steps,
        width=size["dist_width"],
        losses=got,
        one_process=expected,
        worst_rtol=worst,
        matches=worst <= LOSS_RTOL,
        seconds=seconds,
    )


def format_distributed(check: dict) -> list[str]:
    world = (
        f"{check['processes']} processes ({check['backend']})"
        if check["world"] > 1
        else f"1 process ({check['backend']}: a world of one, no collective ran)"
    )
    return [
        f"LFSS under torchrun: {world}, batch {check['batch_per_process']} per process, width {check['width']:g}, "
        f"{check['steps']} steps in {check['seconds']:.0f} s",
        "  loss per step:       " + " ".join(f"{v:.5f}" for v in check["losses"]),
        "  one process, same global batch: " + " ".join(f"{v:.5f}" for v in check["one_process"]),
        f"  largest relative difference {check['worst_rtol']:.1e} (tolerance {LOSS_RTOL:g}): "
        + ("matches" if check["matches"] else "DIFFERS"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU (the test suite runs this)")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="the rows to measure")
    parser.add_argument("--dist-steps", type=int, default=3, help="LFSS steps under torchrun")
    parser.add_argument("--skip-distributed", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        lfss_steps(args.worker, args.width, args.worker_batch, args.dist_steps, LFSS_SHAPE)
        return
    size = sizes(args.smoke)
    start = time.perf_counter()
    print(
        f"deepstab device check on {device_name()}: precision {args.precision}, torch {torch.__version__}, "
        f"keras {keras.__version__}, torch threads {torch.get_num_threads()}{', smoke sizes' if args.smoke else ''}"
    )
    print(HEADER, flush=True)
    rows = step_rows(args, size)
    check = None if args.skip_distributed else distributed_check(args, size)
    if check is not None:
        print("\n".join(format_distributed(check)))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        result = {"device": device_name(), "precision": args.precision, "smoke": args.smoke, "rows": rows}
        with open(args.json, "w") as handle:
            json.dump(result | {"distributed": check}, handle, indent=1)
    if check is not None and not check["matches"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
