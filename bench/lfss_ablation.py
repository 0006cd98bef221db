"""LFSS against BYOL and against L_S alone (the direction of the paper's Table 4), as a user runs them.

Each run is the command a user would type (``python cli.py lfss ...``) with its final model,
evaluated by k-means on the target embeddings (mean of 10 runs). The three variants:

- ``byol``: ``--no-stability --sigma 0``, plain BYOL (no L_I, no L_C, no noise);
- ``ls``: ``--no-stability``, L_S alone (BYOL with the σ-noise of Eq. 9);
- ``lfss``: the full loss of Eq. 10.

Resumable: every finished run is appended to ``--results`` (JSON lines) and skipped next time; an
unfinished run resumes from its own checkpoint (``--resume``; LFSS resumes bit-identically), and
its training time is then left out of the table.

    DEEPSTAB_DATA=../shared/data python bench/lfss_ablation.py --preset cpu --seeds 0 1 2
    python bench/lfss_ablation.py --table-only --results docs/data/lfss_ablation_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results import append_result, read_results

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"byol": ["--no-stability", "--sigma", "0"], "ls": ["--no-stability"], "lfss": []}
NAMES = {"byol": "BYOL", "ls": "L_S alone", "lfss": "LFSS"}
METRICS = re.compile(r"k-means on the target embeddings.*: ACC ([\d.]+)\s+NMI ([\d.]+)\s+ARI ([\d.]+)")
WALL = re.compile(r"Training wall time: (\d+) s")
METRICS_KEYS = ("acc", "nmi", "ari")


def command(args: argparse.Namespace, variant: str, seed: int) -> list[str]:
    """The user's command line for one run (``S`` stands for the seed in the printed table)."""
    return [
        "python",
        "cli.py",
        "lfss",
        "--dataset",
        args.dataset,
        "--preset",
        args.preset,
        *VARIANTS[variant],
        "--seed",
        str(seed),
        *args.extra,
    ]


def measure(args: argparse.Namespace, variant: str, seed: int) -> dict:
    name = f"lfss-{variant}-{args.dataset}-{args.preset}-s{seed}.keras"
    cmd = command(args, variant, seed) + ["--output", str(Path(args.models_dir) / name), "--resume"]
    cmd[0] = sys.executable
    resumed = (Path(args.models_dir) / f".checkpoint-{name}").exists()  # its earlier part went untimed
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found, trained = METRICS.search(done.stdout), WALL.search(done.stdout)
    if done.returncode or not found:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    acc, nmi, ari = (float(v) for v in found.groups())
    return {
        "dataset": args.dataset,
        "preset": args.preset,
        "variant": variant,
        "seed": seed,
        "extra": args.extra,
        "acc": acc,
        "nmi": nmi,
        "ari": ari,
        "training_seconds": int(trained.group(1)) if trained and not resumed else None,
        "wall": wall,
        "resumed": resumed,
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }


def table(rows: list[dict]) -> str:
    lines = ["| run | ACC | NMI | ARI | training wall | seeds | command |", "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        runs = [r for r in rows if r["variant"] == variant]
        if not runs:
            continue
        cells = [f"{np.mean([r[m] for r in runs]):.3f} ± {np.std([r[m] for r in runs]):.3f}" for m in METRICS_KEYS]
        walls = [r["training_seconds"] for r in runs if r["training_seconds"] is not None]
        wall = f"{np.mean(walls):,.0f} ± {np.std(walls):,.0f} s" if walls else "-"
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        r = runs[0]
        shown = " ".join(
            ["python", "cli.py", "lfss", "--dataset", r["dataset"], "--preset", r["preset"], *VARIANTS[variant]]
            + [*r["extra"], "--seed", "S"]
        )
        lines.append(f"| {NAMES[variant]} | {' | '.join(cells)} | {wall} | {seeds} | `{shown}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10-jpg")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--results", default="lfss_ablation.jsonl")
    parser.add_argument("--models-dir", default="models/lfss-ablation")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="further options for every run, after --")
    args = parser.parse_args()
    results = Path(args.results)
    rows = read_results(results)
    if not args.table_only:
        done = {(r["dataset"], r["preset"], r["variant"], r["seed"], tuple(r["extra"])) for r in rows}
        for seed in args.seeds:  # seed-major, so a partial series compares the variants on the same seeds
            for variant in args.variants:
                if (args.dataset, args.preset, variant, seed, tuple(args.extra)) in done:
                    continue
                row = measure(args, variant, seed)
                print(json.dumps(row), flush=True)
                append_result(results, row)
                rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
