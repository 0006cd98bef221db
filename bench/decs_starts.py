"""Which clustering start DECS should take: label-free criteria of k-means partitions of the
pretrained embedding against the final ACC that DECS reaches from each.

For a dataset and seed, the autoencoder of ``python cli.py decs --dataset D --seed S
--models-dir M/D-sS`` (the ``default`` preset; taken from ``bench/decs_default.py``'s models
folder when that series pretrained it, else pretrained here the same way) embeds the images;
``--candidates`` single-start k-means runs (k-means++ seeds of the run's k-means stream) give
candidate partitions (the very ones DECS's ``balanced`` start chooses from), and for each the
label-free criteria:

- ``inertia`` relative to the lowest of the candidates (what k-means with restarts minimises);
- ``min_share``: the smallest cluster over an even share ``N / K``;
- ``entropy``: the entropy of the cluster sizes over ``log K``;
- ``silhouette`` on 2,000 sampled embeddings;
- ``agreement``: the mean ARI with the other candidates;

and, for analysis only, the partition's own ACC. DECS's clustering stage (the preset's 80
epochs, the default loss and collapse guard) then runs from the candidates that one of the rules
picks (``--all`` runs every distinct candidate), recording the final ACC/NMI/ARI and whether the
guard fired. The rules: ``inertia`` (the lowest: today's k-means with restarts), ``balanced@d``
(the largest ``min_share`` among the candidates within ``d`` of the lowest inertia),
``no-small@0.05`` (DECS's ``balanced`` start: the lowest inertia among the candidates within 5%
of the lowest that have no cluster under two thirds of an even share, else the lowest),
``silhouette``, ``agreement``.

Resumable: a row per dataset and seed in ``--results`` (JSON lines); a seed already there is
skipped. ``--criteria-only`` prints the candidates' table of each seed (criteria, start ACC,
which rules pick which) and stops there: no DECS run, nothing recorded.

    DEEPSTAB_DATA=../shared/data OMP_NUM_THREADS=1 python bench/decs_starts.py --dataset digits --seeds 0 1 2
    python bench/decs_starts.py --table-only
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

import keras
import numpy as np
from results import append_result, recorded, series
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score, silhouette_score

from deepstab import datasets, seeding
from deepstab.methods.decs import DECS
from deepstab.metrics import evaluate
from deepstab.nn.kmeans import single_starts
from deepstab.runs.common import pretrained_autoencoder
from deepstab.runs.decs import DECSRun

CRITERIA = ("inertia", "min_share", "entropy", "silhouette", "agreement")
TOLERANCES = (0.01, 0.02, 0.05)


def rules(candidates: list[dict]) -> dict[str, int]:
    """The candidate (index) each rule picks."""
    best = min(c["inertia"] for c in candidates)
    picks = {"inertia": min(range(len(candidates)), key=lambda i: candidates[i]["inertia"])}
    for d in TOLERANCES:
        near = [i for i, c in enumerate(candidates) if c["inertia"] <= best * (1 + d)]
        picks[f"balanced@{d:g}"] = max(near, key=lambda i: (candidates[i]["min_share"], -candidates[i]["inertia"]))
    fine = [i for i, c in enumerate(candidates) if c["inertia"] <= best * 1.05 and c["min_share"] >= 2 / 3]
    picks["no-small@0.05"] = min(fine, key=lambda i: candidates[i]["inertia"]) if fine else picks["inertia"]
    picks["silhouette"] = max(range(len(candidates)), key=lambda i: candidates[i]["silhouette"])
    picks["agreement"] = max(range(len(candidates)), key=lambda i: candidates[i]["agreement"])
    return picks


def candidates_of(z: np.ndarray, y: np.ndarray, k: int, count: int, seed: int) -> tuple[list[dict], list]:
    runs = single_starts(z, k, [seeding.derive(seed, "kmeans", i) for i in range(count)])  # as DECS's start
    parts = [r.labels_ for r in runs]
    centres = [r.cluster_centers_.astype(np.float32) for r in runs]
    rng = np.random.default_rng(0)
    sample = rng.choice(len(z), min(2000, len(z)), replace=False)
    rows = []
    for i, labels in enumerate(parts):
        sizes = np.bincount(labels, minlength=k) / len(z)
        share = sizes[sizes > 0]
        rows.append(
            {
                "inertia": float(runs[i].inertia_),
                "min_share": float(sizes.min() * k),
                "entropy": float(-(share * np.log(share)).sum() / np.log(k)),
                "silhouette": float(silhouette_score(z[sample], labels[sample])),
                "agreement": float(np.mean([adjusted_rand_score(labels, o) for j, o in enumerate(parts) if j != i])),
                "start_acc": evaluate(y, labels)["acc"],
            }
        )
    return rows, centres


def cluster_from(a, x, y, weights, centres, settings: DECSRun) -> dict:
    keras.utils.set_random_seed(a.seed)
    model = DECS(len(centres), x.shape[1:], seed=a.seed)
    model.autoencoder.set_weights(weights)
    model.set_centroids(centres)
    model.compile(optimizer=settings.optimizer())
    start = time.perf_counter()
    model.fit(x, batch_size=settings.batch_size, epochs=settings.cluster_epochs, verbose=0)
    guard = model.collapse_guard
    return {
        **evaluate(y, model.predict_labels(x)),
        "collapse_epoch": None if guard.collapsed_epoch is None else guard.collapsed_epoch + 1,
        "seconds": round(time.perf_counter() - start, 1),
    }


def measure(a) -> dict:
    x, y = datasets.load(a.dataset)
    settings = DECSRun(dataset=a.dataset, seed=a.seed, models_dir=f"{a.models_dir}/{a.dataset}-s{a.seed}")
    settings.resolve()
    keras.utils.set_random_seed(a.seed)
    model = DECS(len(np.unique(y)), x.shape[1:], seed=a.seed)
    path = settings.autoencoder_path(x, model)
    epochs, optimizer = settings.pretraining_epochs(len(x)), settings.pretrain_optimizer(len(x))
    pretrained_autoencoder(settings, model, x, path, epochs=epochs, optimizer=optimizer)
    z = model.embed(x)
    candidates, centres = candidates_of(z, y, model.n_clusters, a.candidates, a.seed)
    best = min(c["inertia"] for c in candidates)
    for c in candidates:
        c["inertia"] /= best
    picks = rules(candidates)
    weights = model.autoencoder.get_weights()
    chosen = [] if a.criteria_only else range(len(candidates)) if a.all else sorted(set(picks.values()))
    for i in chosen:
        print(f"{a.dataset} seed {a.seed}: DECS from candidate {i}", flush=True)
        candidates[i]["final"] = cluster_from(a, x, y, weights, centres[i], settings)
    return {"dataset": a.dataset, "seed": a.seed, "candidates": candidates, "picks": picks}


def candidates_table(row: dict) -> str:
    """A seed's candidates by inertia, with their criteria, start ACC and the rules that pick them."""
    names = ["inertia", "min_share", "entropy", "silhouette", "agreement", "start_acc"]
    lines = [f"{row['dataset']} seed {row['seed']}:", "", "| candidate | " + " | ".join(names) + " | picked by |"]
    lines.append("|---|" + "---|" * (len(names) + 1))
    order = sorted(range(len(row["candidates"])), key=lambda i: row["candidates"][i]["inertia"])
    for i in order:
        c = row["candidates"][i]
        by = ", ".join(rule for rule, pick in row["picks"].items() if pick == i) or "-"
        lines.append(f"| {i} | " + " | ".join(f"{c[n]:.4f}" for n in names) + f" | {by} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["Final ACC of the candidate each rule picks (start ACC in brackets; * the guard fired):", ""]
    names = list(rules(rows[0]["candidates"])) if rows else []
    lines += ["| dataset | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells, picks = [], rules(r["candidates"])
        for name in names:
            c = r["candidates"][picks[name]]
            final = c.get("final")
            mark = "*" if final and final["collapse_epoch"] else ""
            cells.append(f"{final['acc']:.3f}{mark} ({c['start_acc']:.3f})" if final else f"- ({c['start_acc']:.3f})")
        lines.append(f"| {r['dataset']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "Spearman correlation over the candidates of a seed, mean over seeds:", ""]
    lines += ["| dataset | with | " + " | ".join(CRITERIA) + " |", "|---|---|" + "---|" * len(CRITERIA)]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for target in ("start_acc", "final"):
            cells = []
            for criterion in CRITERIA:
                values = []
                for r in (r for r in rows if r["dataset"] == dataset):
                    cs = [c for c in r["candidates"] if target == "start_acc" or "final" in c]
                    scores = [c[target] if target == "start_acc" else c["final"]["acc"] for c in cs]
                    if len(cs) > 2 and len(set(scores)) > 1:
                        values.append(spearmanr([c[criterion] for c in cs], scores).statistic)
                cells.append(f"{np.nanmean(values):+.2f}" if values else "-")
            what = "start ACC" if target == "start_acc" else "final ACC"
            lines.append(f"| {dataset} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--all", action="store_true", help="run DECS from every candidate, not only the picks")
    parser.add_argument("--models-dir", default="models/decs-default")
    parser.add_argument("--results", default="docs/data/decs_starts.jsonl")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--criteria-only", action="store_true", help="print the candidates' criteria; run no DECS, record nothing"
    )
    a = parser.parse_args()
    rows = series(a.results, table, a.table_only)
    if rows is None:
        return
    for seed in a.seeds:
        a.seed = seed
        if a.criteria_only:
            print(candidates_table(measure(a)), end="\n\n")
            continue
        if recorded(rows, dataset=a.dataset, seed=seed):
            continue
        row = measure(a)
        append_result(Path(a.results), row)
        rows.append(row)
    if not a.criteria_only:
        print(table(rows))


if __name__ == "__main__":
    main()
