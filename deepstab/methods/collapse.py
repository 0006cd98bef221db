"""The collapse check of the centroid methods: a cluster that empties or shrinks far below an
even share stops or redirects training (DECS keeps one by default)."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from deepstab import checks
from deepstab.errors import DeepstabNote
from deepstab.metrics import cluster_sizes

COLLAPSE_ACTIONS = ("fallback", "restore", "stop", "warn")


class CollapseGuard(keras.callbacks.Callback):
    """Detect a collapsing clustering and stop, restoring the last healthy weights.

    At the start and after every epoch, the model labels a fixed random sample
    of the training images (up to ``sample_size``, no augmentation). The model
    counts as collapsed when a cluster receives no sample, or when the smallest
    cluster holds less than ``min_share`` of an even share (``min_share / K`` of
    the sample). ``clusters_alive``, ``min_cluster_share`` and ``collapsed``
    (0 or 1) are added to the logs, so the History records them.

    Every one-hot assignment is a global minimum of the DECS loss, the
    collapsed one included (every q_ij then lies at 0 or 1 and Eq. 6 is maximal), so the
    loss itself cannot tell.

    Args:
        x: the training images.
        n_clusters: K.
        min_share: smallest acceptable cluster size relative to ``1 / K``.
        action: ``"fallback"`` puts back the weights of the last healthy epoch
            (or the initial ones) and goes on with the cluster-size prior switched
            on (the model's ``size_prior_weight`` set to ``fallback_prior``); later
            flags do not stop training, as the prior needs epochs to even the
            clusters out, but if the last epoch is still flagged, training ends on
            the weights of the last healthy epoch. ``"restore"`` puts back
            the last healthy weights and stops; ``"stop"`` stops with the current
            weights; ``"warn"`` only warns.
        fallback_prior: the size-prior weight that ``"fallback"`` switches on.
        sample_size: how many images are labelled per check.
        seed: seed of the sample's draw.
    """

    def __init__(
        self,
        x: np.ndarray,
        n_clusters: int,
        min_share: float = 0.25,
        action: str = "fallback",
        sample_size: int = 2048,
        seed: int = 0,
        fallback_prior: float = 1.0,
    ):
        super().__init__()
        checks.choice("action", action, COLLAPSE_ACTIONS)
        checks.in_range("min_share", min_share, 0.0, 1.0, high_open=True)
        rng = np.random.default_rng(seed)
        self.sample = x[np.sort(rng.permutation(len(x))[:sample_size])]
        self.n_clusters, self.min_share, self.action = int(n_clusters), float(min_share), action
        self.fallback_prior = float(fallback_prior)
        self.collapsed_epoch: int | None = None
        self.fallback_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.restored_epoch: int | None = None
        self._healthy: list | None = None
        self._healthy_epoch: int | None = None
        self._last_collapsed = False

    def check(self) -> dict[str, float]:
        """Cluster balance of the current model on the sample."""
        sizes = cluster_sizes(self.model.predict_labels(self.sample), self.n_clusters)
        alive, smallest = float(sizes["n_nonempty"]), sizes["min_share"]
        collapsed = alive < self.n_clusters or smallest * self.n_clusters < self.min_share
        return {"clusters_alive": alive, "min_cluster_share": smallest, "collapsed": float(collapsed)}

    EPOCHS = ("collapsed_epoch", "fallback_epoch", "stopped_epoch", "restored_epoch", "_healthy_epoch")

    def state(self) -> dict[str, np.ndarray]:
        """What the guard knows about the run so far (for a checkpoint): the epochs of its
        events (-1 for none), whether the last epoch was flagged (the end of training acts on
        it) and the last healthy weights."""
        epochs = {name: getattr(self, name) for name in self.EPOCHS}
        state = {f"guard:{name}": np.array(-1 if value is None else value) for name, value in epochs.items()}
        state["guard:last_collapsed"] = np.array(self._last_collapsed)
        for i, weight in enumerate(self._healthy or []):
            state[f"guard:weight_{i}"] = weight
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Put back what :meth:`state` returned (a resumed run)."""
        for name in self.EPOCHS:
            value = int(state[f"guard:{name}"])
            setattr(self, name, None if value < 0 else value)
        self._last_collapsed = bool(state.get("guard:last_collapsed", False))
        count = sum(key.startswith("guard:weight_") for key in state)
        self._healthy = [state[f"guard:weight_{i}"] for i in range(count)] or None

    def on_train_begin(self, logs=None):
        if self._healthy is not None:  # resumed: the state came from the checkpoint
            return
        self._healthy, self._healthy_epoch = self.model.get_weights(), None
        if self.check()["collapsed"]:
            warnings.warn(
                "The clustering is already unbalanced before training (a cluster is empty or tiny "
                "at initialisation); the collapse check will act after the first epoch.",
                DeepstabNote,
                stacklevel=2,
            )

    def on_epoch_end(self, epoch, logs=None):
        state = self.check()
        if logs is not None:
            logs.update(state)
        if not state["collapsed"]:
            self._healthy, self._healthy_epoch = self.model.get_weights(), epoch
            return
        first = self.collapsed_epoch is None
        if first:
            self.collapsed_epoch = epoch
        falling_back = self.action == "fallback" and self.fallback_epoch is None
        action = "fallback" if falling_back else "warn" if self.action == "fallback" else self.action
        if first or action != "warn":
            warnings.warn(
                f"Clustering is collapsing at epoch {epoch + 1}: {int(state['clusters_alive'])} of "
                f"{self.n_clusters} clusters in use, the smallest holds {state['min_cluster_share']:.1%} "
                f"of the checked samples. Action: {action}.",
                DeepstabNote,
                stacklevel=2,
            )
        if action in ("fallback", "restore"):
            self.model.set_weights(self._healthy)
            self.restored_epoch = self._healthy_epoch
        if action in ("restore", "stop"):
            self.model.stop_training = True
            self.stopped_epoch = epoch
        if falling_back:
            self.fallback_epoch = epoch
            self.model.size_prior_weight = max(self.model.size_prior_weight, self.fallback_prior)
        self._last_collapsed = True

    def on_epoch_begin(self, epoch, logs=None):
        self._last_collapsed = False

    def on_train_end(self, logs=None):
        if self.action == "fallback" and self._last_collapsed and self.fallback_epoch is not None:
            self.model.set_weights(self._healthy)
            self.restored_epoch = self._healthy_epoch
