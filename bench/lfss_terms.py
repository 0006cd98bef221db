"""What each LFSS loss term does to the online network, epoch by epoch, from the series' snapshots.

GitHub issue "LFSS beats BYOL on CIFAR-10 at a scale where BYOL learns" asks, if LFSS does not
beat BYOL, for the losses' magnitudes and gradients over training. ``bench/lfss_series.py``
keeps a copy of each run's checkpoint at every curve point (``<models-dir>/snapshots/<run>/e<epoch>``).
For each snapshot this script rebuilds the run's model from the checkpoint's own settings,
restores it, and on the same ``--batches`` batches of ``--batch-size`` images (drawn once, from
``--seed``) computes what the next training step would compute (:meth:`LFSSModel.loss_terms`:
two views from the run's own augmentation generator, every network in training mode):

- the terms L_S (Eq. 9), L_I (Eq. 4) and L_C (Eq. 8), and the share of the batch that L_C keeps
  (δ drops the least stable samples);
- the gradient of L_S and of λ·L_I and λ·L_C (as Eq. 10 weights them) with respect to the
  online network's weights (the predictor, which only L_S reaches, is left out), before
  weight decay: their norms, and the cosine of each stability term's gradient with L_S's and
  of their sum with L_S's (negative: the stability terms pull against the self-distillation);
- where the snapshot holds pseudo-labels (``lfss`` after η), what δ's cut does, with the labels
  (observation only): the pseudo-labels' accuracy over all the images, and over those L_C keeps
  and those it drops (the δ least stable), each under the Hungarian mapping of all the images
  (the paper's Observation 1: the least stable samples are the wrongly clustered ones); and the
  same for the rule of the authors' code, which compares the target with an exact copy of
  itself (``cos`` of two normalised copies of each embedding, float32 on this CPU; the share
  below the δ-quantile, by rounding alone, is what it drops).

The snapshot is only read: the model is a copy, and nothing is written but the results file.
Rows are keyed by (run, epoch, batches, batch size, seed); those already there are skipped.

    DEEPSTAB_DATA=../shared/data OMP_NUM_THREADS=1 python bench/lfss_terms.py \\
        models/lfss-series/snapshots/lfss-lfss-w0.125-e200-eta40-s0
    python bench/lfss_terms.py --table-only
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

import numpy as np
import torch
from lfss_series import series_data
from results import append_result, read_results, recorded

from deepstab.analysis.measures import correct_under_mapping
from deepstab.checkpoint import METADATA, Checkpoint
from deepstab.datasets.store import to_unit_float
from deepstab.methods.lfss import lfss_optimizer
from deepstab.runs.common import choose_n_clusters
from deepstab.runs.lfss import LFSSRun, build_model


def flat_gradient(term: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """The gradient of ``term`` with respect to ``weights`` as one vector (zeros where it does
    not reach, and for a term that is off)."""
    if not term.requires_grad:
        return torch.zeros(sum(w.numel() for w in weights))
    grads = torch.autograd.grad(term, weights, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(w) if g is None else g).reshape(-1) for w, g in zip(weights, grads)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else None


def measure(snapshot: Path, x: np.ndarray, y: np.ndarray, batches: int, batch_size: int, seed: int) -> dict:
    """The terms and their gradients at ``snapshot`` (a checkpoint folder), averaged over the
    batches (a cosine is ``None`` where a term is off)."""
    settings = json.loads((snapshot / METADATA).read_text())["settings"]
    run = LFSSRun(**settings)
    model = build_model(run, x, choose_n_clusters(run, y, len(x)))
    model.compile(optimizer=lfss_optimizer(run.lr, -(-len(x) // run.batch_size), run.epochs))
    Checkpoint(snapshot, run.training_settings()).restore(model)
    weights = [w.value for w in model.online.trainable_weights]
    rows = np.random.default_rng(seed).choice(len(x), batches * batch_size, replace=False).reshape(batches, -1)
    sums: dict[str, list[float]] = {}
    for index in rows:
        index = np.sort(index)  # read a memory-mapped array in order
        images = torch.as_tensor(to_unit_float(np.asarray(x[index])))  # as IndexedImages reads a batch
        l_s, l_i, l_c = model.loss_terms(images, torch.as_tensor(index))
        g_s, g_i, g_c = (flat_gradient(t, weights) for t in (l_s, model.lam * l_i, model.lam * l_c))
        values = {
            "l_s": float(l_s),
            "l_i": float(l_i),
            "l_c": float(l_c),
            "kept": float(model.keep[index].float().mean()) if model.cluster_active else None,
            "grad_s": float(g_s.norm()),
            "grad_i": float(g_i.norm()),
            "grad_c": float(g_c.norm()),
            "cos_s_i": cosine(g_s, g_i),
            "cos_s_c": cosine(g_s, g_c),
            "cos_s_stability": cosine(g_s, g_i + g_c),
        }
        for name, value in values.items():
            sums.setdefault(name, []).append(value)
    terms = {k: None if None in v else float(np.mean(v)) for k, v in sums.items()}
    return terms | pseudo_label_accuracy(model, x, y)


def authors_keep(z: np.ndarray, delta: float) -> np.ndarray:
    """The keep mask of the authors' ``get_pseudo_labels``: the stability of each embedding
    with an exact copy of itself, the samples strictly below its ``int(δN)``-th smallest value
    dropped."""
    import torch.nn.functional as F

    if int(delta * len(z)) == 0:
        return np.ones(len(z), bool)
    z = torch.as_tensor(z, dtype=torch.float32)
    s = F.cosine_similarity(F.normalize(z, dim=-1), F.normalize(z.clone(), dim=-1), dim=1)
    threshold, _ = torch.kthvalue(s, int(delta * len(s)))
    return (s >= threshold).numpy()


def pseudo_label_accuracy(model, x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """The accuracy of the model's pseudo-labels over all the images, and over those kept and
    dropped by the run's rule and by the authors' (``None`` without pseudo-labels)."""
    names = ("pl_acc", "pl_acc_kept", "pl_acc_dropped", "authors_dropped", "authors_acc_kept", "authors_acc_dropped")
    if not model.cluster_active:
        return dict.fromkeys(names)
    keep = model.keep.cpu().numpy()
    correct = correct_under_mapping(y, model.pseudo_labels.cpu().numpy())
    authors = authors_keep(model.embed(x), model.delta)
    values = (
        correct.mean(),
        correct[keep].mean(),
        correct[~keep].mean(),
        1 - authors.mean(),
        correct[authors].mean(),
        correct[~authors].mean() if (~authors).any() else None,
    )
    return {name: None if v is None else float(v) for name, v in zip(names, values)}


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| run | epoch | L_S | L_I | L_C | L_C keeps | ‖∇L_S‖ | ‖∇λL_I‖ | ‖∇λL_C‖ | cos(∇L_S, ∇λL_I) "
        "| cos(∇L_S, ∇λL_C) | cos(∇L_S, ∇λ(L_I+L_C)) | pseudo-label ACC: all / kept / dropped "
        "| authors' rule: share dropped, ACC kept / dropped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["run"], r["epoch"])):
        cells = [r["l_s"], r["l_i"], r["l_c"], r["kept"], r["grad_s"], r["grad_i"], r["grad_c"]]
        cosines = [r["cos_s_i"], r["cos_s_c"], r["cos_s_stability"]]
        accuracy = [r.get(k) for k in ("pl_acc", "pl_acc_kept", "pl_acc_dropped")]
        authors = [r.get(k) for k in ("authors_acc_kept", "authors_acc_dropped")]
        lines.append(
            f"| {r['run']} | {r['epoch']} | {' | '.join(fmt(c) for c in cells)} | "
            f"{' | '.join(fmt(c, 2) for c in cosines)} | {' / '.join(fmt(a) for a in accuracy)} "
            f"| {fmt(r.get('authors_dropped'))}, {' / '.join(fmt(a) for a in authors)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshots", nargs="*", help="a run's snapshot folder (its e<epoch> folders are measured)")
    parser.add_argument("--limit", type=int, default=None, help="the series' --limit, where the run had one")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="draws the measured batches")
    parser.add_argument("--results", default="docs/data/lfss_terms.jsonl")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only and args.snapshots:
        x, y = series_data(args.limit)
        for folder in map(Path, args.snapshots):
            for snapshot in sorted(folder.glob("e[0-9][0-9][0-9]")):
                key = {
                    "run": folder.name,
                    "epoch": int(snapshot.name[1:]),
                    "batches": args.batches,
                    "batch_size": args.batch_size,
                    "seed": args.seed,
                }
                if recorded(read_results(args.results), **key):
                    continue
                row = {**key, **measure(snapshot, x, y, args.batches, args.batch_size, args.seed)}
                print(json.dumps(row), flush=True)
                append_result(args.results, row)
    print(table(read_results(args.results)))


if __name__ == "__main__":
    main()
