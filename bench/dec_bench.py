"""Images/second of the DEC, IDEC and DCN clustering stage: deepstab (Keras ``fit``, torch
backend) against the same computation in plain PyTorch (``bench/torch_dec_reference.py``).

Both sides run one epoch at a time over the same images, in full batches, with the same
thread count and on the same device (the GPU when there is one): per step the resize to 28x28,
a random affine view, per-channel z-score, both views through the autoencoder (DEC: one pass
each; IDEC and DCN: one joint pass), the loss, gradient clipping at 500 and Adam; DCN also its
epoch-end centroid pass. The Keras side goes through ``model.fit`` with nothing else attached
(what a user's script runs); the best of ``--repeats`` epochs is reported.

    python bench/dec_bench.py                       # USPS shape (16x16x1), 36 batches of 256
    OMP_NUM_THREADS=1 python bench/dec_bench.py     # one thread
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

import keras
import numpy as np
import torch
from device import accelerator, clock, device_name
from torch_dec_reference import TorchMethod

from deepstab.methods.dec import METHODS
from deepstab.nn.optimizers import Adam


def keras_rate(method: str, x: np.ndarray, batch: int, repeats: int) -> float:
    model = METHODS[method](10, x.shape[1:], seed=0)
    model.autoencoder.prepare(x)
    model.initialize_centroids(x[:2048], n_init=1)
    model.compile(optimizer=Adam(1e-3, epsilon=1e-8))  # what the dec/idec/dcn commands use
    model.fit(x[: 2 * batch], batch_size=batch, epochs=1, verbose=0)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = clock()
        model.fit(x, batch_size=batch, epochs=1, verbose=0)
        best = max(best, (len(x) // batch) * batch / (clock() - start))
    return best


def torch_rate(method: str, x: np.ndarray, batch: int, repeats: int) -> float:
    reference = TorchMethod(method).to(accelerator())
    data = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    def epoch(n):  # batches are taken from host memory, as Keras's fit takes them
        order = torch.randperm(n, device="cpu")
        for i in range(0, n - batch + 1, batch):
            reference.step(data[order[i : i + batch]].to(accelerator()))
        if method == "dcn":
            reference.centroid_pass(data[:n], batch)

    epoch(2 * batch)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = clock()
        epoch(len(data))
        best = max(best, (len(x) // batch) * batch / (clock() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 16, 1), metavar=("H", "W", "C"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=36, help="batches per epoch (USPS: 36)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs; the best is reported")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((args.batch * args.steps, *args.shape), dtype=np.float32)
    print(
        f"DEC-family clustering epoch, input {tuple(args.shape)} resized to 28x28, batch {args.batch}, "
        f"{args.steps} steps, best of {args.repeats}, on {device_name()}, torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}, keras {keras.__version__}"
    )
    print(f"{'method':<8}{'keras images/s':>16}{'torch images/s':>16}{'ratio':>8}")
    for method in args.methods:
        ours = keras_rate(method, x, args.batch, args.repeats)
        with accelerator():  # around the PyTorch side only: Keras's own data loading expects the CPU
            theirs = torch_rate(method, x, args.batch, args.repeats)
        print(f"{method:<8}{ours:>16.0f}{theirs:>16.0f}{ours / theirs:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
