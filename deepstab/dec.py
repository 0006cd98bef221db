"""DEC, IDEC and DCN on the feed-forward autoencoder of the BRB setup (ICLR 2025, DESIGN §6).

Stage 1 (:class:`DenseAutoencoder`) pretrains ``d-1024-512-256-e`` on flattened,
per-feature standardised images with MSE. Stage 2 initialises the centroids with
k-means on the embeddings. Both stages train on augmented batches (small shifts and
rotations; pretraining on clean images only made the embedding drift so far in the first
clustering epoch that DCN put every USPS image in one cluster):

- :class:`DEC` (Xie et al. 2016): Student-t assignments ``q`` (Eq. 1), the target ``P``
  (Eq. 3) of the whole un-augmented training set, refreshed every ``target_interval``
  epochs, and ``KL(P || Q)`` (Eq. 2); encoder and centroids are trained.
- :class:`IDEC` (Guo et al. 2017): ``L = L_r + γ L_c`` (IDEC Eq. 7), the reconstruction
  loss keeps the decoder in training; γ = 0.1.
- :class:`DCN` (Yang et al. 2017): ``L_r + λ ½ ||z_i - m_{s_i}||^2`` with hard assignments
  (Eq. 5); the centroids are not trained by gradient but moved with per-cluster counts
  (Eq. 8), using the batch's embeddings before the network update (the mini-batch form
  of the BRB authors' code).

Each model offers what :class:`deepstab.brb.BRB` needs: ``encoder``, ``embed``,
``set_centroids`` and ``centroid_variables``.
"""

from __future__ import annotations

import keras
import numpy as np
import torch
from keras import ops

from deepstab.autoencoder import AugmentedAutoencoder
from deepstab.centroids import CentroidMixin
from deepstab.errors import DeepstabError
from deepstab.layers import ClusteringLayer
from deepstab.losses import (
    dcn_centroid_update,
    dcn_cluster_loss,
    kl_divergence,
    squared_distances,
    target_distribution,
)
from deepstab.networks import DENSE_HIDDEN, build_dense_autoencoder
from deepstab.training import IndexedImages, apply_gradients, images_of


@keras.saving.register_keras_serializable(package="deepstab")
class DenseAutoencoder(AugmentedAutoencoder):
    """The feed-forward autoencoder of the BRB setup, pretrained with MSE on standardised features.

    Args:
        input_shape: image shape (H, W, C); images are flattened inside.
        embedding_dim: size ``e`` of the embedding (the BRB setup: the number of clusters).
        hidden: encoder widths (1024, 512, 256); the decoder mirrors them.
        shift, rotation: augmentation of both stages (0 and 0 disable it).

    Call :meth:`adapt` on the training images before training: it fits the per-feature
    standardisation.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> ae = DenseAutoencoder((8, 8, 1), 4, hidden=(16, 8))
    >>> ae.adapt(x)
    >>> ae.compile(optimizer="adam")
    >>> sorted(ae.fit(x, epochs=1, verbose=0).history)
    ['loss']
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        embedding_dim: int = 10,
        hidden: tuple[int, ...] = DENSE_HIDDEN,
        shift: float = 0.1,
        rotation: float = 10.0,
        **kwargs,
    ):
        widths = tuple(int(h) for h in hidden)
        if int(embedding_dim) < 1 or not widths or min(widths) < 1:
            raise DeepstabError(f"embedding_dim and hidden widths must be positive, got {embedding_dim} and {hidden}.")
        super().__init__(input_shape, embedding_dim, shift, rotation, lambda shape, dim: build_dense_autoencoder(shape, dim, widths), **kwargs)
        self.hidden = widths

    @property
    def standardise(self) -> keras.layers.Normalization:
        return self.encoder.get_layer("standardise")

    def adapt(self, x: np.ndarray) -> None:
        """Fit the per-feature standardisation to ``x``: every pixel's mean, and its variance
        floored at the square of the average pixel standard deviation, so that a shifted or
        rotated view cannot blow up a pixel that is (nearly) always blank (with the raw
        variance, ink in a blank border pixel of an 8x8 digit became ~10^6 after scaling)."""
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        layer = self.standardise
        layer.adapt(flat)
        variance = ops.convert_to_numpy(layer.adapt_variance)
        layer.adapt_variance.assign(np.maximum(variance, float(np.mean(np.sqrt(variance))) ** 2))
        layer.finalize_state()

    def reconstruction_loss(self, x, z):
        """MSE between the decoding of ``z`` and the standardised features of ``x`` (pretraining
        trains on the views the clustering stage trains on)."""
        target = self.standardise(ops.reshape(x, (ops.shape(x)[0], -1)))
        return ops.mean(ops.square(self.decoder(z, training=True) - target))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


class CentroidModel(CentroidMixin, keras.Model):
    """What DEC, IDEC and DCN share: the autoencoder, K centroids, k-means initialisation,
    embeddings and hard labels (the nearest centroid), and ``fit`` on indexed batches.

    Args:
        n_clusters: K.
        input_shape: image shape (H, W, C).
        embedding_dim: ``e``; ``None`` takes K, as the BRB setup.
        hidden: encoder widths.
        augment: pretrain and cluster on shifted and rotated views (the clustering stage
            should see the views the autoencoder was pretrained on).
        shift, rotation: the augmentation's range.
        alpha: Student-t degrees of freedom of the soft assignments (DEC: 1).
        seed: seed of the augmentation.
    """

    uses_decoder = False

    def __init__(
        self,
        n_clusters: int,
        input_shape: tuple[int, int, int],
        embedding_dim: int | None = None,
        hidden: tuple[int, ...] = DENSE_HIDDEN,
        augment: bool = True,
        shift: float = 0.1,
        rotation: float = 10.0,
        alpha: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(n_clusters) < 2:
            raise DeepstabError(f"n_clusters must be at least 2, got {n_clusters!r}.")
        if not alpha > 0:
            raise DeepstabError(f"alpha must be positive, got {alpha!r}.")
        self.n_clusters, self.use_augment = int(n_clusters), bool(augment)
        dim = self.n_clusters if embedding_dim is None else int(embedding_dim)
        self.autoencoder = DenseAutoencoder(input_shape, dim, hidden, shift if augment else 0.0, rotation if augment else 0.0)
        self.clustering = ClusteringLayer(self.n_clusters, alpha, name="clustering")
        self.clustering.build((None, dim))
        self.centroids_ready = self.add_weight(name="centroids_ready", shape=(), initializer="zeros", trainable=False)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    # ------------------------------------------------------------------ forward

    def predict_labels(self, x, batch_size: int = 1024) -> np.ndarray:
        """Hard labels: the nearest centroid of each embedding (``argmax_j q_ij`` for DEC/IDEC)."""
        z = ops.convert_to_tensor(self.embed(x, batch_size))
        return ops.convert_to_numpy(ops.argmin(squared_distances(z, self.clustering.centroids), axis=1))

    # ------------------------------------------------------------------- stages

    def pretrain(self, x, epochs: int = 250, batch_size: int = 256, optimizer=None, **fit_kwargs):
        """Stage 1: fit the standardisation, then train the autoencoder with MSE (Adam, lr 1e-3)."""
        self.autoencoder.adapt(x)
        self.autoencoder.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3))
        return self.autoencoder.fit(x, epochs=epochs, batch_size=batch_size, **fit_kwargs)

    def trainable_variables_of_step(self) -> list:
        variables = self.encoder.trainable_weights + self.centroid_variables
        return variables + self.autoencoder.decoder.trainable_weights if self.uses_decoder else variables

    def fit(self, x=None, y=None, batch_size: int = 256, epochs: int = 1, callbacks=None, shuffle: bool = True, seed: int | None = None, **kwargs):
        """Stage 2 through ``keras.Model.fit`` on images ``x`` (an array, or an
        :class:`~deepstab.training.IndexedImages`). k-means initialises the centroids
        first when they were never set."""
        data = x if isinstance(x, IndexedImages) else None
        if data is None:
            if not isinstance(x, np.ndarray) or tuple(x.shape[1:]) != self.image_shape:
                raise DeepstabError(
                    f"{type(self).__name__}.fit needs images as a float array of shape "
                    f"(N, {', '.join(map(str, self.image_shape))}), got {getattr(x, 'shape', type(x).__name__)}."
                )
            if len(x) < self.n_clusters:
                raise DeepstabError(f"{len(x)} images are too few for {self.n_clusters} clusters.")
            data = IndexedImages(x, min(batch_size, len(x)), shuffle=shuffle, seed=seed)
        if float(ops.convert_to_numpy(self.centroids_ready)) == 0.0:
            self.initialize_centroids(data.x, seed=seed)
        with self.reusing_embeddings():
            return super().fit(data, epochs=epochs, callbacks=self._fit_callbacks(data.x, list(callbacks or [])), **kwargs)

    def _fit_callbacks(self, x: np.ndarray, callbacks: list) -> list:
        return callbacks

    def on_recluster(self) -> None:
        """Called by BRB after it replaced the centroids."""

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _views(self, data):
        x = ops.convert_to_tensor(images_of(data))
        return self.autoencoder.augmented(x)

    def get_config(self):
        ae = self.autoencoder
        return {
            **super().get_config(),
            "n_clusters": self.n_clusters,
            "input_shape": ae.image_shape,
            "embedding_dim": ae.embedding_dim,
            "hidden": ae.hidden,
            "augment": self.use_augment,
            "shift": ae.shift,
            "rotation": ae.rotation,
            "alpha": self.clustering.alpha,
        }


@keras.saving.register_keras_serializable(package="deepstab")
class DEC(CentroidModel):
    """DEC (Xie et al. 2016): ``KL(P || Q)`` between the target distribution and the
    Student-t assignments, trained on encoder and centroids.

    Args (beyond :class:`CentroidModel`):
        target_interval: refresh ``P`` on the whole training set every this many epochs.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> model = DEC(3, (8, 8, 1), hidden=(16, 8))
    >>> _ = model.pretrain(x, epochs=1, verbose=0)
    >>> model.compile(optimizer="adam")
    >>> _ = model.fit(x, epochs=1, batch_size=32, verbose=0)
    >>> model.predict_labels(x).shape
    (64,)
    """


    def __init__(self, n_clusters: int, input_shape: tuple[int, int, int], target_interval: int = 1, **kwargs):
        super().__init__(n_clusters, input_shape, **kwargs)
        if int(target_interval) < 1:
            raise DeepstabError(f"target_interval must be a positive number of epochs, got {target_interval!r}.")
        self.target_interval = int(target_interval)
        self.target: torch.Tensor | None = None
        self.target_stale = True

    @torch.no_grad()
    def refresh_target(self, x: np.ndarray) -> None:
        """DEC Eq. 3 on the soft assignments of the whole (un-augmented) training set."""
        z = ops.convert_to_tensor(self.embed(x))
        q = ops.concatenate([self.clustering(z[i : i + 65536]) for i in range(0, len(x), 65536)], axis=0)
        self.target = target_distribution(q)
        self.target_stale = False

    def on_recluster(self) -> None:
        self.target_stale = True

    def _fit_callbacks(self, x, callbacks):
        return [*callbacks, TargetRefresh(x)]  # last: it sees the centroids BRB set at the same epoch start

    def clustering_loss(self, q, index):
        """DEC Eq. 2 against the rows of the current target ``P``."""
        return kl_divergence(self.target[ops.convert_to_tensor(index)], q)

    def step_loss(self, x, z, index):
        """The loss of one iteration: ``KL(P || Q)`` for DEC."""
        return self.clustering_loss(self.clustering(z), index)

    def train_step(self, data):
        """One iteration on an augmented batch, with :meth:`step_loss`."""
        x = self._views(data)
        loss = self.step_loss(x, self.encoder(x, training=True), data[1])
        apply_gradients(self, loss, self.trainable_variables_of_step())
        self.loss_tracker.update_state(loss)
        return self.get_metrics_result()

    def get_config(self):
        return {**super().get_config(), "target_interval": self.target_interval}


@keras.saving.register_keras_serializable(package="deepstab")
class IDEC(DEC):
    """IDEC (Guo et al. 2017): ``L = L_r + γ KL(P || Q)`` (IDEC Eq. 7), so the decoder keeps
    training and the embedding keeps the data's local structure.

    Args (beyond :class:`DEC`):
        gamma: γ, the weight of the clustering loss (0.1, IDEC §3.4).

    Note: DESIGN §6 writes the weight on the reconstruction side; this follows the paper.
    """

    uses_decoder = True

    def __init__(self, n_clusters: int, input_shape: tuple[int, int, int], gamma: float = 0.1, **kwargs):
        super().__init__(n_clusters, input_shape, **kwargs)
        if not gamma >= 0:
            raise DeepstabError(f"gamma must be zero or positive, got {gamma!r}.")
        self.gamma = float(gamma)

    def step_loss(self, x, z, index):
        """IDEC Eq. 7: ``L_r + γ KL(P || Q)``."""
        return self.autoencoder.reconstruction_loss(x, z) + self.gamma * super().step_loss(x, z, index)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="deepstab")
class DCN(CentroidModel):
    """DCN (Yang et al. 2017): reconstruction plus ``λ ½ ||z_i - m_{s_i}||^2`` with hard
    assignments; centroids moved by the count-based update (Eq. 8), not by gradients.

    Args (beyond :class:`CentroidModel`):
        lam: λ, the weight of the k-means term (DCN Eq. 5).
        initial_count: the count ``c_k`` every centroid starts from (and restarts from after
            BRB's re-clustering); 100 as the DCN authors' code, so the first batches do not
            drag a centroid onto a handful of samples.

    A cluster that receives no sample during an epoch is re-seeded at the embedding of a
    random training image (count back to ``initial_count``), as the DCN authors' code does
    with lost clusters: the k-means term can shrink the embedding until one centroid is
    nearest to every sample, and a lost centroid never moves again. ``reseeded`` counts them.
    """

    uses_decoder = True

    def __init__(self, n_clusters: int, input_shape: tuple[int, int, int], lam: float = 1.0, initial_count: float = 100.0, **kwargs):
        super().__init__(n_clusters, input_shape, **kwargs)
        if not lam >= 0:
            raise DeepstabError(f"lam must be zero or positive, got {lam!r}.")
        if not initial_count > 0:
            raise DeepstabError(f"initial_count must be positive, got {initial_count!r}.")
        self.lam, self.initial_count = float(lam), float(initial_count)
        self.clustering.trainable = False
        self.counts = self.add_weight(name="counts", shape=(self.n_clusters,), initializer="ones", trainable=False)
        self.assigned_this_epoch: torch.Tensor | None = None
        self.reseeded = 0

    def _fit_callbacks(self, x, callbacks):
        return [*callbacks, LostClusterReseed(x)]

    def reseed_lost_clusters(self, x: np.ndarray, rng: np.random.Generator) -> int:
        """Move the centroids that got no sample this epoch onto random embeddings of ``x``."""
        if self.assigned_this_epoch is None:
            return 0
        lost = np.flatnonzero(ops.convert_to_numpy(self.assigned_this_epoch) == 0)
        self.assigned_this_epoch = None
        if len(lost):
            centroids = np.array(ops.convert_to_numpy(self.clustering.centroids))
            counts = np.array(ops.convert_to_numpy(self.counts))
            centroids[lost] = self.embed(x[np.sort(rng.choice(len(x), len(lost), replace=False))])
            counts[lost] = self.initial_count
            self.clustering.centroids.assign(centroids)
            self.counts.assign(counts)
            self.reseeded += len(lost)
        return len(lost)

    def set_centroids(self, centres: np.ndarray) -> None:
        super().set_centroids(centres)
        self.counts.assign(np.full(self.n_clusters, self.initial_count, dtype=np.float32))

    @property
    def centroid_variables(self) -> list:
        return []  # moved by Eq. 8, not by the optimizer

    def train_step(self, data):
        """One DCN iteration: network update on Eq. 5 with fixed assignments, then Eq. 8."""
        x = self._views(data)
        z = self.encoder(x, training=True)
        centroids = self.clustering.centroids.value
        with torch.no_grad():
            assignments = ops.argmin(squared_distances(z, centroids), axis=1)
        loss = self.autoencoder.reconstruction_loss(x, z) + self.lam * dcn_cluster_loss(z, centroids, assignments)
        apply_gradients(self, loss, self.trainable_variables_of_step())
        with torch.no_grad():
            counts = self.counts.value
            new_centroids, new_counts = dcn_centroid_update(centroids, counts, z.detach(), assignments)
            assigned = new_counts - counts
            self.assigned_this_epoch = assigned if self.assigned_this_epoch is None else self.assigned_this_epoch + assigned
            self.clustering.centroids.assign(new_centroids)
            self.counts.assign(new_counts)
        self.loss_tracker.update_state(loss)
        return self.get_metrics_result()

    def get_config(self):
        return {**super().get_config(), "lam": self.lam, "initial_count": self.initial_count}


class TargetRefresh(keras.callbacks.Callback):
    """DEC/IDEC: recompute the target ``P`` from the whole training set at the start of every
    ``target_interval``-th epoch, and whenever BRB replaced the centroids."""

    def __init__(self, x: np.ndarray):
        super().__init__()
        self.x = x

    def on_epoch_begin(self, epoch, logs=None):
        model = self.model
        if model.target is None or model.target_stale or epoch % model.target_interval == 0:
            model.refresh_target(self.x)


class LostClusterReseed(keras.callbacks.Callback):
    """DCN: at every epoch end, re-seed the clusters that got no sample (logs ``reseeded``)."""

    def __init__(self, x: np.ndarray, seed: int = 0):
        super().__init__()
        self.x, self.rng = x, np.random.default_rng(seed)

    def on_epoch_end(self, epoch, logs=None):
        count = self.model.reseed_lost_clusters(self.x, self.rng)
        if logs is not None:
            logs["reseeded"] = float(count)


METHODS: dict[str, type[CentroidModel]] = {"dec": DEC, "idec": IDEC, "dcn": DCN}
