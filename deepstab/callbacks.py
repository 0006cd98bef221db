"""Keras callbacks shared by the clustering models."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from deepstab.metrics import evaluate

COLLAPSE_ACTIONS = ("restore", "stop", "warn")


class CollapseGuard(keras.callbacks.Callback):
    """Detect a collapsing clustering and stop, restoring the last healthy weights.

    Reads ``clusters_alive`` and ``min_cluster_share`` that the model logs each
    epoch (hard assignments over the epoch's batches). The epoch counts as
    collapsed when a cluster received no sample, or when the smallest cluster
    holds less than ``min_share`` of an even share (``min_share / K`` of the data).
    Adds ``collapsed`` (0 or 1) to the logs, so the History records it.

    Every one-hot assignment is a global minimum of the DECS loss, the
    collapsed one included (DESIGN §4), so the loss itself cannot tell.

    Args:
        n_clusters: K.
        min_share: smallest acceptable cluster size relative to ``1 / K``.
        action: ``"restore"`` stops and puts back the weights of the last healthy
            epoch; ``"stop"`` stops with the current weights; ``"warn"`` only warns.
    """

    def __init__(self, n_clusters: int, min_share: float = 0.25, action: str = "restore"):
        super().__init__()
        if action not in COLLAPSE_ACTIONS:
            raise ValueError(f"action must be one of {COLLAPSE_ACTIONS}, got {action!r}.")
        if not 0.0 <= min_share < 1.0:
            raise ValueError(f"min_share must lie in [0, 1), got {min_share!r}.")
        self.n_clusters, self.min_share, self.action = int(n_clusters), float(min_share), action
        self.collapsed_epoch: int | None = None
        self.restored_epoch: int | None = None
        self._healthy: list | None = None
        self._healthy_epoch: int | None = None

    def is_collapsed(self, logs: dict) -> bool:
        return logs["clusters_alive"] < self.n_clusters or logs["min_cluster_share"] * self.n_clusters < self.min_share

    def on_train_begin(self, logs=None):
        self._healthy, self._healthy_epoch = self.model.get_weights(), None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        collapsed = self.is_collapsed(logs)
        logs["collapsed"] = float(collapsed)
        if not collapsed:
            self._healthy, self._healthy_epoch = self.model.get_weights(), epoch
            return
        if self.collapsed_epoch is None:
            self.collapsed_epoch = epoch
            warnings.warn(
                f"Clustering is collapsing at epoch {epoch + 1}: {int(logs['clusters_alive'])} of "
                f"{self.n_clusters} clusters in use, smallest holds {logs['min_cluster_share']:.1%} "
                f"of the batches' samples. Action: {self.action}.",
                stacklevel=2,
            )
        if self.action in ("restore", "stop"):
            self.model.stop_training = True
        if self.action == "restore":
            self.model.set_weights(self._healthy)
            self.restored_epoch = self._healthy_epoch


class LabelMetrics(keras.callbacks.Callback):
    """Report ACC/NMI/ARI of the current model on labelled data every ``every`` epochs.

    For watching a run only: the labels never steer training or model selection.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, every: int = 10):
        super().__init__()
        self.x, self.y, self.every = x, y, max(int(every), 1)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and (epoch + 1) % self.every == 0:
            logs.update(evaluate(self.y, self.model.predict_labels(self.x)))
