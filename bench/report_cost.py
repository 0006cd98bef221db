"""The cluster page's cost beyond the prediction: seconds and folder size of
:func:`deepstab.analysis.cluster_report.write_cluster_report` for N CIFAR-sized images (uint8
32x32x3 noise, which compresses worse than photographs), K clusters, 512-d embeddings, with
labels, tracked stability and a K curve; one line per N.

    OMP_NUM_THREADS=1 python bench/report_cost.py --n 10000 50000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[50000])
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    import deepstab  # noqa: F401  (the torch backend)
    from deepstab.analysis.cluster_report import write_cluster_report
    from deepstab.analysis.k_choice import KChoice

    print("| images | K | seconds | folder MB | files |\n|---|---|---|---|---|")
    for n in args.n:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(n, 32, 32, 3)).astype(np.uint8)
        labels, y = rng.integers(0, args.k, n), rng.integers(0, args.k, n)
        z = rng.normal(size=(n, 512)).astype(np.float32)
        choice = KChoice([2, 3, 4], [0.5, 0.6, 0.4], [0.01] * 3, [0.8] * 3, 3, 4, 2000)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            write_cluster_report(
                folder, x, labels, z, args.k, confidence=rng.uniform(size=n), y=y, stability=rng.uniform(size=n),
                k_choice=choice,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            files = list(Path(folder).iterdir())
            size = sum(f.stat().st_size for f in files) / 1e6
        print(f"| {n:,} | {args.k} | {seconds:.1f} | {size:.2f} | {len(files)} |")


if __name__ == "__main__":
    main()
