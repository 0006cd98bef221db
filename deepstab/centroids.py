"""What the centroid-based models (DECS, DEC, IDEC, DCN) share: an autoencoder, a Student-t
clustering layer holding K centroids, k-means initialisation, and the hooks BRB uses."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import ops

from deepstab.kmeans import kmeans


class CentroidMixin:
    """Mixed into a ``keras.Model`` that has ``autoencoder`` (with ``encoder`` and
    ``image_shape``), ``clustering`` (a :class:`~deepstab.layers.ClusteringLayer`),
    ``centroids_ready`` and ``n_clusters``."""

    @property
    def encoder(self) -> keras.Model:
        return self.autoencoder.encoder

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.autoencoder.image_shape

    def call(self, x, training=False):
        """Soft assignments ``q`` (Student-t; DEC Eq. 1, DECS Eq. 5) of the images ``x``."""
        return self.clustering(self.encoder(x, training=training))

    def embed(self, x, batch_size: int = 1024) -> np.ndarray:
        """Embeddings ``z`` of ``x`` as a NumPy array.

        Inside :meth:`reusing_embeddings`, the last result is given again for the same array
        while the encoder's weights are unchanged (same optimizer step and weight checksums):
        the epoch-end label check and DEC's target refresh at the next epoch start both embed
        the training set with the same weights."""
        cache = getattr(self, "_embedding_cache", None)
        if cache is None:
            return self.encoder.predict(x, batch_size=batch_size, verbose=0)
        key = self._encoder_state()
        if cache and cache[0] is x and np.array_equal(cache[1], key):
            return cache[2]
        z = self.encoder.predict(x, batch_size=batch_size, verbose=0)
        self._embedding_cache = (x, key, z)
        return z

    @contextlib.contextmanager
    def reusing_embeddings(self):
        """Let :meth:`embed` reuse its last result (see there) within the block."""
        self._embedding_cache = ()
        try:
            yield
        finally:
            self._embedding_cache = None

    def _encoder_state(self) -> np.ndarray:
        """The optimizer's step count and the sum and sum of squares of every encoder weight."""
        values = [w.value for w in self.encoder.weights]
        sums = ops.convert_to_numpy(ops.stack([ops.sum(v) for v in values] + [ops.sum(ops.square(v)) for v in values]))
        optimizer = getattr(self, "optimizer", None)
        step = int(ops.convert_to_numpy(optimizer.iterations)) if optimizer is not None and optimizer.built else -1
        return np.concatenate([[float(step)], sums.astype(np.float64)])

    def initialize_centroids(self, x, n_init: int = 20, seed: int | None = None) -> np.ndarray:
        """Set the centroids to k-means centres of the embeddings of ``x``; return its labels."""
        centres, labels = kmeans(self.embed(x), self.n_clusters, n_init=n_init, seed=seed)
        self.set_centroids(centres)
        return labels

    def set_centroids(self, centres: np.ndarray) -> None:
        """Replace the centroids (k-means initialisation, or BRB's re-clustering)."""
        self.clustering.centroids.assign(np.asarray(centres, dtype=np.float32))
        self.centroids_ready.assign(1.0)

    @property
    def centroid_variables(self) -> list:
        """The centroid variables the optimizer updates (BRB zeroes their moments)."""
        return list(self.clustering.trainable_weights)
