"""The baseline every deep clustering result should beat: k-means on the raw pixels.

Prints ACC/NMI/ARI (mean ± std over ``--runs`` k-means runs, 10 restarts each) of k-means on
the flattened images of each dataset, with K the number of classes.

    DEEPSTAB_DATA=../shared/data python bench/raw_kmeans.py cifar10-jpg usps
"""

from __future__ import annotations

import argparse

import numpy as np

import deepstab  # noqa: F401  (selects the torch backend)
from deepstab import datasets
from deepstab.metrics import evaluate
from deepstab.nn.kmeans import kmeans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'dataset':<14} {'N':>7}  {'ACC':>13}  {'NMI':>13}  {'ARI':>13}")
    for name in args.datasets:
        x, y = datasets.load(name)
        flat = x.reshape(len(x), -1)
        k = len(np.unique(y))
        scores = [evaluate(y, kmeans(flat, k, n_init=10, seed=seed)[1]) for seed in range(args.runs)]
        cells = [
            f"{np.mean([s[m] for s in scores]):.3f} ± {np.std([s[m] for s in scores]):.3f}"
            for m in ("acc", "nmi", "ari")
        ]
        print(f"{name:<14} {len(x):>7}  " + "  ".join(f"{c:>13}" for c in cells))


if __name__ == "__main__":
    main()
