"""The DECS ``default`` table: ``python cli.py decs --dataset D --seed S`` as a user runs it, the
final model's ACC/NMI/ARI, with the k-means start, what the collapse guard did and the wall time.

Each run is the user's command in a subprocess, with a models folder per dataset and seed (so
each seed pretrains its autoencoder afresh rather than reusing one of an earlier version; runs of
other ``extra`` options on the same dataset and seed reuse it, and their wall time is then the
clustering stage's alone). Resumable: a
finished run is appended to ``--results`` (JSON lines) and skipped next time; a killed run goes
on from its own checkpoint (DECS resumes bit-identically), and its wall time is then left out.

    DEEPSTAB_DATA=../shared/data OMP_NUM_THREADS=1 nohup python bench/decs_default.py > decs_default.log 2>&1 &
    python bench/decs_default.py --table-only
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results import append_result, recorded, series

ROOT = Path(__file__).resolve().parent.parent
FINAL = re.compile(r"Final model: ACC ([\d.]+)\s+NMI ([\d.]+)\s+ARI ([\d.]+)")
START = re.compile(r"k-means on the pretrained embeddings: ACC ([\d.]+)")
WALL = re.compile(r"wall time: pretraining (\d+) s, clustering (\d+) s")
COLLAPSE = re.compile(r"collapse at epoch (\d+)")


def measure(args: argparse.Namespace, dataset: str, seed: int) -> dict:
    folder = Path(args.models_dir) / f"{dataset}-s{seed}"
    options = "-".join(part.strip("-").replace("=", "-") for part in args.extra)  # other options, another file
    out = folder / f"decs-{dataset}{'-' + options if options else ''}.keras"
    cmd = [sys.executable, "cli.py", "decs", "--dataset", dataset, "--seed", str(seed), *args.extra]
    cmd += ["--output", str(out), "--models-dir", str(folder)]
    resumed = folder.exists() and any(folder.glob(".checkpoint-*"))  # an earlier attempt's time is unknown
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    final, begun, times = FINAL.search(done.stdout), START.search(done.stdout), WALL.search(done.stdout)
    if done.returncode or not final:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    collapse = COLLAPSE.search(done.stdout)
    return {
        "dataset": dataset,
        "seed": seed,
        "extra": args.extra,
        **dict(zip(("acc", "nmi", "ari"), (float(v) for v in final.groups()))),
        "kmeans_acc": float(begun.group(1)) if begun else None,
        "collapse_epoch": int(collapse.group(1)) if collapse else None,
        "pretrain_seconds": int(times.group(1)) if times else None,
        "cluster_seconds": int(times.group(2)) if times else None,
        "wall": None if resumed else round(wall),
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | seeds | ACC (each seed) | ACC mean ± std | NMI | ARI | k-means start | collapse at epoch | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, extra in dict.fromkeys((r["dataset"], tuple(r["extra"])) for r in rows):
        runs = [r for r in rows if (r["dataset"], tuple(r["extra"])) == (dataset, extra)]
        runs.sort(key=lambda r: r["seed"])
        cells = [f"{np.mean([r[m] for r in runs]):.3f} ± {np.std([r[m] for r in runs]):.3f}" for m in ("acc", "nmi")]
        accs = " / ".join(f"{r['acc']:.4f}" for r in runs)
        starts = " / ".join(f"{r['kmeans_acc']:.3f}" for r in runs)
        collapses = " / ".join("-" if r["collapse_epoch"] is None else str(r["collapse_epoch"]) for r in runs)
        times = " / ".join("resumed" if r["wall"] is None else f"{r['wall'] / 60:.0f} min" for r in runs)
        seeds = ",".join(str(r["seed"]) for r in runs)
        ari = np.mean([r["ari"] for r in runs])
        threads = {r["threads"] for r in runs if r["wall"] is not None} or {runs[0]["threads"]}
        if len(threads) == 1:
            (one,) = threads
            threads_text = f"{one} thread{'' if one == '1' else 's'}"
        else:  # "all": OMP_NUM_THREADS unset, every core
            threads_text = "threads " + " / ".join(r["threads"] for r in runs if r["wall"] is not None)
        lines.append(
            f"| {' '.join([dataset, *extra])} | {seeds} | {accs} | {cells[0]} | {cells[1]} | {ari:.3f} | {starts} | "
            f"{collapses} | {times} ({threads_text}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "usps", "mnist-test"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results", default="docs/data/decs_default.jsonl")
    parser.add_argument("--models-dir", default="models/decs-default")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="further options for every run, after --")
    args = parser.parse_args()
    rows = series(args.results, table, args.table_only)
    if rows is None:
        return
    for dataset in args.datasets:  # dataset-major: the short datasets finish first
        for seed in args.seeds:
            if recorded(rows, dataset=dataset, seed=seed, extra=args.extra):
                continue
            row = measure(args, dataset, seed)
            print(row, flush=True)
            append_result(args.results, row)
            rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
