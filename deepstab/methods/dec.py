"""DEC, IDEC and DCN on the feed-forward autoencoder, as the BRB authors' code trains them
(Miklautz et al., ICLR 2025; their ``src/deep``).

Stage 1 (:class:`~deepstab.nn.autoencoders.DenseAutoencoder`) pretrains ``d-1024-512-256-e``
(Dense-BatchNorm-ReLU) with MSE on clean, resized, per-channel z-scored images. Stage 2
initialises the centroids with k-means (10 restarts) on the clean embeddings, then every step
embeds a clean and an augmented view of the batch (random affine: rotation, shift, shear) and
clips the autoencoder's gradients at a global norm of 500:

- :class:`DEC` (Xie et al. 2016): Student-t ``q`` (Eq. 1); the target ``P`` (Eq. 3) of the
  clean view's ``q`` in the batch; loss ``½ [CE(P, q_clean) + CE(P, q_aug)]`` with
  ``CE(P, Q) = -mean_i Σ_j p_ij log q_ij`` (the gradient of ``KL(P || Q)``, Eq. 2).
- :class:`IDEC` (Guo et al. 2017): ``L_r + γ L_DEC`` (IDEC Eq. 7, γ = 0.1), ``L_r`` the MSE of
  both views through one forward pass.
- :class:`DCN` (Yang et al. 2017): ``L_r + λ ½ [k(z_clean) + k(z_aug)]`` with ``k`` the mean over
  N x K of ``||z_i - m_k||^2`` times the clean view's hard assignments (Eq. 5, λ = 0.025);
  after every epoch the centroids move with the count-based update (Eq. 8) on the clean
  embeddings in inference mode.

deepstab's earlier choices stay available as options (``views="augmented"``,
``target="dataset"``, ``centroid_update="batch"``, ``counts="eq8"``, ``reseed_lost=True``, and
the autoencoder's ``standardise="pixel"``, ``augmentation="shift-rotation"``, ...).
"""

from __future__ import annotations

import keras
import numpy as np
import torch
from keras import ops

from deepstab import checks, seeding
from deepstab.datasets.streaming import IndexedImages
from deepstab.methods.base import CentroidClusterer
from deepstab.methods.losses import (
    COUNT_RULES,
    dcn_centroid_update,
    dcn_cluster_loss,
    dec_cross_entropy,
    squared_distances,
    target_distribution,
)
from deepstab.nn.autoencoders import DenseAutoencoder
from deepstab.nn.layers import views
from deepstab.nn.networks import DENSE_HIDDEN
from deepstab.nn.steps import apply_gradients, images_of

VIEWS = ("both", "augmented")
TARGETS = ("batch", "dataset")
CENTROID_UPDATES = ("epoch", "batch")


class FeedForwardClusterer(CentroidClusterer):
    """What DEC, IDEC and DCN share: the feed-forward autoencoder, the two views of a batch, and
    ``fit`` on batches that carry their sample indices.

    Args:
        n_clusters: K.
        input_shape: image shape (H, W, C).
        embedding_dim: ``e``; ``None`` takes K, as the BRB setup.
        hidden, image_size, standardise, batch_norm, init, augmentation, shift, rotation, shear,
            pretrain_augmented, clip_norm: the autoencoder's, see
            :class:`~deepstab.nn.autoencoders.DenseAutoencoder`.
        views: ``"both"`` (a clean and an augmented view per step, the authors') or
            ``"augmented"`` (the augmented view only).
        alpha: Student-t degrees of freedom of the soft assignments (DEC: 1).
    """

    uses_decoder = False
    kmeans_restarts = 10
    drop_last_batch = True  # full batches only, as the authors

    def __init__(
        self,
        n_clusters: int,
        input_shape: tuple[int, int, int],
        embedding_dim: int | None = None,
        hidden: tuple[int, ...] = DENSE_HIDDEN,
        image_size: int | None = None,
        standardise: str = "channel",
        batch_norm: bool = True,
        init: str = "torch",
        augmentation: str = "affine",
        shift: float = 0.1,
        rotation: float = 16.0,
        shear: float = 8.0,
        pretrain_augmented: bool = False,
        clip_norm: float | None = 500.0,
        views: str = "both",
        alpha: float = 1.0,
        **kwargs,
    ):
        k = checks.n_clusters("n_clusters", n_clusters)
        views = checks.choice("views", views, VIEWS)
        autoencoder = DenseAutoencoder(
            input_shape,
            k if embedding_dim is None else embedding_dim,
            hidden,
            image_size,
            standardise,
            batch_norm,
            init,
            augmentation,
            shift,
            rotation,
            shear,
            pretrain_augmented,
            clip_norm,
        )
        super().__init__(k, autoencoder, alpha, **kwargs)
        self.views = views
        self.built = True

    def trainable_variables_of_step(self) -> list:
        variables = self.encoder.trainable_weights + self.centroid_variables
        return variables + self.autoencoder.decoder.trainable_weights if self.uses_decoder else variables

    def initialize_centroids(self, x, n_init: int | None = None, seed: int | None = None) -> np.ndarray:
        return super().initialize_centroids(x, self.kmeans_restarts if n_init is None else n_init, seed)

    def view_pair(self, data):
        """``(augmented, clean)`` inputs of a batch; ``clean`` is ``None`` with ``views="augmented"``."""
        x = self.autoencoder.inputs(images_of(data))
        return self.autoencoder.augmented(x), (x if self.views == "both" else None)

    def joint_embeddings(self, augmented, clean):
        """One forward pass of both views (batch statistics over both, as the authors' IDEC and
        DCN); returns ``(inputs, z, z_augmented, z_clean)``."""
        if clean is None:
            z = self.autoencoder.embed_inputs(augmented, training=True)
            return augmented, z, z, None
        both = ops.concatenate([augmented, clean], axis=0)
        z = self.autoencoder.embed_inputs(both, training=True)
        n = ops.shape(augmented)[0]
        return both, z, z[:n], z[n:]

    def step(self, loss) -> dict:
        apply_gradients(self, loss, self.trainable_variables_of_step(), self.autoencoder.clip)
        self.loss_tracker.update_state(loss)
        return self.get_metrics_result()

    def get_config(self):
        ae = self.autoencoder
        return {
            **super().get_config(),
            "hidden": ae.hidden,
            "image_size": ae.image_size,
            "standardise": ae.standardise,
            "batch_norm": ae.batch_norm,
            "init": ae.init,
            "augmentation": ae.augmentation,
            "shear": ae.shear,
            "pretrain_augmented": ae.pretrain_augmented,
            "clip_norm": ae.clip_norm,
            "views": self.views,
        }


@keras.saving.register_keras_serializable(package="deepstab")
class DEC(FeedForwardClusterer):
    """DEC (Xie et al. 2016): cross-entropy to the target distribution ``P`` of the Student-t
    assignments, trained on encoder and centroids.

    Args (beyond :class:`FeedForwardClusterer`):
        target: ``"batch"`` (``P`` of the clean view's ``q`` in each batch, the BRB authors') or
            ``"dataset"`` (``P`` of the whole clean training set, refreshed every
            ``target_interval`` epochs and after BRB's re-clustering, as DEC's paper).
        target_interval: epochs between refreshes of the ``"dataset"`` target.

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

    def __init__(
        self,
        n_clusters: int,
        input_shape: tuple[int, int, int],
        target: str = "batch",
        target_interval: int = 1,
        **kwargs,
    ):
        super().__init__(n_clusters, input_shape, **kwargs)
        self.target_mode = checks.choice("target", target, TARGETS)
        self.target_interval = checks.positive_int("target_interval", target_interval)
        self.target: torch.Tensor | None = None
        self.target_stale = True

    @torch.no_grad()
    def refresh_target(self, x: np.ndarray) -> None:
        """DEC Eq. 3 on the soft assignments of the whole (clean) training set."""
        z = ops.convert_to_tensor(self.embed(x))
        q = ops.concatenate([self.clustering(z[i : i + 65536]) for i in range(0, len(x), 65536)], axis=0)
        self.target = target_distribution(q)
        self.target_stale = False

    def on_recluster(self) -> None:
        self.target_stale = True

    def training_state(self) -> dict[str, np.ndarray]:
        """The dataset-wide target ``P`` where one is in use (for checkpoints: a resumed run
        refreshes it when an uninterrupted one would, not at once)."""
        return {} if self.target is None else {"dec:target": ops.convert_to_numpy(self.target)}

    def restore_training_state(self, state: dict[str, np.ndarray]) -> None:
        """Put back what :meth:`training_state` returned."""
        if "dec:target" in state:
            self.target, self.target_stale = ops.convert_to_tensor(state["dec:target"]), False

    def training_callbacks(self, data, callbacks: list) -> list:
        # after BRB: it sees the centroids BRB set at the same epoch start
        return [TargetRefresh(data.x)] if self.target_mode == "dataset" else []

    def clustering_loss(self, z_augmented, z_clean, index):
        """The DEC loss of a batch from the embeddings of its views (``z_clean`` may be ``None``)."""
        q_augmented = self.clustering(z_augmented)
        q_clean = None if z_clean is None else self.clustering(z_clean)
        if self.target_mode == "dataset":
            p = self.target[ops.convert_to_tensor(index)]
        else:
            p = ops.stop_gradient(target_distribution(q_augmented if q_clean is None else q_clean))
        loss = dec_cross_entropy(p, q_augmented)
        return loss if q_clean is None else (dec_cross_entropy(p, q_clean) + loss) / 2

    def train_step(self, data):
        """One DEC iteration: each view normalised with its own batch statistics (as two passes
        of the authors' code), in one call over both."""
        augmented, clean = self.view_pair(data)
        if clean is None:
            z = self.autoencoder.embed_inputs(augmented, training=True)
            return self.step(self.clustering_loss(z, None, data[1]))
        with views(2):
            z = self.autoencoder.embed_inputs(ops.concatenate([augmented, clean], axis=0), training=True)
        n = ops.shape(augmented)[0]
        return self.step(self.clustering_loss(z[:n], z[n:], data[1]))

    def get_config(self):
        return {**super().get_config(), "target": self.target_mode, "target_interval": self.target_interval}


@keras.saving.register_keras_serializable(package="deepstab")
class IDEC(DEC):
    """IDEC (Guo et al. 2017): ``L = L_r + γ L_DEC`` (IDEC Eq. 7), so the decoder keeps
    training and the embedding keeps the data's local structure.

    Args (beyond :class:`DEC`):
        gamma: γ, the weight of the clustering loss (0.1, IDEC §3.4).
    """

    uses_decoder = True

    def __init__(self, n_clusters: int, input_shape: tuple[int, int, int], gamma: float = 0.1, **kwargs):
        super().__init__(n_clusters, input_shape, **kwargs)
        self.gamma = checks.non_negative("gamma", gamma)

    def train_step(self, data):
        """One IDEC iteration: both views through one forward pass."""
        inputs, z, z_augmented, z_clean = self.joint_embeddings(*self.view_pair(data))
        loss = self.autoencoder.reconstruction_loss(inputs, z)
        return self.step(loss + self.gamma * self.clustering_loss(z_augmented, z_clean, data[1]))

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="deepstab")
class DCN(FeedForwardClusterer):
    """DCN (Yang et al. 2017): reconstruction plus the k-means term with hard assignments; the
    centroids are moved by the count-based update (Eq. 8), not by gradients.

    Args (beyond :class:`FeedForwardClusterer`):
        lam: λ, the weight of the k-means term (the BRB authors' 0.025 on the mean over N x K).
        centroid_update: ``"epoch"`` (after every epoch, a pass over the clean training images in
            inference mode, batch by batch; the authors') or ``"batch"`` (every step, from the
            batch's training-mode embeddings before the network update).
        counts: ``"frozen"`` (the step ``1 / (c_k + 1)`` with ``c_k`` fixed at
            ``initial_count``: what the authors' code computes) or ``"eq8"`` (counts grow with
            every sample, DCN Eq. 8).
        initial_count: the count ``c_k`` every centroid starts from (100, as the authors').
        reseed_lost: re-seed a cluster that got no sample during an epoch at the embedding of a
            random training image (count back to ``initial_count``); the authors' code does not.
    """

    uses_decoder = True

    def __init__(
        self,
        n_clusters: int,
        input_shape: tuple[int, int, int],
        lam: float = 0.025,
        centroid_update: str = "epoch",
        counts: str = "frozen",
        initial_count: float = 100.0,
        reseed_lost: bool = False,
        **kwargs,
    ):
        super().__init__(n_clusters, input_shape, **kwargs)
        self.lam = checks.non_negative("lam", lam)
        self.centroid_update = checks.choice("centroid_update", centroid_update, CENTROID_UPDATES)
        self.count_rule = checks.choice("counts", counts, COUNT_RULES)
        self.initial_count = checks.positive("initial_count", initial_count)
        self.reseed_lost = bool(reseed_lost)
        self.clustering.trainable = False
        self.counts = self.add_weight(name="counts", shape=(self.n_clusters,), initializer="ones", trainable=False)
        self.assigned_this_epoch: torch.Tensor | None = None
        self.reseeded = 0

    def training_callbacks(self, data, callbacks: list) -> list:
        return [DCNEpochEnd(data)]

    def set_centroids(self, centres: np.ndarray) -> None:
        """New centroids with the counts at ``initial_count``; under the ``mini-batch`` rule a
        re-clustering (BRB) keeps the counts, as the authors' code does."""
        keep = self.count_rule == "mini-batch" and self.centroids_set
        super().set_centroids(centres)
        if not keep:
            self.counts.assign(np.full(self.n_clusters, self.initial_count, dtype=np.float32))

    @property
    def centroid_variables(self) -> list:
        return []  # moved by Eq. 8, not by the optimizer

    @torch.no_grad()
    def move_centroids(self, z, assignments) -> None:
        """Eq. 8 for one batch of embeddings and their assignments; counts what each cluster got."""
        centroids = self.clustering.centroids.value
        centroids, counts = dcn_centroid_update(centroids, self.counts.value, z, assignments, self.count_rule)
        got = ops.sum(ops.one_hot(assignments, self.n_clusters, dtype=z.dtype), axis=0)
        self.assigned_this_epoch = got if self.assigned_this_epoch is None else self.assigned_this_epoch + got
        self.clustering.centroids.assign(centroids)
        self.counts.assign(counts)

    @torch.no_grad()
    def centroid_pass(self, x: np.ndarray, batch_size: int, rng: np.random.Generator) -> None:
        """The authors' epoch-end update: clean images in a random order, full batches, embedded in
        inference mode, each batch assigned to the centroids as the previous batches left them."""
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            batch = np.asarray(x[np.sort(order[start : start + batch_size])], np.float32)
            z = self.autoencoder.encoder(ops.convert_to_tensor(batch), training=False)
            self.move_centroids(z, ops.argmin(squared_distances(z, self.clustering.centroids.value), axis=1))

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

    def train_step(self, data):
        """One DCN iteration: both views through one forward pass; the assignments are the clean
        view's nearest centroids, held fixed."""
        inputs, z, z_augmented, z_clean = self.joint_embeddings(*self.view_pair(data))
        centroids = self.clustering.centroids.value
        with torch.no_grad():
            assigned_by = z_augmented if z_clean is None else z_clean
            assignments = ops.argmin(squared_distances(assigned_by, centroids), axis=1)
        k_term = dcn_cluster_loss(z_augmented, centroids, assignments)
        if z_clean is not None:
            k_term = (dcn_cluster_loss(z_clean, centroids, assignments) + k_term) / 2
        before = assigned_by.detach()
        metrics = self.step(self.autoencoder.reconstruction_loss(inputs, z) + self.lam * k_term)
        if self.centroid_update == "batch":
            self.move_centroids(before, assignments)
        return metrics

    def get_config(self):
        return {
            **super().get_config(),
            "lam": self.lam,
            "centroid_update": self.centroid_update,
            "counts": self.count_rule,
            "initial_count": self.initial_count,
            "reseed_lost": self.reseed_lost,
        }


class TargetRefresh(keras.callbacks.Callback):
    """DEC/IDEC with ``target="dataset"``: recompute ``P`` from the whole training set at the
    start of every ``target_interval``-th epoch, and whenever BRB replaced the centroids."""

    def __init__(self, x: np.ndarray):
        super().__init__()
        self.x = x

    def on_epoch_begin(self, epoch, logs=None):
        model = self.model
        if model.target is None or model.target_stale or epoch % model.target_interval == 0:
            model.refresh_target(self.x)


class DCNEpochEnd(keras.callbacks.Callback):
    """DCN at every epoch end: the centroid pass (``centroid_update="epoch"``), then, with
    ``reseed_lost``, the re-seeding of clusters that got no sample (logged as ``reseeded``); both
    draw from the model's centroid-pass stream of the epoch (:mod:`deepstab.seeding`)."""

    def __init__(self, data: IndexedImages):
        super().__init__()
        self.data = data

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        rng = seeding.stream(model.seed, "centroid-pass", epoch)
        if model.centroid_update == "epoch":
            model.centroid_pass(self.data.x, self.data.batch_size, rng)
        if model.reseed_lost:
            count = model.reseed_lost_clusters(self.data.x, rng)
            if logs is not None:
                logs["reseeded"] = float(count)
        else:
            model.assigned_this_epoch = None


METHODS: dict[str, type[FeedForwardClusterer]] = {"dec": DEC, "idec": IDEC, "dcn": DCN}
