"""What BRB adds to DEC, IDEC and DCN: final ACC/NMI/ARI (mean ± std over seeds) and wall time
of the clustering stage with and without BRB, on the same pretrained autoencoder per seed.
"BRB share" is the time spent inside BRB's interventions over the clustering stage of the same
run: unlike the difference of two wall times, it does not move with the machine's load.

The defaults are the BRB paper's schedule (pretraining 250 epochs, clustering 400 at batch 256,
T = 20, α = 0.8, subsample 10,000) with every other setting at the dec/idec/dcn commands'
defaults (the BRB authors' code):

    DEEPSTAB_DATA=../shared/data OMP_NUM_THREADS=1 python bench/brb_bench.py --datasets usps --jobs 2

Every finished run is appended to ``--results`` (JSON lines), and runs already there are not
repeated, so an interrupted bench goes on where it stopped. The table is printed at the end
(``--table-only`` prints it from the results file).

``--jobs N`` runs N runs at a time in separate processes (first the autoencoder pretraining of
each dataset and seed, then every method with and without BRB): for a GPU, where one run of
these small networks leaves most of the device idle. Give each process one CPU thread
(``OMP_NUM_THREADS=1``) and N no larger than the CPU cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device import device_name
from results import append_result, read_results

import deepstab  # noqa: F401
from deepstab import datasets
from deepstab.methods.losses import COUNT_RULES
from deepstab.runs.centroid import CentroidRun, pretrained_model, run_centroid


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["usps"])
    parser.add_argument("--methods", nargs="+", default=["dec", "idec", "dcn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--interval", type=int, default=20, help="BRB interval T")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--models-dir", default="bench-models")
    parser.add_argument("--results", default="bench/brb_paper.jsonl")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument(
        "--eval-every",
        type=int,
        help="label the data every N epochs and keep ACC/NMI/ARI and the label change rate per check "
        "in the row's 'history' (watching only: the labels never steer training) [default: the last epoch only]",
    )
    parser.add_argument("--counts", choices=COUNT_RULES, help="DCN's count rule [default: the dcn command's]")
    parser.add_argument("--brb-modes", nargs="+", choices=("plain", "brb"), default=["plain", "brb"])
    parser.add_argument("--table-only", action="store_true")
    return parser.parse_args()


def key(row: dict) -> tuple:
    return (
        row["dataset"],
        row["method"],
        row["brb"],
        row["seed"],
        row["pretrain_epochs"],
        row["epochs"],
        row["interval"],
        row.get("counts"),
    )


def make_run(args: argparse.Namespace, row: dict) -> CentroidRun:
    dataset, method, brb, seed = row["dataset"], row["method"], row["brb"], row["seed"]
    return CentroidRun(
        method=method,
        dataset=dataset,
        pretrain_epochs=args.pretrain_epochs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        brb=brb,
        brb_interval=args.interval,
        seed=seed,
        models_dir=args.models_dir,
        output=f"{args.models_dir}/{method}{'-brb' if brb else ''}{'-' + row['counts'] if row.get('counts') else ''}"
        f"-{dataset}-s{seed}.keras",
        eval_every=args.eval_every or args.epochs,
        verbose=0,
        **({"counts": row["counts"]} if row.get("counts") else {}),
    )


def pretrain(args: argparse.Namespace, row: dict) -> None:
    """Pretrain (and save) the autoencoder that every run of this dataset and seed shares."""
    run = make_run(args, row)
    x, y = datasets.load(run.dataset)
    pretrained_model(run, x, y)


def measure(args: argparse.Namespace, row: dict, data=None) -> dict:
    """One run: its row completed with the final metrics and the times."""
    start = time.perf_counter()
    result = run_centroid(make_run(args, row), data=data)
    watched = ("acc", "nmi", "ari", "label_change")
    history = {name: [float(v) for v in values] for name, values in result.history.items() if name in watched}
    return dict(
        row,
        **({"eval_every": args.eval_every, "history": history} if args.eval_every else {}),
        **result.metrics,
        init_acc=result.init_metrics["acc"],
        cluster_seconds=result.cluster_seconds,
        brb_seconds=result.brb_seconds,
        pretrain_seconds=result.pretrain_seconds,
        wall=time.perf_counter() - start,
        resets=[e + 1 for e in result.reset_epochs],
        threads=os.environ.get("OMP_NUM_THREADS", "all"),
        jobs=args.jobs,
        device=device_name(),
    )


def record(args: argparse.Namespace, row: dict) -> None:
    append_result(args.results, row)
    print(
        f"{row['dataset']} seed {row['seed']} {row['method']}{' +BRB' if row['brb'] else ''}: "
        f"ACC {row['acc']:.4f} NMI {row['nmi']:.4f} "
        f"ARI {row['ari']:.4f} (k-means init {row['init_acc']:.4f}), clustering {row['cluster_seconds']:.0f} s",
        flush=True,
    )


def run_all(args: argparse.Namespace, done: set) -> None:
    todo = [
        {
            "dataset": dataset,
            "method": method,
            "brb": brb,
            "seed": seed,
            "pretrain_epochs": args.pretrain_epochs,
            "epochs": args.epochs,
            "interval": args.interval,
            **({"counts": args.counts} if args.counts and method == "dcn" else {}),
        }
        for dataset in args.datasets
        for seed in args.seeds
        for method in args.methods
        for brb in [mode == "brb" for mode in args.brb_modes]
    ]
    todo = [row for row in todo if key(row) not in done]
    if args.jobs == 1:
        loaded = {}
        for row in todo:
            if row["dataset"] not in loaded:
                loaded = {row["dataset"]: datasets.load(row["dataset"])}
            record(args, measure(args, row, loaded[row["dataset"]]))
        return
    firsts = list({(row["dataset"], row["seed"]): row for row in reversed(todo)}.values())
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:  # a fresh process per run
        for future in as_completed([pool.submit(pretrain, args, row) for row in firsts]):
            future.result()
        for future in as_completed([pool.submit(measure, args, row) for row in todo]):
            record(args, future.result())


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | method | ACC | +BRB ACC | NMI | +BRB NMI | ARI | +BRB ARI "
        "| BRB better (ACC) | clustering s | +BRB s | BRB share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, dict[bool, list[dict]]] = {}
    for row in rows:
        method = row["method"] + (f" (counts {row['counts']})" if row.get("counts") else "")
        groups.setdefault((row["dataset"], method), {False: [], True: []})[row["brb"]].append(row)

    def ms(values):
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    for (dataset, method), runs in groups.items():
        plain, brb = sorted(runs[False], key=lambda r: r["seed"]), sorted(runs[True], key=lambda r: r["seed"])
        paired = {r["seed"]: r for r in plain}
        wins = [b["acc"] > paired[b["seed"]]["acc"] for b in brb if b["seed"] in paired]
        t0, t1 = (np.mean([r["cluster_seconds"] for r in rs]) if rs else float("nan") for rs in (plain, brb))
        cells = [dataset, method]
        for metric in ("acc", "nmi", "ari"):
            cells += [ms([r[metric] for r in plain]) if plain else "-", ms([r[metric] for r in brb]) if brb else "-"]
        shares = [r["brb_seconds"] / r["cluster_seconds"] for r in brb if "brb_seconds" in r]
        share = f"{100 * np.mean(shares):.1f}%" if shares else "-"
        cells += [f"{sum(wins)}/{len(wins)}", f"{t0:.0f}", f"{t1:.0f}", share]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    path = Path(args.results)
    rows = read_results(path)
    if not args.table_only:
        run_all(args, {key(r) for r in rows})
        rows = read_results(path)
    wanted = (
        {(r["pretrain_epochs"], r["epochs"], r["interval"]) for r in rows}
        if args.table_only
        else {(args.pretrain_epochs, args.epochs, args.interval)}
    )
    print(
        f"Schedule: pretraining {args.pretrain_epochs} epochs, clustering {args.epochs} epochs "
        f"at batch {args.batch_size}, "
        f"BRB every {args.interval} epochs (alpha 0.8, subsample 10,000); seeds {args.seeds}"
    )
    print(table([r for r in rows if (r["pretrain_epochs"], r["epochs"], r["interval"]) in wanted]))


if __name__ == "__main__":
    main()
