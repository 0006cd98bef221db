"""Images/second of one LFSS training step: deepstab (Keras, torch backend) vs plain PyTorch.

Both sides run the same computation (``bench/torch_lfss_reference.py``): two SimCLR views of a
batch, ResNet-18 with the CIFAR stem at 32x32 and a 4096 -> 256 projector for the online, target
and predecessor networks, the predictor, L_S + λ (L_I + L_C) with L_C active, an SGD update
and the EMA update, with the same thread count, on the same device (the GPU when there is one). Each side
runs in its own process, so the
peak resident memory printed is its own. The Keras side is timed through ``model.fit``: the
time from the start of one batch to the start of the next, median over the timed batches.

    python bench/lfss_bench.py                      # batch 64, full-width ResNet-18
    python bench/lfss_bench.py --width 0.25 --steps 16
    python bench/lfss_bench.py --malloc tuned       # both sides with large blocks kept on the heap
    python bench/lfss_bench.py --malloc deepstab    # the same set by deepstab.allocator, as the CLI does
    python bench/lfss_bench.py --malloc library     # Keras side: LFSSModel.fit as a script calls it, nothing set
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend
# glibc returns freed blocks over 128 KiB to the system and maps new ones, so every large
# activation costs page faults; these keep them on the heap (what jemalloc or tcmalloc do).
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def keras_side(args) -> list[float]:
    import keras
    import numpy as np
    from device import clock

    import deepstab  # noqa: F401  (selects the torch backend)
    from deepstab.datasets.streaming import IndexedImages
    from deepstab.methods.lfss import LFSSModel, lfss_optimizer

    x = np.random.default_rng(0).random((args.batch * (args.steps + 1), 32, 32, 3), dtype=np.float32)
    model = LFSSModel((32, 32, 3), 10, width=args.width, eta=10**6, seed=0)  # no epoch-end k-means
    model.set_cluster_state(np.arange(len(x)) % 10, np.arange(len(x)) % 10 != 0)  # L_C active
    model.use_stability = True
    data = IndexedImages(x, args.batch, seed=0)
    model.compile(optimizer=lfss_optimizer(0.05, 100, 1000))
    starts: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            starts.append(clock())

        def on_train_end(self, logs=None):
            starts.append(clock())

    model.fit(data, epochs=1, verbose=0, callbacks=[Clock()])
    return [b - a for a, b in zip(starts[1:], starts[2:])]  # the first batch warms up


def torch_side(args) -> list[float]:
    import torch
    from device import accelerator, clock
    from torch_lfss_reference import TorchLFSS

    torch.set_default_device(accelerator())  # this process runs the PyTorch side alone
    torch.manual_seed(0)
    # Images, labels and batch order in host memory, each batch moved to the device, as Keras's fit does.
    x = torch.rand(args.batch * (args.steps + 1), 3, 32, 32, device="cpu")
    net = TorchLFSS(width=args.width)
    labels = torch.arange(len(x), device="cpu") % 10
    keep = labels != 0
    times = []
    order = torch.randperm(len(x), device="cpu")
    device = accelerator()
    for i in range(args.steps + 1):
        start = clock()
        index = order[i * args.batch : (i + 1) * args.batch].sort().values
        net.step(x[index].to(device), labels[index].to(device), keep[index].to(device))
        times.append(clock() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    parser.add_argument("--repeats", type=int, default=3, help="processes per side, alternating; medians reported")
    parser.add_argument(
        "--malloc",
        choices=["default", "tuned", "deepstab", "library"],
        default="default",
        help="glibc's allocator as it comes (DEEPSTAB_MALLOC=default), tuned for both sides by environment "
        f"({' '.join(f'{k}={v}' for k, v in TUNED_MALLOC.items())}: large tensors stay on the heap), "
        "both sides calling deepstab.allocator.keep_large_blocks() at start, as the command line does, or "
        "'library': the Keras side sets nothing (LFSSModel.fit sets it), the PyTorch side as 'deepstab'",
    )
    parser.add_argument("--side", choices=["keras", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        if args.malloc == "deepstab" or (args.malloc == "library" and args.side == "torch"):
            # the module alone: the PyTorch side does not import Keras
            path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deepstab", "allocator.py")
            spec = importlib.util.spec_from_file_location("allocator", path)
            allocator = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(allocator)
            assert allocator.keep_large_blocks()
        times = (keras_side if args.side == "keras" else torch_side)(args)
        times.sort()
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"rate": args.batch / times[len(times) // 2], "peak_mib": peak_mib}))
        return

    import torch
    from device import device_name

    env = {**os.environ, **(TUNED_MALLOC if args.malloc == "tuned" else {})}
    if args.malloc in ("default", "tuned"):  # LFSSModel.fit would set the allocator itself
        env["DEEPSTAB_MALLOC"] = "default"
    runs: dict[str, list[dict]] = {"keras": [], "torch": []}
    for _, side in itertools.product(range(args.repeats), ("keras", "torch")):
        command = [
            sys.executable,
            __file__,
            "--side",
            side,
            "--batch",
            str(args.batch),
            "--width",
            str(args.width),
            "--steps",
            str(args.steps),
            "--malloc",
            args.malloc,
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        runs[side].append(json.loads(output.strip().splitlines()[-1]))
    print(
        f"LFSS train step, ResNet-18 x{args.width:g} (CIFAR stem), 32x32x3, batch {args.batch}, "
        f"median of {args.steps} steps in each of {args.repeats} processes per side, malloc {args.malloc}, "
        f"on {device_name()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    print(f"{'side':<8}{'images/s':>10}{'peak RSS MiB':>14}  per process")
    rates = {side: statistics.median(r["rate"] for r in rs) for side, rs in runs.items()}
    for side, rs in runs.items():
        each = ", ".join(f"{r['rate']:.1f}" for r in rs)
        print(f"{side:<8}{rates[side]:>10.1f}{max(r['peak_mib'] for r in rs):>14.0f}  {each}")
    print(f"ratio keras/torch: {rates['keras'] / rates['torch']:.2f}")


if __name__ == "__main__":
    main()
