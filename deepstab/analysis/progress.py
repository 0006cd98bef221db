"""Watching a training run: how many samples change cluster between checks (a rate near 0
is the "reclustering barrier" of BRB, ICLR 2025 §3) and, with labels, ACC/NMI/ARI."""

from __future__ import annotations

import keras
import numpy as np

from deepstab.metrics import cluster_accuracy, evaluate


class LabelMetrics(keras.callbacks.Callback):
    """Every ``every`` epochs, label ``x`` with the current model and log ``label_change``
    (the share of samples whose cluster changed since the last check, under the best
    one-to-one matching of old and new cluster ids, so that a re-clustering that only
    renames the clusters counts as no change; the first check compares with the labels
    at the start of training) and, when ``y`` is given, ACC/NMI/ARI.

    For watching a run only (a label change rate near 0 is the "reclustering barrier" of
    BRB): the labels never steer training or model selection.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None, every: int = 10):
        super().__init__()
        self.x, self.y, self.every = x, y, max(int(every), 1)
        self.previous: np.ndarray | None = None

    def on_train_begin(self, logs=None):
        self.previous = self.model.predict_labels(self.x)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        labels = self.model.predict_labels(self.x)
        if self.previous is not None:
            logs["label_change"] = 1.0 - cluster_accuracy(self.previous, labels)
        self.previous = labels
        if self.y is not None:
            logs.update(evaluate(self.y, labels))
