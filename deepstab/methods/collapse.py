"""The collapse check of the centroid methods: a cluster that empties or shrinks far below an
even share stops or redirects training (DECS keeps one by default)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
from sklearn.cluster import KMeans

from deepstab import checks, seeding
from deepstab.errors import DeepstabNote
from deepstab.methods.brb import zero_optimizer_moments
from deepstab.metrics import cluster_sizes

COLLAPSE_ACTIONS = ("fallback", "split", "restart", "restore", "stop", "warn")
MAX_SPLITS = 3  # "split" refills clusters at most this many times, then falls back
MAX_RESTARTS = 2  # "restart" starts clustering over at most this many times, then falls back
FALLING_BACK = ("fallback", "split", "restart")  # the actions that end in the fallback


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
            weights; ``"warn"`` only warns. ``"split"`` keeps the weights and the loss and
            refills each shrunken cluster by splitting another in two: of the 2-means splits of
            every other cluster's embeddings on the sample, the one that lowers the squared error
            most (the likeliest merge of two classes; bisecting k-means's rule), one half keeping
            its centroid's index and the other taking the shrunken one's; at most ``MAX_SPLITS``
            times, then as ``"fallback"``. ``"restart"`` (DECS) starts clustering over: the
            weights of the start of training put back, the optimizer's moments zeroed and the
            centroids set to the next-best start (``model.next_start``: the start rule's choice
            among the k-means partitions unlike those tried); at most ``MAX_RESTARTS`` times,
            then as ``"fallback"``.
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
        self.x = x
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
        self.split_epochs: list[int] = []
        self.splits: list[tuple[int, int]] = []  # (refilled cluster, split cluster)
        self.restart_epochs: list[int] = []
        self._initial: list | None = None  # the weights at the start of training ("restart")

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
        state["guard:split_epochs"] = np.array(self.split_epochs, np.int64)
        state["guard:splits"] = np.array(self.splits, np.int64).reshape(-1, 2)
        state["guard:restart_epochs"] = np.array(self.restart_epochs, np.int64)
        for i, weight in enumerate(self._healthy or []):
            state[f"guard:weight_{i}"] = weight
        for i, weight in enumerate(self._initial or []):
            state[f"guard:initial_{i}"] = weight
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Put back what :meth:`state` returned (a resumed run)."""
        for name in self.EPOCHS:
            value = int(state[f"guard:{name}"])
            setattr(self, name, None if value < 0 else value)
        self._last_collapsed = bool(state.get("guard:last_collapsed", False))
        self.split_epochs = [int(e) for e in state.get("guard:split_epochs", [])]
        self.splits = [(int(a), int(b)) for a, b in state.get("guard:splits", np.zeros((0, 2)))]
        self.restart_epochs = [int(e) for e in state.get("guard:restart_epochs", [])]
        count = sum(key.startswith("guard:weight_") for key in state)
        self._healthy = [state[f"guard:weight_{i}"] for i in range(count)] or None
        count = sum(key.startswith("guard:initial_") for key in state)
        self._initial = [state[f"guard:initial_{i}"] for i in range(count)] or None

    def on_train_begin(self, logs=None):
        if self._healthy is not None:  # resumed: the state came from the checkpoint
            return
        self._healthy, self._healthy_epoch = self.model.get_weights(), None
        if self.action == "restart":
            self._initial = self._healthy
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
        if self.action == "split" and len(self.split_epochs) < MAX_SPLITS and self.fallback_epoch is None:
            self._split(epoch)
            return
        restarting = self.action == "restart" and len(self.restart_epochs) < MAX_RESTARTS
        if restarting and self.fallback_epoch is None and self._restart(epoch):
            return
        fallback = self.action in FALLING_BACK
        falling_back = fallback and self.fallback_epoch is None
        action = "fallback" if falling_back else "warn" if fallback else self.action
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

    def _split(self, epoch: int) -> None:
        """Refill every shrunken cluster by the best 2-means split of another (see ``action``)."""
        z = np.asarray(self.model.embed(self.sample), np.float64)
        centres = np.asarray(keras.ops.convert_to_numpy(self.model.clustering.centroids), np.float64)
        labels = np.argmin(((z[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        sizes = np.bincount(labels, minlength=self.n_clusters)
        shrunken = [
            int(k) for k in np.argsort(sizes, kind="stable") if sizes[k] * self.n_clusters < self.min_share * len(z)
        ]
        for k in shrunken:
            seed = seeding.derive(getattr(self.model, "seed", 0) or 0, "kmeans", 1000 + len(self.splits))
            best = None
            for j in range(self.n_clusters):  # the split that lowers the squared error most
                members = np.flatnonzero(labels == j)
                if j in shrunken or len(members) < 2:
                    continue
                halves = KMeans(2, n_init=3, random_state=seed).fit(z[members])
                gain = ((z[members] - z[members].mean(axis=0)) ** 2).sum() - halves.inertia_
                if best is None or gain > best[0]:
                    best = (gain, j, members, halves)
            if best is None:
                break
            _, donor, members, halves = best
            big = int(np.argmax(np.bincount(halves.labels_, minlength=2)))
            centres[donor], centres[k] = halves.cluster_centers_[big], halves.cluster_centers_[1 - big]
            labels[members[halves.labels_ != big]] = k
            self.splits.append((k, donor))
        self.model.clustering.centroids.assign(centres.astype(np.float32))
        self.split_epochs.append(epoch)
        warnings.warn(
            f"Clusters {', '.join(map(str, shrunken))} shrank below {self.min_share:.0%} of an even share at epoch "
            f"{epoch + 1}: each was refilled by splitting in two the cluster whose split lowers the squared error most "
            f"({len(self.split_epochs)} of at most {MAX_SPLITS} times).",
            DeepstabNote,
            stacklevel=2,
        )

    def _restart(self, epoch: int) -> bool:
        """Start clustering over from the next-best start (see ``action``); ``False``, with the
        current weights kept, when every k-means partition is like one tried."""
        model = self.model
        current = model.get_weights(), model.size_target, model.start_choice
        model.set_weights(self._initial)
        unlike = [model.predict_labels(self.x)]  # the first start's partition
        for _ in range(len(self.restart_epochs) + 1):  # and those of the restarts before
            start = model.next_start(self.x, unlike)
            if start is None:
                model.set_weights(current[0])
                model.size_target, model.start_choice = current[1:]
                return False
            unlike.append(start.labels)
        zero_optimizer_moments(model.optimizer, model.trainable_variables)
        self.restart_epochs.append(epoch)
        self._healthy, self._healthy_epoch = model.get_weights(), None
        warnings.warn(
            f"Clustering is collapsing at epoch {epoch + 1}: it starts over from the weights of its start and the "
            f"next-best k-means start, unlike those tried (+{start.excess:.1%} inertia over the lowest, smallest "
            f"cluster {start.min_share:.2f} of an even share; {len(self.restart_epochs)} of at most {MAX_RESTARTS} "
            f"restarts).",
            DeepstabNote,
            stacklevel=2,
        )
        return True

    def on_epoch_begin(self, epoch, logs=None):
        self._last_collapsed = False

    def on_train_end(self, logs=None):
        if self.action in FALLING_BACK and self._last_collapsed and self.fallback_epoch is not None:
            self.model.set_weights(self._healthy)
            self.restored_epoch = self._healthy_epoch
