"""DEC, IDEC and DCN on the feed-forward autoencoder of the BRB setup (ICLR 2025).

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

Each model offers what :class:`deepstab.methods.brb.BRB` needs: ``encoder``, ``embed``,
``set_centroids`` and ``centroid_variables``.
"""

from __future__ import annotations

import keras
import numpy as np
import torch
from keras import ops

from deepstab import checks
from deepstab.datasets.streaming import indexed_batches
from deepstab.methods.base import CentroidClusterer
from deepstab.methods.losses import (
    dcn_centroid_update,
    dcn_cluster_loss,
    kl_divergence,
    squared_distances,
    target_distribution,
)
from deepstab.nn.autoencoders import DenseAutoencoder
from deepstab.nn.networks import DENSE_HIDDEN
from deepstab.nn.steps import apply_gradients, images_of


class FeedForwardClusterer(CentroidClusterer):
    """What DEC, IDEC and DCN share: the feed-forward autoencoder, and ``fit`` on batches that
    carry their sample indices (DEC's target ``P`` is looked up by index).

    Args:
        n_clusters: K.
        input_shape: image shape (H, W, C).
        embedding_dim: ``e``; ``None`` takes K, as the BRB setup.
        hidden: encoder widths.
        augment: pretrain and cluster on shifted and rotated views (the clustering stage
            should see the views the autoencoder was pretrained on).
        shift, rotation: the augmentation's range.
        alpha: Student-t degrees of freedom of the soft assignments (DEC: 1).
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
        k = checks.n_clusters("n_clusters", n_clusters)
        dim = k if embedding_dim is None else embedding_dim
        autoencoder = DenseAutoencoder(
            input_shape, dim, hidden, shift if augment else 0.0, rotation if augment else 0.0
        )
        super().__init__(k, autoencoder, alpha, **kwargs)
        self.use_augment = bool(augment)
        self.built = True

    def trainable_variables_of_step(self) -> list:
        variables = self.encoder.trainable_weights + self.centroid_variables
        return variables + self.autoencoder.decoder.trainable_weights if self.uses_decoder else variables

    def fit(
        self,
        x=None,
        y=None,
        batch_size: int = 256,
        epochs: int = 1,
        callbacks=None,
        shuffle: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        """Stage 2 through ``keras.Model.fit`` on images ``x`` (an array, or an
        :class:`~deepstab.datasets.streaming.IndexedImages`). k-means (seeded by ``seed``, as the
        batch order) initialises the centroids first when they were never set."""
        who = f"{type(self).__name__}.fit"
        data = indexed_batches(x, self.image_shape, self.n_clusters, batch_size, shuffle, seed, who)
        if not self.centroids_set:
            self.initialize_centroids(data.x, seed=seed)
        return super().fit(data, epochs=epochs, callbacks=callbacks, **kwargs)

    def _views(self, data):
        x = ops.convert_to_tensor(images_of(data))
        return self.autoencoder.augmented(x)

    def get_config(self):
        return {**super().get_config(), "hidden": self.autoencoder.hidden, "augment": self.use_augment}


@keras.saving.register_keras_serializable(package="deepstab")
class DEC(FeedForwardClusterer):
    """DEC (Xie et al. 2016): ``KL(P || Q)`` between the target distribution and the
    Student-t assignments, trained on encoder and centroids.

    Args (beyond :class:`FeedForwardClusterer`):
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
        self.target_interval = checks.positive_int("target_interval", target_interval)
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

    def training_callbacks(self, x, callbacks: list) -> list:
        return [TargetRefresh(x.x)]  # after BRB: it sees the centroids BRB set at the same epoch start

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
    """

    uses_decoder = True

    def __init__(self, n_clusters: int, input_shape: tuple[int, int, int], gamma: float = 0.1, **kwargs):
        super().__init__(n_clusters, input_shape, **kwargs)
        self.gamma = checks.non_negative("gamma", gamma)

    def step_loss(self, x, z, index):
        """IDEC Eq. 7: ``L_r + γ KL(P || Q)``."""
        return self.autoencoder.reconstruction_loss(x, z) + self.gamma * super().step_loss(x, z, index)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="deepstab")
class DCN(FeedForwardClusterer):
    """DCN (Yang et al. 2017): reconstruction plus ``λ ½ ||z_i - m_{s_i}||^2`` with hard
    assignments; centroids moved by the count-based update (Eq. 8), not by gradients.

    Args (beyond :class:`FeedForwardClusterer`):
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

    def __init__(
        self,
        n_clusters: int,
        input_shape: tuple[int, int, int],
        lam: float = 0.05,
        initial_count: float = 100.0,
        **kwargs,
    ):
        super().__init__(n_clusters, input_shape, **kwargs)
        self.lam = checks.non_negative("lam", lam)
        self.initial_count = checks.positive("initial_count", initial_count)
        self.clustering.trainable = False
        self.counts = self.add_weight(name="counts", shape=(self.n_clusters,), initializer="ones", trainable=False)
        self.assigned_this_epoch: torch.Tensor | None = None
        self.reseeded = 0

    def training_callbacks(self, x, callbacks: list) -> list:
        return [LostClusterReseed(x.x)]

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
            self.assigned_this_epoch = (
                assigned if self.assigned_this_epoch is None else self.assigned_this_epoch + assigned
            )
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


METHODS: dict[str, type[FeedForwardClusterer]] = {"dec": DEC, "idec": IDEC, "dcn": DCN}
