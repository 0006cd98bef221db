"""DECS: deep embedding clustering driven by sample stability (IJCAI 2024).

Stage 1 pretrains a convolutional autoencoder on augmented images with MSE
(:class:`ConvAutoencoder`). Stage 2 (:class:`DECS`) initialises the centroids
with k-means on the embeddings and trains encoder and centroids with the
stability loss: Student-t soft assignments ``q`` (Eq. 5), Otsu's threshold
``t`` of the batch's ``q`` (no gradient), determinacy (Eq. 6), stability
(Eq. 7) and ``L_c = 1 - mean_i s_i`` (Eq. 8), plus optional terms.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from deepstab.autoencoder import AugmentedAutoencoder
from deepstab.callbacks import COLLAPSE_ACTIONS, CollapseGuard
from deepstab.centroids import CentroidMixin
from deepstab.errors import DeepstabError
from deepstab.layers import ClusteringLayer
from deepstab.losses import VARIANTS, decs_loss, size_prior
from deepstab.metrics import cluster_sizes
from deepstab.networks import DEFAULT_FILTERS, build_conv_autoencoder
from deepstab.thresholds import otsu_threshold
from deepstab.training import apply_gradients, images_of


@keras.saving.register_keras_serializable(package="deepstab")
class ConvAutoencoder(AugmentedAutoencoder):
    """The DECS convolutional autoencoder, pretrained on augmented images with MSE.

    Args:
        input_shape: image shape (H, W, C).
        embedding_dim: size of the embedding (DECS: 10).
        filters: the encoder's four convolution widths.
        shift: largest random shift, as a share of width and height (0 disables).
        rotation: largest random rotation in degrees (0 disables).

    Example:

    >>> import numpy as np
    >>> ae = ConvAutoencoder((8, 8, 1), filters=(4, 4, 4, 4))
    >>> ae.compile(optimizer="adam")
    >>> history = ae.fit(np.random.rand(32, 8, 8, 1).astype("float32"), epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss']
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        embedding_dim: int = 10,
        filters: tuple[int, ...] = DEFAULT_FILTERS,
        shift: float = 0.1,
        rotation: float = 10.0,
        **kwargs,
    ):
        filters = tuple(int(f) for f in filters)
        super().__init__(input_shape, embedding_dim, shift, rotation, lambda shape, dim: build_conv_autoencoder(shape, dim, filters), **kwargs)
        self.filters = filters

    def test_step(self, data):
        x = images_of(data)
        self.loss_tracker.update_state(ops.mean(ops.square(self(x) - x)))
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="deepstab")
class DECS(CentroidMixin, keras.Model):
    """DECS clustering model: encoder + Student-t centroids, trained with the stability loss.

    ``model.predict(x)`` returns soft assignments ``q``; :meth:`predict_labels`
    returns ``argmax_j q_ij``.

    Args:
        n_clusters: number of clusters K.
        input_shape: image shape (H, W, C).
        embedding_dim, filters, shift, rotation: see :class:`ConvAutoencoder`.
        alpha: Student-t degrees of freedom α (Eq. 5; paper 1.0, authors' code 0.5).
        variant: ``"paper"`` (Eqs. 6-8) or ``"reference"`` (the authors' released code).
        lam: λ of Eq. 7; ``None`` takes the variant's default (0.8 paper, 0.4 reference).
        recon_weight: weight of the reconstruction term ``L_r`` of Eq. 1 in stage 2
            (0 drops it, as the authors' code does).
        size_prior: weight of ``KL(mean q || uniform)``, an optional guard against
            collapse that is not part of DECS (0 disables).
        nbins: histogram bins for Otsu's threshold (authors' code: 1000).
        on_collapse: what :meth:`fit` does when a cluster empties or shrinks below
            ``collapse_share`` of an even share: ``"fallback"`` (restore the last
            healthy weights, go on with the size prior), ``"restore"`` (restore and
            stop), ``"stop"`` or ``"warn"`` (see :class:`deepstab.callbacks.CollapseGuard`).
        collapse_share: the shrinking threshold, relative to ``1 / K``.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> model = DECS(n_clusters=3, input_shape=(8, 8, 1), filters=(4, 4, 4, 4))
    >>> _ = model.pretrain(x, epochs=1, verbose=0)
    >>> model.compile(optimizer="adam")
    >>> _ = model.fit(x, epochs=1, batch_size=32, verbose=0)  # k-means initialisation first
    >>> model.predict_labels(x).shape
    (64,)
    """

    def __init__(
        self,
        n_clusters: int,
        input_shape: tuple[int, int, int],
        embedding_dim: int = 10,
        filters: tuple[int, ...] = DEFAULT_FILTERS,
        alpha: float = 1.0,
        variant: str = "paper",
        lam: float | None = None,
        recon_weight: float = 0.0,
        size_prior: float = 0.0,
        nbins: int = 1000,
        shift: float = 0.1,
        rotation: float = 10.0,
        on_collapse: str = "fallback",
        collapse_share: float = 0.25,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if on_collapse not in COLLAPSE_ACTIONS:
            raise DeepstabError(f"on_collapse must be one of {', '.join(COLLAPSE_ACTIONS)}, got {on_collapse!r}.")
        if not 0.0 <= collapse_share < 1.0:
            raise DeepstabError(f"collapse_share must lie in [0, 1), got {collapse_share!r}.")
        if variant not in VARIANTS:
            raise DeepstabError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}.")
        for name, value in (("recon_weight", recon_weight), ("size_prior", size_prior)):
            if value < 0:
                raise DeepstabError(f"{name} must be zero or positive, got {value!r}.")
        if int(n_clusters) < 2:
            raise DeepstabError(f"n_clusters must be at least 2, got {n_clusters!r}.")
        self.n_clusters = int(n_clusters)
        self.variant, self.lam = variant, None if lam is None else float(lam)
        self.recon_weight, self.size_prior_weight = float(recon_weight), float(size_prior)
        self.nbins = int(nbins)
        self.on_collapse, self.collapse_share = on_collapse, float(collapse_share)
        self.collapse_guard: CollapseGuard | None = None
        self.autoencoder = ConvAutoencoder(input_shape, embedding_dim, filters, shift, rotation)
        self.clustering = ClusteringLayer(self.n_clusters, alpha, name="clustering")
        self.clustering.build((None, self.autoencoder.embedding_dim))
        self.centroids_ready = self.add_weight(
            name="centroids_ready", shape=(), initializer="zeros", trainable=False, dtype="float32"
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.threshold_tracker = keras.metrics.Mean(name="threshold")
        self.built = True

    # ------------------------------------------------------------------ forward

    def predict_labels(self, x, batch_size: int = 1024) -> np.ndarray:
        """Hard cluster labels ``argmax_j q_ij``."""
        return np.argmax(self.predict(x, batch_size=batch_size, verbose=0), axis=1)

    # ------------------------------------------------------------------- stages

    def pretrain(self, x, epochs: int = 500, batch_size: int = 256, optimizer=None, **fit_kwargs):
        """Stage 1: train the autoencoder on augmented ``x`` with MSE (Adam, lr 1e-3).

        Returns the Keras ``History``.
        """
        self.autoencoder.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3))
        return self.autoencoder.fit(x, epochs=epochs, batch_size=batch_size, **fit_kwargs)

    def fit(self, x=None, y=None, callbacks=None, **kwargs):
        """Stage 2 through ``keras.Model.fit``.

        With ``x`` a NumPy array, k-means first initialises the centroids when they
        were never set, and a :class:`~deepstab.callbacks.CollapseGuard` on ``x``
        watches for collapse unless ``callbacks`` already holds one; it is kept as
        ``model.collapse_guard``.
        """
        callbacks = list(callbacks or [])
        if float(ops.convert_to_numpy(self.centroids_ready)) == 0.0:
            if not isinstance(x, np.ndarray):
                raise DeepstabError(
                    "DECS.fit needs initialised centroids: call model.initialize_centroids(x) "
                    "first, or pass x as a NumPy array."
                )
            self.initialize_centroids(x)
        guards = [c for c in callbacks if isinstance(c, CollapseGuard)]
        if not guards and isinstance(x, np.ndarray):
            guards = [CollapseGuard(x, self.n_clusters, self.collapse_share, self.on_collapse)]
            callbacks.append(guards[0])
        self.collapse_guard = guards[0] if guards else None
        return super().fit(x, y, callbacks=callbacks, **kwargs)

    # -------------------------------------------------------------- train step

    @property
    def metrics(self):
        return [self.loss_tracker, self.threshold_tracker]

    def _clustering_variables(self) -> list:
        variables = self.encoder.trainable_weights + self.clustering.trainable_weights
        return variables + self.autoencoder.decoder.trainable_weights if self.recon_weight else variables

    def train_step(self, data):
        """One clustering iteration of DECS on an augmented batch."""
        x = self.autoencoder.augmented(images_of(data))
        z = self.encoder(x, training=True)
        q = self.clustering(z)  # Eq. 5
        t = otsu_threshold(q, self.nbins, value_range=(0.0, 1.0))  # constant threshold
        loss = decs_loss(q, t, self.variant, self.lam)  # Eqs. 6-8
        if self.recon_weight:  # Eq. 1: L = L_r + L_c
            loss = loss + self.recon_weight * ops.mean(ops.square(self.autoencoder.decoder(z, training=True) - x))
        if self.size_prior_weight:
            loss = loss + self.size_prior_weight * size_prior(q)
        apply_gradients(self, loss, self._clustering_variables())
        self.loss_tracker.update_state(loss)
        self.threshold_tracker.update_state(t)
        return self.get_metrics_result()

    def cluster_summary(self, x) -> dict[str, object]:
        """Cluster sizes of the hard labels of ``x`` (see :func:`deepstab.metrics.cluster_sizes`)."""
        return cluster_sizes(self.predict_labels(x), self.n_clusters)

    def get_config(self):
        ae = self.autoencoder
        return {
            **super().get_config(),
            "n_clusters": self.n_clusters,
            "input_shape": ae.image_shape,
            "embedding_dim": ae.embedding_dim,
            "filters": ae.filters,
            "alpha": self.clustering.alpha,
            "variant": self.variant,
            "lam": self.lam,
            "recon_weight": self.recon_weight,
            "size_prior": self.size_prior_weight,
            "nbins": self.nbins,
            "shift": ae.shift,
            "rotation": ae.rotation,
            "on_collapse": self.on_collapse,
            "collapse_share": self.collapse_share,
        }
