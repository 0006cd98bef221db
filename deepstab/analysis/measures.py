"""Per-sample stability across epochs, and the LFSS paper's three observations about it.

The stability of sample ``x`` at epoch ``t`` is ``cos(f^t(x), f^{t-1}(x))``: the cosine
between its un-augmented embeddings at consecutive tracked epochs (LFSS, ICML 2025, §3).
:class:`~deepstab.analysis.tracker.SampleStabilityTracker` records it while a model trains;
the functions here (pure: arrays in, arrays and dicts out) turn the record into the paper's
analyses:

- :func:`accuracy_by_stability`: Observation 1 (Figure 1), accuracy per stability bin;
- :func:`recurrence`: Observation 2 (Tables 1 and 7), how often the same samples are among
  the least stable, against random selection;
- :func:`extreme_samples`: Observation 3 (Figure 2), the atypical and typical samples.

Example:

>>> import numpy as np
>>> from deepstab.analysis.measures import cosine_stability
>>> a = np.array([[1.0, 0.0], [0.0, 2.0]])
>>> cosine_stability(a, np.array([[2.0, 0.0], [2.0, 0.0]])).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from deepstab.errors import DeepstabError


def cosine_stability(current: np.ndarray, previous: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise cosine similarity of two (N, d) embedding arrays: each sample's stability."""
    current = np.asarray(current, dtype=np.float64).reshape(len(current), -1)
    previous = np.asarray(previous, dtype=np.float64).reshape(len(previous), -1)
    if current.shape != previous.shape:
        raise DeepstabError(f"Embeddings differ in shape between epochs: {current.shape} vs {previous.shape}.")
    dot = np.einsum("nd,nd->n", current, previous)
    norms = np.linalg.norm(current, axis=1) * np.linalg.norm(previous, axis=1)
    return dot / np.maximum(norms, eps)


def _as_matrix(stability: np.ndarray) -> np.ndarray:
    s = np.asarray(stability, dtype=np.float32)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.shape[1] < 2:
        raise DeepstabError(f"stability must be an array of shape (epochs, N) with N >= 2, got {s.shape}.")
    return s


def stability_bins(values: np.ndarray, bins: int = 10) -> np.ndarray:
    """Bin index (0 = least stable) of each sample, in ``bins`` equal-count bins by rank."""
    if int(bins) != bins or bins < 2:
        raise DeepstabError(f"bins must be an integer of at least 2 (10 by default; 5 and 20 are common), got {bins}.")
    values = np.asarray(values).reshape(-1)
    if len(values) < bins:
        raise DeepstabError(f"{len(values)} samples cannot fill {bins} stability bins; use fewer bins.")
    ranks = np.empty(len(values), np.int64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks * bins // len(values)


def accuracy_by_stability(
    stability: np.ndarray,
    clusters: np.ndarray | None = None,
    y: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    bins: int = 10,
) -> dict:
    """Observation 1: split samples into ``bins`` equal-count bins by stability (a 1-D
    array, or the last row of a (epochs, N) one) and report per bin the share predicted
    correctly under the Hungarian mapping of ``clusters`` to ``y`` over all samples, or,
    without labels, the mean ``confidence``.

    Returns ``{"bins": [{"bin", "count", "stability_min", "stability_max", "accuracy"
    or "confidence"}, ...], "measure": "accuracy" | "confidence"}``.
    """
    s = np.asarray(stability, dtype=np.float32)
    s = s[-1] if s.ndim == 2 else s.reshape(-1)
    index = stability_bins(s, bins)
    if y is not None and clusters is not None:
        measure, per_sample = "accuracy", correct_under_mapping(y, clusters)
    elif confidence is not None:
        measure, per_sample = "confidence", np.asarray(confidence, dtype=np.float64).reshape(-1)
    else:
        raise DeepstabError("accuracy_by_stability needs labels and cluster predictions, or a confidence per sample.")
    if len(per_sample) != len(s):
        raise DeepstabError(f"{len(per_sample)} predictions for {len(s)} stability values.")
    rows = []
    for b in range(bins):
        members = index == b
        rows.append(
            {
                "bin": b,
                "count": int(members.sum()),
                "stability_min": float(s[members].min()),
                "stability_max": float(s[members].max()),
                measure: float(per_sample[members].mean()),
            }
        )
    return {"measure": measure, "bins": rows}


def correct_under_mapping(y: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Boolean per sample: is its cluster mapped to its class by the Hungarian matching
    that defines ACC (so the mean of the result is :func:`deepstab.metrics.cluster_accuracy`)?"""
    from scipy.optimize import linear_sum_assignment

    y, clusters = np.asarray(y).reshape(-1), np.asarray(clusters).reshape(-1)
    classes, t = np.unique(y, return_inverse=True)
    groups, p = np.unique(clusters, return_inverse=True)
    table = np.zeros((len(groups), len(classes)), np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.full(len(groups), -1)
    mapping[rows] = cols
    return mapping[p] == t


def low_stability_mask(stability: np.ndarray, share: float = 0.1, most_stable: bool = False) -> np.ndarray:
    """(epochs, N) booleans: is the sample among the ``share`` least (or most) stable at that epoch?"""
    s = _as_matrix(stability)
    if not 0.0 < share < 1.0:
        raise DeepstabError(f"share must lie strictly between 0 and 1, got {share}.")
    k = max(int(round(share * s.shape[1])), 1)
    order = np.argsort(-s if most_stable else s, axis=1, kind="stable")[:, :k]
    mask = np.zeros(s.shape, bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def spread_rows(n_rows: int, n: int | None) -> np.ndarray:
    """``n`` row indices spread evenly over ``n_rows`` (the last always included); all if ``n`` is None."""
    if n is None or n >= n_rows:
        return np.arange(n_rows)
    if n < 1:
        raise DeepstabError(f"The number of epochs for the recurrence must be positive, got {n}.")
    return np.unique(np.round(np.linspace(n_rows - 1, 0, n)[::-1]).astype(int))


def recurrence(stability: np.ndarray, share: float = 0.1, rows: Sequence[int] | None = None) -> dict:
    """Observation 2 (Table 1): per count c = 0..T, how many samples are among the ``share``
    least stable at exactly c of T tracked epochs (the ``rows`` of ``stability``, all by
    default), next to what picking the same number of samples at random each epoch would
    give (Binomial(T, share) times N), with a chi-square goodness-of-fit p-value (counts
    whose expectation is below 5 are pooled with their neighbour)."""
    s = _as_matrix(stability)
    mask = low_stability_mask(s if rows is None else s[np.asarray(rows)], share)
    n_epochs, n = mask.shape
    counts = mask.sum(axis=0)
    observed = np.bincount(counts, minlength=n_epochs + 1)
    p = mask.sum() / mask.size  # the realised share (k / N per epoch)
    expected = n * stats.binom.pmf(np.arange(n_epochs + 1), n_epochs, p)
    return {
        "share": share,
        "tracked_epochs": n_epochs,
        "rows": [{"times": c, "observed": int(observed[c]), "random": float(expected[c])} for c in range(n_epochs + 1)],
        "p_value": _chisquare_p(observed, expected),
    }


def _chisquare_p(observed: np.ndarray, expected: np.ndarray) -> float | None:
    """Chi-square goodness-of-fit p-value after pooling cells whose expectation is below 5."""
    pooled_o, pooled_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            pooled_o.append(acc_o)
            pooled_e.append(acc_e)
            acc_o = acc_e = 0.0
    if pooled_e:
        pooled_o[-1] += acc_o
        pooled_e[-1] += acc_e
    if len(pooled_e) < 2:
        return None
    o, e = np.array(pooled_o), np.array(pooled_e)
    return float(stats.chisquare(o, e * o.sum() / e.sum()).pvalue)


def extreme_samples(stability: np.ndarray, share: float = 0.1, n: int = 64) -> dict:
    """Observation 3: the atypical samples (among the ``share`` least stable at most tracked
    epochs) and the typical ones (among the most stable at most epochs).

    Each list is ordered by how many tracked epochs the sample spent in that extreme, then
    by mean stability, and cut at ``n``; ``*_majority`` counts the samples that were in the
    extreme at more than half the tracked epochs.
    """
    s = _as_matrix(stability)
    mean = s.astype(np.float64).mean(axis=0)
    result = {}
    for name, most_stable in (("atypical", False), ("typical", True)):
        times = low_stability_mask(s, share, most_stable).sum(axis=0)
        tie = -mean if most_stable else mean
        order = np.lexsort((tie, -times))
        result[name] = [int(i) for i in order[:n]]
        result[f"{name}_times"] = [int(times[i]) for i in order[:n]]
        result[f"{name}_majority"] = int((times * 2 > s.shape[0]).sum())
    return result


def analyse(
    stability: np.ndarray,
    epochs: Sequence[int],
    y: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    bins: int = 10,
    share: float = 0.1,
    n_extreme: int = 32,
    recurrence_epochs: int | None = None,
) -> dict:
    """The three analyses of a stability record, as one JSON-ready dict. The recurrence
    counts over ``recurrence_epochs`` tracked epochs spread evenly (all by default)."""
    s = _as_matrix(stability)
    summary: dict = {"n_samples": int(s.shape[1]), "tracked_epochs": [int(e) for e in epochs]}
    if (y is not None and clusters is not None) or confidence is not None:
        summary["accuracy_by_stability"] = accuracy_by_stability(s, clusters, y, confidence, bins)
    rows = spread_rows(s.shape[0], recurrence_epochs)
    summary["recurrence"] = recurrence(s, share, rows)
    summary["recurrence"]["epochs"] = [int(epochs[i]) for i in rows]
    summary["extreme_samples"] = extreme_samples(s, share, n_extreme)
    return summary
