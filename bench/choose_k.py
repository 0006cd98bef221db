"""Choosing K without labels (``--n-clusters auto``, :mod:`deepstab.analysis.k_choice`) on cases of
known K: true K, the K each candidate rule chooses, and k-means ACC on the embedding with the
chosen K against the true K.

Embeddings: each dataset's DECS autoencoder pretrained by ``bench/decs_default.py`` (seed 0, and
seeds 1-4 on ``digits``), applied to every image of the case. Cases:

- tuned on (the rule was fixed on these before any subset was drawn): the full ``digits`` under the
  autoencoders of seeds 0-4, and the full ``usps`` (seed 0);
- tested on: class subsets of ``digits`` and ``usps`` (3, 5 and 7 of the 10 classes, two draws each),
  one unbalanced subset of each (5 classes, the first at a tenth of its images), and the full
  ``mnist-test`` when its autoencoder exists.

Candidates recorded per case: ``chosen`` (the rule: the smallest K within one standard error of the
best mean silhouette of resampled t-SNE maps), ``best`` (the highest mean silhouette), ``agreement``
(the highest ARI between resamples' partitions) and ``raw`` (the highest silhouette of k-means on
the embedding itself, no map).

    DEEPSTAB_DATA=../shared/data OMP_NUM_THREADS=1 python bench/choose_k.py
    python bench/choose_k.py --table-only
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from results import append_result, recorded, series

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models" / "decs-default"
TUNED = [("digits", s) for s in range(5)] + [("usps", 0)]
SUBSET_SIZES = (3, 5, 7)
DECS_DATASETS = ("digits",)  # the cases also clustered by DECS (its stage on USPS takes 10-25 min)
DRAWS = (0, 1)


def cases() -> list[dict]:
    """Every case: dataset, autoencoder seed, classes kept, the unbalanced class (or None), role."""
    out = [dict(dataset=d, ae_seed=s, classes=list(range(10)), minority=None, role="tuned") for d, s in TUNED]
    for dataset in ("digits", "usps"):
        for n in SUBSET_SIZES:
            for draw in DRAWS:
                rng = np.random.default_rng([1234, n, draw, len(dataset)])
                classes = sorted(int(c) for c in rng.choice(10, n, replace=False))
                out.append(dict(dataset=dataset, ae_seed=0, classes=classes, minority=None, role="test"))
        classes = sorted(int(c) for c in np.random.default_rng([4321, len(dataset)]).choice(10, 5, replace=False))
        out.append(dict(dataset=dataset, ae_seed=0, classes=classes, minority=classes[0], role="test"))
    out.append(dict(dataset="mnist-test", ae_seed=0, classes=list(range(10)), minority=None, role="test"))
    return out


def embeddings(dataset: str, ae_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list] | None:
    """The embeddings of every image of ``dataset`` under its DECS autoencoder, the labels, the
    images and the autoencoder's weights."""
    import deepstab  # noqa: F401  (the torch backend)
    from deepstab import datasets
    from deepstab.io import load_model
    from deepstab.methods.decs import DECS

    found = glob.glob(str(MODELS / f"{dataset}-s{ae_seed}" / f"decs-ae-{dataset}-*.keras"))
    if not found:
        return None
    x, y = datasets.load(dataset, os.environ.get("DEEPSTAB_DATA"))
    model = DECS(n_clusters=10, input_shape=x.shape[1:], seed=0)
    weights = load_model(found[0]).get_weights()
    model.autoencoder.set_weights(weights)
    return model.embed(x), y, x, weights


def subset(y: np.ndarray, case: dict) -> np.ndarray:
    """The indices of the case's images (the minority class thinned to a tenth, its first ones)."""
    index = np.flatnonzero(np.isin(y, case["classes"]))
    if case["minority"] is not None:
        minority = index[y[index] == case["minority"]]
        index = np.setdiff1d(index, minority[len(minority) // 10 :])
    return index


def kmeans_acc(z: np.ndarray, y: np.ndarray, k: int) -> float:
    from deepstab.metrics import cluster_accuracy
    from deepstab.nn.kmeans import kmeans

    return cluster_accuracy(y, kmeans(z, k, n_init=10, seed=0)[1])


def decs_acc(z_source: tuple, x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Final ACC of the DECS clustering stage of the `default` preset (80 epochs at batch 256,
    the run's fallback) with ``k`` clusters on the case's images, from the dataset's autoencoder."""
    from deepstab.methods.decs import DECS
    from deepstab.metrics import cluster_accuracy
    from deepstab.runs.decs import DECSRun

    model = DECS(n_clusters=k, input_shape=x.shape[1:], seed=0)
    model.autoencoder.set_weights(z_source)
    run = DECSRun(dataset="digits", seed=0)
    model.compile(optimizer=run.optimizer())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, batch_size=run.batch_size, epochs=80, verbose=0)
    return cluster_accuracy(y, model.predict_labels(x))


def decs_pair(weights: list, x: np.ndarray, y: np.ndarray, chosen: int, true_k: int) -> dict:
    """The DECS columns: final ACC with the chosen K and with the true K (one run when they agree)."""
    acc = round(decs_acc(weights, x, y, chosen), 4)
    return {"decs_chosen": acc, "decs_true": acc if chosen == true_k else round(decs_acc(weights, x, y, true_k), 4)}


def raw_silhouette_k(z: np.ndarray, k_range: tuple[int, int], m: int) -> int:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    index = np.random.default_rng(0).choice(len(z), m, replace=False)
    scores = {
        k: silhouette_score(z[index], KMeans(k, n_init=5, random_state=0).fit_predict(z[index]))
        for k in range(*k_range)
    }
    return max(scores, key=scores.get)


def measure(case: dict, z: np.ndarray, y: np.ndarray, x: np.ndarray, weights: list, k_range: tuple[int, int]) -> dict:
    from deepstab.analysis.k_choice import choose_k, resample_size

    index = subset(y, case)
    z, y, x = z[index], y[index], x[index]
    start = time.perf_counter()
    choice = choose_k(z, k_range, seed=0)
    seconds = time.perf_counter() - start
    true_k = len(case["classes"])
    return {
        **{k: case[k] for k in ("dataset", "ae_seed", "classes", "minority", "role")},
        "n": len(z),
        "true_k": true_k,
        "chosen": choice.k,
        "best": choice.best,
        "agreement": choice.ks[int(np.nanargmax(choice.agreement))],
        "raw": raw_silhouette_k(z, (k_range[0], k_range[1] + 1), resample_size(len(z))),
        "acc_chosen": round(kmeans_acc(z, y, choice.k), 4),
        "acc_true": round(kmeans_acc(z, y, true_k), 4),
        "seconds": round(seconds, 1),
        **(decs_pair(weights, x, y, choice.k, true_k) if case["dataset"] in DECS_DATASETS else {}),
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
        "choice": choice.to_config(),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| case | role | N | true K | chosen K | k-means ACC chosen K | k-means ACC true K | DECS ACC chosen K | "
        "DECS ACC true K | best | agreement | raw | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        what = (
            f"{r['dataset']} (AE seed {r['ae_seed']})" if len(r["classes"]) == 10 else f"{r['dataset']} {r['classes']}"
        )
        if r["minority"] is not None:
            what += f", class {r['minority']} at a tenth"
        lines.append(
            f"| {what} | {r['role']} | {r['n']} | {r['true_k']} | {r['chosen']} | {r['acc_chosen']:.3f} | "
            f"{r['acc_true']:.3f} | {r.get('decs_chosen', '-')} | {r.get('decs_true', '-')} | {r['best']} | "
            f"{r['agreement']} | {r['raw']} | {r['seconds']:.0f} |"
        )
    for role in ("tuned", "test", None):
        part = [r for r in rows if role is None or r["role"] == role]
        if not part:
            continue
        summary = []
        for rule in ("chosen", "best", "agreement", "raw"):
            exact = sum(r[rule] == r["true_k"] for r in part)
            near = sum(abs(r[rule] - r["true_k"]) <= 1 for r in part)
            summary.append(f"{rule}: {exact} exact, {near} within ±1")
        lines.append(f"\n{role or 'all'} ({len(part)} cases): " + "; ".join(summary))
    return "\n".join(lines)


def add_decs(path: Path, rows: list[dict], loaded: dict) -> None:
    """Fill in the DECS columns of recorded cases of :data:`DECS_DATASETS`, rewriting the file
    after each case."""
    import json

    from deepstab.io import atomic_path

    for row in rows:
        if row["dataset"] not in DECS_DATASETS or "decs_chosen" in row:
            continue
        source = (row["dataset"], row["ae_seed"])
        if source not in loaded:
            loaded[source] = embeddings(*source)
        _, y, x, weights = loaded[source]
        index = subset(y, row)
        row.update(decs_pair(weights, x[index], y[index], row["chosen"], row["true_k"]))
        with atomic_path(path) as partial:
            partial.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print({k: row[k] for k in ("dataset", "classes", "chosen", "true_k", "decs_chosen", "decs_true")}, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="docs/data/choose_k.jsonl")
    parser.add_argument("--k-range", default="2:30")
    parser.add_argument("--roles", nargs="+", default=["tuned", "test"])
    parser.add_argument(
        "--add-decs", action="store_true", help="add the DECS columns to recorded cases that lack them (no new cases)"
    )
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    rows = series(ROOT / args.results, table, args.table_only)
    if rows is None:
        return
    from deepstab.analysis.k_choice import parse_k_range

    k_range = parse_k_range(args.k_range)
    loaded: dict = {}
    if args.add_decs:
        add_decs(ROOT / args.results, rows, loaded)
        print(table(rows))
        return
    for case in cases():
        key = {k: case[k] for k in ("dataset", "ae_seed", "classes", "minority")}
        if case["role"] not in args.roles or recorded(rows, **key):
            continue
        source = (case["dataset"], case["ae_seed"])
        if source not in loaded:
            loaded[source] = embeddings(*source)
        if loaded[source] is None:
            print(f"skipped {key}: no autoencoder of {source} in {MODELS} yet", flush=True)
            continue
        row = measure(case, *loaded[source], k_range)
        append_result(ROOT / args.results, row)
        rows.append(row)
        print({k: v for k, v in row.items() if k != "choice"}, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
