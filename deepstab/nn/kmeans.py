"""k-means on embeddings, used to initialise centroids."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from deepstab.errors import DeepstabError


def kmeans(z: np.ndarray, n_clusters: int, n_init: int = 20, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``z`` (N, d) with k-means (``n_init`` restarts); return ``(centres, labels)``."""
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
    model = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(z)
    return model.cluster_centers_.astype(np.float32), model.labels_.astype(np.int64)
