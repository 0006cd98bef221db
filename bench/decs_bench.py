"""Samples/second of DECS's two training steps: deepstab (Keras, torch backend) vs plain PyTorch.

Both sides run the same computation on the same shapes, with the same thread
count, on the same device (the GPU when there is one, ``bench/device.py``): augmentation (random shift +
rotation), the convolutional autoencoder
with MSE (pretraining step), or the encoder, Student-t assignments, Otsu's
threshold and the paper's stability loss (clustering step), and an Adam update.
The Keras side is timed through ``model.fit`` (what a user runs), the PyTorch
side through a plain loop over shuffled mini-batches.

    python bench/decs_bench.py                 # USPS shape (16x16x1), batch 256
    python bench/decs_bench.py --shape 28 28 1 --steps 10
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
from torch_reference import TorchConvAutoencoder, augment, decs_paper_loss, otsu, student_t

import deepstab


def keras_rate(stage: str, x: np.ndarray, batch: int, repeats: int) -> float:
    model = deepstab.DECS(10, x.shape[1:])
    if stage == "pretrain":
        target = model.autoencoder
    else:
        model.initialize_centroids(x[:2000], n_init=1, seed=0)
        target = model
    target.compile(optimizer=keras.optimizers.Adam(1e-3))
    # keras.Model.fit itself: DECS.fit would add the collapse check, which the PyTorch side lacks
    keras.Model.fit(target, x[: 2 * batch], batch_size=batch, epochs=1, verbose=0)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = clock()
        keras.Model.fit(target, x, batch_size=batch, epochs=1, verbose=0)
        best = max(best, len(x) / (clock() - start))
    return best


def torch_rate(stage: str, x: np.ndarray, batch: int, repeats: int) -> float:
    net = TorchConvAutoencoder(x.shape[1:])
    data = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    centroids = torch.nn.Parameter(torch.randn(10, 10))
    if stage == "pretrain":
        params = list(net.parameters())
    else:
        params = list(net.encoder.parameters()) + [centroids]
    optimizer = torch.optim.Adam(params, 1e-3)

    def step(xb):
        xa = augment(xb)
        if stage == "pretrain":
            loss = ((net.decode(net.encode(xa)) - xa) ** 2).mean()
        else:
            q = student_t(net.encode(xa), centroids)
            loss = decs_paper_loss(q, otsu(q))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def epoch(n):  # batches are taken from host memory, as Keras's fit takes them
        order = torch.randperm(n, device="cpu")
        for i in range(0, n, batch):
            step(data[order[i : i + batch]].to(accelerator()))

    epoch(2 * batch)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = clock()
        epoch(len(data))
        best = max(best, len(data) / (clock() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 16, 1), metavar=("H", "W", "C"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((args.batch * args.steps, *args.shape), dtype=np.float32)
    print(
        f"DECS steps, input {tuple(args.shape)}, batch {args.batch}, {args.steps} batches per pass, "
        f"best of {args.repeats}, on {device_name()}, torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}, keras {keras.__version__}"
    )
    print(f"{'step':<12}{'keras samples/s':>18}{'torch samples/s':>18}{'ratio':>8}")
    for stage in ("pretrain", "clustering"):
        ours = keras_rate(stage, x, args.batch, args.repeats)
        with accelerator():  # around the PyTorch side only: Keras's own data loading expects the CPU
            theirs = torch_rate(stage, x, args.batch, args.repeats)
        print(f"{stage:<12}{ours:>18.0f}{theirs:>18.0f}{ours / theirs:>8.2f}")


if __name__ == "__main__":
    main()
