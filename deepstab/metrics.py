"""Clustering metrics as the papers report them: ACC with Hungarian matching, NMI, ARI; and cluster sizes.

Example:

>>> import numpy as np
>>> from deepstab.metrics import cluster_accuracy
>>> cluster_accuracy(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
1.0
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from deepstab.errors import DeepstabError


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise DeepstabError(f"Labels and predictions differ in length: {len(y_true)} vs {len(y_pred)}.")
    return y_true, y_pred


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unsupervised accuracy: the share of samples right under the best one-to-one
    mapping of clusters to classes (Hungarian algorithm on the contingency table)."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(y_true))


def cluster_sizes(y_pred: np.ndarray, n_clusters: int) -> dict[str, object]:
    """Counts per cluster and a summary: non-empty clusters, smallest and largest share."""
    counts = np.bincount(np.asarray(y_pred).reshape(-1), minlength=n_clusters)
    total = max(int(counts.sum()), 1)
    return {
        "counts": counts.tolist(),
        "n_nonempty": int((counts > 0).sum()),
        "min_share": float(counts.min() / total),
        "max_share": float(counts.max() / total),
    }


def evaluate(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """ACC, NMI (arithmetic normalisation) and ARI of a clustering against labels; samples
    labelled ``-1`` (unlabelled, as STL-10's extra split) are left out."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    labelled = y_true >= 0
    if not labelled.any():
        raise DeepstabError("No sample has a label (all are -1), so the clustering cannot be scored.")
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    return {
        "acc": cluster_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }
