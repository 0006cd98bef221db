"""k-means on embeddings: Euclidean (scikit-learn's), to initialise the centroid methods, and
cosine (the LFSS authors' ``torch_clustering``), for LFSS's pseudo-labels and evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.cluster import KMeans

from deepstab.errors import DeepstabError


def _checked(z, n_clusters: int) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if n_clusters > len(z):
        raise DeepstabError(
            f"n_clusters={n_clusters} is larger than the number of samples ({len(z)}). "
            f"Use at most {len(z)} clusters or give more data."
        )
    if not np.all(np.isfinite(z)):
        raise DeepstabError(
            "The embeddings hold NaN or infinite values, so k-means cannot run: the network "
            "diverged. Lower the learning rate or check the input data."
        )
    return z


def kmeans(z: np.ndarray, n_clusters: int, n_init: int = 20, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``z`` (N, d) with k-means (``n_init`` restarts); return ``(centres, labels)``."""
    z = _checked(z, n_clusters)
    model = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(z)
    return model.cluster_centers_.astype(np.float32), model.labels_.astype(np.int64)


def cosine_kmeans(
    z, n_clusters: int, n_init: int = 10, seed: int = 0, max_iter: int = 300, tol: float = 1e-4
) -> np.ndarray:
    """k-means with the cosine distance ``1 - cos(z_i, c_k)``, as the LFSS authors' code
    (``torch_clustering.PyTorchKMeans(metric="cosine")``): k-means++ seeding on that distance
    (``2 + ln K`` candidates per centre), centres the plain means of their rows (raw, as given),
    restart ``r`` seeded ``seed + r``, each stopped when its labels stop changing or its centres
    move less than ``tol`` times the mean feature variance; returns the labels of the state of
    least inertia seen after any update of any restart.

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 0.1], [2.0, 0.0], [0.0, 1.0], [0.1, 3.0]])
    >>> cosine_kmeans(z, 2).tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    True
    """
    x = torch.as_tensor(_checked(z, n_clusters), dtype=torch.float64)
    unit = torch.nn.functional.normalize(x, dim=1)

    def assign(centres):
        distances = 1.0 - unit @ torch.nn.functional.normalize(centres, dim=1).T
        inertia, labels = distances.min(dim=1)
        return labels, float(inertia.sum())

    threshold = tol * float(x.var(dim=0).mean())
    best_inertia, best_labels = float("inf"), None
    for restart in range(n_init):
        centres = _plus_plus(x, unit, n_clusters, torch.Generator().manual_seed(seed + restart))
        labels, _ = assign(centres)
        for _ in range(max_iter):
            counts = torch.full((n_clusters,), 1e-6, dtype=x.dtype)
            present, sizes = torch.unique(labels, return_counts=True)
            counts[present] = sizes.to(x.dtype)
            moved = torch.zeros_like(centres).index_add_(0, labels, x) / counts[:, None]
            new_labels, inertia = assign(moved)
            if inertia < best_inertia:
                best_inertia, best_labels = inertia, new_labels
            shift = float((1.0 - torch.nn.functional.cosine_similarity(centres, moved, dim=1, eps=1e-12)).sum())
            if torch.equal(new_labels, labels) or shift <= threshold:
                break
            labels, centres = new_labels, moved
    return best_labels.numpy().astype(np.int64)


def _plus_plus(x, unit, k: int, generator) -> torch.Tensor:
    """k-means++ seeding with the cosine distance: each centre the best of ``2 + ln k`` candidates
    drawn in proportion to their distance to the nearest centre so far (inverse-CDF draws)."""
    n, trials = len(x), 2 + int(math.log(k))
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = 1.0 - unit @ unit[chosen[0]]
    potential = nearest.sum()
    for _ in range(1, k):
        draws = torch.rand(trials, generator=generator, dtype=x.dtype) * potential
        candidates = torch.searchsorted(torch.cumsum(nearest, 0), draws).clamp(max=n - 1)
        options = torch.minimum(nearest[None], 1.0 - unit[candidates] @ unit.T)  # (trials, N)
        best = int(torch.argmin(options.sum(dim=1)))
        chosen.append(int(candidates[best]))
        nearest, potential = options[best], options[best].sum()
    return x[chosen].clone()
