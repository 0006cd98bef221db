"""What every centroid-based method (DECS, DEC, IDEC, DCN) shares: an autoencoder whose encoder
gives the embeddings ``z``, a Student-t clustering layer holding K centroids, k-means
initialisation, the two training stages, and the prediction calls every deepstab model answers.

Invariants of :class:`CentroidClusterer`:

- ``model(x)`` returns the Student-t soft assignments ``q`` (DEC Eq. 1, DECS Eq. 5), rows
  summing to 1; :meth:`predict_labels` returns the nearest centroid, which is ``argmax_j q_ij``.
- :meth:`fit` initialises the centroids with k-means on the embeddings the first time (when
  ``centroids_ready`` is 0) and never again; BRB's re-clustering goes through
  :meth:`set_centroids`.
- Both stages are functions of the images, the initial weights and ``seed``: the batch order
  and the augmentations of an epoch, and the k-means start, come from the model's own streams
  (:mod:`deepstab.seeding`), so callbacks that only watch (label checks, the stability
  tracker), labels and a resume from a checkpoint never change what is learned.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import ops

from deepstab import allocator, checks, seeding
from deepstab.checkpoint import Checkpoint
from deepstab.datasets.store import to_unit_float
from deepstab.datasets.streaming import IndexedImages, indexed_batches
from deepstab.errors import DeepstabError
from deepstab.methods.losses import squared_distances
from deepstab.nn.autoencoders import AugmentedAutoencoder
from deepstab.nn.kmeans import kmeans
from deepstab.nn.layers import ClusteringLayer


class CentroidClusterer(keras.Model):
    """An autoencoder and K Student-t centroids in its embedding space.

    Subclasses build the autoencoder, pass it here, and define ``train_step`` (stage 2).

    Args:
        n_clusters: K, at least 2.
        autoencoder: the (untrained) autoencoder whose encoder embeds the images.
        alpha: Student-t degrees of freedom α of the soft assignments.
        seed: the seed of the training's draws (batch orders, augmentations, k-means, BRB);
            ``None`` draws one from NumPy's global generator (see :func:`~deepstab.seeding.model_seed`).
        k_choice: how K was chosen without labels, when it was
            (:meth:`deepstab.analysis.k_choice.KChoice.to_config`); kept for the cluster report.
    """

    # Whether a stage-2 epoch leaves out the last, smaller batch.
    drop_last_batch = False

    def __init__(
        self,
        n_clusters: int,
        autoencoder: AugmentedAutoencoder,
        alpha: float = 1.0,
        seed: int | None = None,
        k_choice: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.k_choice = k_choice
        self.n_clusters = checks.n_clusters("n_clusters", n_clusters)
        self.seed = seeding.model_seed(seed)
        self.autoencoder = autoencoder
        self.clustering = ClusteringLayer(self.n_clusters, alpha, name="clustering")
        self.clustering.build((None, self.autoencoder.embedding_dim))
        self.centroids_ready = self.add_weight(
            name="centroids_ready", shape=(), initializer="zeros", trainable=False, dtype="float32"
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._embedding_cache: tuple | None = None

    @property
    def encoder(self) -> keras.Model:
        return self.autoencoder.encoder

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.autoencoder.image_shape

    def call(self, x, training=False):
        """Soft assignments ``q`` (Student-t; DEC Eq. 1, DECS Eq. 5) of the images ``x``."""
        return self.clustering(self.encoder(x, training=training))

    # ------------------------------------------------------------------ embeddings

    def embed(self, x, batch_size: int = 1024) -> np.ndarray:
        """Embeddings ``z`` of the images ``x`` (float in [0, 1], or uint8) as a float32 NumPy array.

        Inside :meth:`reusing_embeddings`, the last result is given again for the same array
        while the encoder's weights are unchanged (same optimizer step and weight checksums):
        the epoch-end label check and DEC's target refresh at the next epoch start both embed
        the training set with the same weights."""
        if getattr(x, "dtype", None) == np.uint8:
            x = to_unit_float(np.asarray(x))
        cache = self._embedding_cache
        if cache is None:
            return self._predict_embeddings(x, batch_size)
        key = self._encoder_state()
        if cache and cache[0] is x and np.array_equal(cache[1], key):
            return cache[2]
        z = self._predict_embeddings(x, batch_size)
        self._embedding_cache = (x, key, z)
        return z

    def _predict_embeddings(self, x, batch_size: int) -> np.ndarray:
        """The encoder's embeddings of ``x`` as float32, whatever precision it computes in."""
        return np.asarray(self.encoder.predict(x, batch_size=batch_size, verbose=0), np.float32)

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

    # ------------------------------------------------------------------ prediction

    def predict_clusters(self, x, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Hard labels (the nearest centroid, ``argmax_j q_ij``) and their confidence
        ``max_j q_ij`` for the images ``x``, from one pass of the encoder."""
        z = ops.convert_to_tensor(self.embed(x, batch_size))
        labels = ops.argmin(squared_distances(z, self.clustering.centroids), axis=1)
        confidence = ops.max(self.clustering(z), axis=1)
        return ops.convert_to_numpy(labels), ops.convert_to_numpy(confidence)

    def predict_labels(self, x, batch_size: int = 1024) -> np.ndarray:
        """Hard labels: the nearest centroid of each embedding (``argmax_j q_ij``)."""
        z = ops.convert_to_tensor(self.embed(x, batch_size))
        return ops.convert_to_numpy(ops.argmin(squared_distances(z, self.clustering.centroids), axis=1))

    # ------------------------------------------------------------------- centroids

    def initialize_centroids(self, x, n_init: int = 20, seed: int | None = None) -> np.ndarray:
        """Set the centroids to k-means centres of the embeddings of ``x``; return its labels.
        k-means is seeded by ``seed``, by default the model's k-means stream."""
        seed = seeding.derive(self.seed, "kmeans") if seed is None else seed
        centres, labels = kmeans(self.embed(x), self.n_clusters, n_init=n_init, seed=seed)
        self.set_centroids(centres)
        return labels

    def set_centroids(self, centres: np.ndarray) -> None:
        """Replace the centroids (k-means initialisation, or BRB's re-clustering)."""
        self.clustering.centroids.assign(np.asarray(centres, dtype=np.float32))
        self.centroids_ready.assign(1.0)

    @property
    def centroids_set(self) -> bool:
        """Whether the centroids were initialised (k-means or :meth:`set_centroids`)."""
        return float(ops.convert_to_numpy(self.centroids_ready)) != 0.0

    @property
    def centroid_variables(self) -> list:
        """The centroid variables the optimizer updates (BRB zeroes their moments)."""
        return list(self.clustering.trainable_weights)

    def on_recluster(self) -> None:
        """Called by BRB after it replaced the centroids."""

    # ---------------------------------------------------------------------- stages

    def pretrain(
        self,
        x: np.ndarray,
        epochs: int,
        batch_size: int = 256,
        optimizer=None,
        checkpoint: Checkpoint | None = None,
        callbacks=None,
        **fit_kwargs,
    ):
        """Stage 1: fit what the autoencoder derives from ``x`` (``autoencoder.prepare``), then
        train it with MSE on augmented views (Adam, lr 1e-3 unless ``optimizer`` is given), in
        batches of ``batch_size`` (the last smaller one kept) in the order of the model's
        pretraining stream. With ``checkpoint``, training resumes from it and saves to it.
        Returns the ``History``."""
        allocator.keep_large_blocks()
        self.autoencoder.prepare(x)
        self.autoencoder.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3))
        seed, who = seeding.derive(self.seed, "pretraining"), f"{type(self).__name__}.pretrain"
        data = indexed_batches(x, self.image_shape, 1, batch_size, True, seed, who, drop_last=False)
        callbacks, initial_epoch = [seeding.EpochSeeds(self.seed, "pretraining"), *(callbacks or [])], 0
        if checkpoint is not None:
            initial_epoch = checkpoint.restore(self.autoencoder)
            callbacks.insert(1, checkpoint)
        return self._fit_in_order(self.autoencoder, data, epochs, callbacks, initial_epoch, **fit_kwargs)

    def fit(
        self, x=None, y=None, batch_size: int = 256, epochs: int = 1, callbacks=None, shuffle: bool = True, **kwargs
    ):
        """Stage 2 through ``keras.Model.fit`` on the images ``x`` (an array, or an
        :class:`~deepstab.datasets.streaming.IndexedImages`) in batches of ``batch_size``, in
        the order of the model's clustering stream. k-means on the embeddings of ``x`` first
        initialises the centroids when they were never set; the method's own callbacks
        (:meth:`training_callbacks`) run after the caller's. Labels ``y`` are refused: clustering
        learns from the images alone (watch it with :class:`~deepstab.analysis.progress.LabelMetrics`)."""
        if y is not None:
            raise DeepstabError(
                f"{type(self).__name__}.fit learns without labels: pass the images alone, and give labels to a "
                "callback that only watches, such as deepstab.LabelMetrics(x, y)."
            )
        allocator.keep_large_blocks()
        who = f"{type(self).__name__}.fit"
        seed = seeding.derive(self.seed, "clustering")
        data = indexed_batches(
            x, self.image_shape, self.n_clusters, batch_size, shuffle, seed, who, drop_last=self.drop_last_batch
        )
        if not self.centroids_set:
            if not isinstance(getattr(data, "x", None), np.ndarray):
                raise DeepstabError(
                    f"{who} needs initialised centroids: call model.initialize_centroids(x) first, or pass x as a "
                    "NumPy array."
                )
            self.initialize_centroids(data.x)
        callbacks = [seeding.EpochSeeds(self.seed, "clustering"), *(callbacks or [])]
        callbacks += self.training_callbacks(data, callbacks)
        # Checkpoints last: they save what the method's own callbacks left at the epoch's end.
        callbacks.sort(key=lambda c: isinstance(c, Checkpoint))
        with self.reusing_embeddings():
            return self._fit_in_order(super(), data, epochs, callbacks, kwargs.pop("initial_epoch", 0), **kwargs)

    @staticmethod
    def _fit_in_order(model, data, epochs: int, callbacks: list, initial_epoch: int, **kwargs):
        """``model.fit`` on ``data``, which orders its batches itself by (seed, epoch); Keras's own
        shuffle would draw from torch's global generator, which watchers draw from too."""
        if isinstance(data, IndexedImages):
            data.epoch = int(initial_epoch)  # the order of a resumed epoch
        return model.fit(data, epochs=epochs, callbacks=callbacks, initial_epoch=initial_epoch, shuffle=False, **kwargs)

    def training_callbacks(self, data: IndexedImages, callbacks: list) -> list:
        """Callbacks the method adds to ``fit`` on ``data`` after the caller's ``callbacks`` (none here)."""
        return []

    @property
    def metrics(self):
        return [self.loss_tracker]

    def get_config(self):
        ae = self.autoencoder
        return {
            **super().get_config(),
            "n_clusters": self.n_clusters,
            "input_shape": ae.image_shape,
            "embedding_dim": ae.embedding_dim,
            "shift": ae.shift,
            "rotation": ae.rotation,
            "alpha": self.clustering.alpha,
            "seed": self.seed,
            "k_choice": self.k_choice,
        }
