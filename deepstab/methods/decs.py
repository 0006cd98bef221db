"""DECS: deep embedding clustering driven by sample stability (Cheng et al., IJCAI 2024).

Stage 1 pretrains a convolutional autoencoder on augmented images with MSE
(:class:`~deepstab.nn.autoencoders.ConvAutoencoder`, DECS §3.1). Stage 2 (:class:`DECS`)
initialises the centroids with k-means on the embeddings and trains encoder and centroids with
the stability loss: Student-t soft assignments ``q`` (Eq. 5), Otsu's threshold ``t`` of the
batch's ``q`` (no gradient, §3.3), determinacy (Eq. 6), stability (Eq. 7) and
``L_c = 1 - mean_i s_i`` (Eq. 8), plus optional terms.
"""

from __future__ import annotations

import keras
import numpy as np

from deepstab import checks, seeding
from deepstab.methods.base import CentroidClusterer
from deepstab.methods.collapse import COLLAPSE_ACTIONS, CollapseGuard
from deepstab.methods.losses import VARIANTS, decs_loss, size_floor, size_prior
from deepstab.nn.autoencoders import ConvAutoencoder
from deepstab.nn.kmeans import Start, balanced_kmeans
from deepstab.nn.networks import DEFAULT_FILTERS
from deepstab.nn.otsu import otsu_threshold
from deepstab.nn.steps import apply_gradients, images_of

STARTS = ("balanced", "inertia")
PRIOR_TARGETS = ("uniform", "start")
START_RUNS = 20  # the k-means runs the clustering start is chosen from


@keras.saving.register_keras_serializable(package="deepstab")
class DECS(CentroidClusterer):
    """DECS clustering model: encoder + Student-t centroids, trained with the stability loss.

    ``model.predict(x)`` returns soft assignments ``q``; :meth:`predict_labels`
    returns ``argmax_j q_ij``. :meth:`fit` adds a :class:`~deepstab.methods.collapse.CollapseGuard`
    on the training images unless the caller passes one; it is kept as ``collapse_guard``.

    Args:
        n_clusters: number of clusters K.
        input_shape: image shape (H, W, C).
        embedding_dim, filters, shift, rotation: see :class:`ConvAutoencoder`.
        alpha: Student-t degrees of freedom α (Eq. 5; paper 1.0, authors' code 0.5).
        variant: ``"paper"`` (Eqs. 6-8) or ``"reference"`` (the authors' released code).
        lam: λ of Eq. 7; ``None`` takes the variant's default (0.8 paper, 0.4 reference).
        recon_weight: weight of the reconstruction term ``L_r`` of Eq. 1 in stage 2
            (0 drops it, as the authors' code does).
        size_prior: weight of the cluster-size prior ``KL(mean q || target)`` (the target set by
            ``prior_target``), not part of DECS: 1 by default, which keeps the loss from draining
            a class's cluster (docs/results.md, "When a cluster drains"); 0 is the paper's loss.
        prior_target: what the size prior (and the collapse fallback's) pulls the batch's
            cluster shares toward: ``"uniform"``, or ``"start"``, the shares of the clustering
            start's partition (kept as ``size_target``).
        size_target: the start's shares (set by :meth:`initialize_centroids`; saved with the model).
        size_floor: weight of the barrier that keeps each cluster's share of a batch's soft
            mass above ``floor_share`` of an even share
            (:func:`~deepstab.methods.losses.size_floor`; not part of DECS, 0 disables).
        floor_share: the barrier's share of an even split.
        nbins: histogram bins for Otsu's threshold (authors' code: 1000).
        on_collapse: what :meth:`fit` does when a cluster empties or shrinks below
            ``collapse_share`` of an even share: ``"fallback"`` (restore the last
            healthy weights, go on with the size prior), ``"split"`` (refill it by splitting
            another cluster, then fall back), ``"restart"`` (start clustering over from the
            next-best start, then fall back), ``"restore"`` (restore and stop), ``"stop"`` or
            ``"warn"`` (see :class:`deepstab.methods.collapse.CollapseGuard`).
        collapse_share: the shrinking threshold, relative to ``1 / K``.
        start: the clustering start: ``"balanced"`` (of 20 single-start k-means partitions of the
            embeddings, the lowest-inertia one without a cluster under two thirds of an even
            share, if one lies within 5% of the lowest inertia,
            :func:`~deepstab.nn.kmeans.balanced_kmeans`; kept as ``start_choice``) or
            ``"inertia"`` (k-means with 20 restarts, the lowest inertia, as the paper and the
            authors' code).

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
        size_prior: float = 1.0,
        prior_target: str = "start",
        size_target: list[float] | None = None,
        size_floor: float = 0.0,
        floor_share: float = 0.5,
        nbins: int = 1000,
        shift: float = 0.1,
        rotation: float = 10.0,
        on_collapse: str = "fallback",
        collapse_share: float = 0.25,
        start: str = "balanced",
        **kwargs,
    ):
        settings = {
            "start": checks.choice("start", start, STARTS),
            "on_collapse": checks.choice("on_collapse", on_collapse, COLLAPSE_ACTIONS),
            "collapse_share": checks.in_range("collapse_share", collapse_share, 0.0, 1.0, high_open=True),
            "variant": checks.choice("variant", variant, VARIANTS),
            "lam": None if lam is None else checks.non_negative("lam", lam),
            "recon_weight": checks.non_negative("recon_weight", recon_weight),
            "size_prior_weight": checks.non_negative("size_prior", size_prior),
            "prior_target": checks.choice("prior_target", prior_target, PRIOR_TARGETS),
            "size_floor": checks.non_negative("size_floor", size_floor),
            "floor_share": checks.in_range("floor_share", floor_share, 0.0, 1.0, low_open=True, high_open=True),
            "nbins": checks.positive_int("nbins", nbins),
        }
        super().__init__(
            n_clusters, ConvAutoencoder(input_shape, embedding_dim, filters, shift, rotation), alpha, **kwargs
        )
        for name, value in settings.items():
            setattr(self, name, value)
        self.size_target = (
            np.full(n_clusters, 1.0 / n_clusters, np.float32)
            if size_target is None
            else np.asarray(size_target, np.float32)
        )
        self.start_choice: Start | None = None
        self.collapse_guard: CollapseGuard | None = None
        self._guard_state: dict | None = None
        self.threshold_tracker = keras.metrics.Mean(name="threshold")
        self.built = True

    def initialize_centroids(self, x, n_init: int = START_RUNS, seed: int | None = None) -> np.ndarray:
        """Set the centroids to the start of ``self.start`` on the embeddings of ``x`` (``n_init``
        k-means runs, seeded by ``seed``, by default the model's k-means stream); return its labels."""
        if self.start == "inertia":
            labels = super().initialize_centroids(x, n_init, seed)
            self.size_target = _shares(labels, self.n_clusters)
            return labels
        return self._balanced_start(x, n_init, seed, []).labels

    def next_start(self, x, unlike: list[np.ndarray]) -> Start | None:
        """Start again from the start rule's choice among the k-means partitions of the
        embeddings of ``x`` that are unlike each of ``unlike`` (:func:`balanced_kmeans`; the
        restart of the collapse guard): the centroids, ``size_target`` and ``start_choice`` set
        to it. ``None``, with nothing changed, when every partition is like one of them."""
        return self._balanced_start(x, START_RUNS, None, unlike)

    def _balanced_start(self, x, n_init: int, seed: int | None, unlike: list[np.ndarray]) -> Start | None:
        seeds = [seeding.derive(self.seed if seed is None else seed, "kmeans", i) for i in range(n_init)]
        start = balanced_kmeans(self.embed(x), self.n_clusters, seeds, unlike)
        if start is not None:
            self.start_choice = start
            self.set_centroids(start.centres)
            self.size_target = _shares(start.labels, self.n_clusters)
        return start

    def training_callbacks(self, data, callbacks: list) -> list:
        """A :class:`CollapseGuard` on the images of ``data`` unless ``callbacks`` holds one
        (given the state a checkpoint put back)."""
        guards = [c for c in callbacks if isinstance(c, CollapseGuard)]
        added = []
        if not guards and isinstance(getattr(data, "x", None), np.ndarray):
            guards = added = [CollapseGuard(data.x, self.n_clusters, self.collapse_share, self.on_collapse)]
        self.collapse_guard = guards[0] if guards else None
        if self.collapse_guard is not None and self._guard_state:
            self.collapse_guard.load_state(self._guard_state)
            self._guard_state = None
        return added

    def training_state(self) -> dict[str, np.ndarray]:
        """What changes training besides the weights: the size-prior weight (raised by the
        collapse fallback) and the collapse guard's record, for checkpoints."""
        state = {"size_prior_weight": np.array(self.size_prior_weight), "size_target": np.asarray(self.size_target)}
        return state | (self.collapse_guard.state() if self.collapse_guard is not None else {})

    def restore_training_state(self, state: dict[str, np.ndarray]) -> None:
        """Put back what :meth:`training_state` returned; the guard gets its part in :meth:`fit`."""
        self.size_prior_weight = float(state.get("size_prior_weight", self.size_prior_weight))
        self.size_target = np.asarray(state.get("size_target", self.size_target), np.float32)
        self._guard_state = {key: value for key, value in state.items() if key.startswith("guard:")} or None

    @property
    def metrics(self):
        return [self.loss_tracker, self.threshold_tracker]

    def _clustering_variables(self) -> list:
        variables = self.encoder.trainable_weights + self.clustering.trainable_weights
        return variables + self.autoencoder.decoder.trainable_weights if self.recon_weight else variables

    def threshold(self, x, q):
        """Eq. 7's threshold for the augmented batch ``x``: Otsu's threshold of its soft
        assignments ``q``, a constant of the step (no gradient flows through it)."""
        return otsu_threshold(q, self.nbins, value_range=(0.0, 1.0))

    def train_step(self, data):
        """One clustering iteration of DECS on an augmented batch."""
        x = self.autoencoder.augmented(images_of(data))
        z = self.autoencoder.embed_inputs(x, training=True)
        q = self.clustering(z)  # Eq. 5
        t = self.threshold(x, q)
        loss = decs_loss(q, t, self.variant, self.lam)  # Eqs. 6-8
        if self.recon_weight:  # Eq. 1: L = L_r + L_c
            loss = loss + self.recon_weight * self.autoencoder.reconstruction_loss(x, z)
        if self.size_prior_weight:
            loss = loss + self.size_prior_weight * size_prior(
                q, self.size_target if self.prior_target == "start" else None
            )
        if self.size_floor:
            loss = loss + self.size_floor * size_floor(q, self.floor_share)
        apply_gradients(self, loss, self._clustering_variables())
        self.loss_tracker.update_state(loss)
        self.threshold_tracker.update_state(t)
        return self.get_metrics_result()

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.autoencoder.filters,
            "variant": self.variant,
            "lam": self.lam,
            "recon_weight": self.recon_weight,
            "size_prior": self.size_prior_weight,
            "prior_target": self.prior_target,
            "size_target": [float(v) for v in self.size_target],
            "size_floor": self.size_floor,
            "floor_share": self.floor_share,
            "nbins": self.nbins,
            "on_collapse": self.on_collapse,
            "collapse_share": self.collapse_share,
            "start": self.start,
        }


def _shares(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Each cluster's share of ``labels``."""
    return np.bincount(labels, minlength=n_clusters).astype(np.float32) / len(labels)
