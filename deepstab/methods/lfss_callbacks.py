"""The epoch-end work of LFSS (Algorithm 1): stabilities, k-means pseudo-labels and the
predecessor copy."""

from __future__ import annotations

import keras
import numpy as np


class LFSSEpochEnd(keras.callbacks.Callback):
    """End of every epoch: after the warm-up (epoch ``>= eta``), recompute stabilities and
    k-means pseudo-labels from the target (they feed ``L_C`` in the next epoch); then copy
    the target into the predecessor. Logs ``mean_stability`` once labels exist."""

    def __init__(self, x: np.ndarray):
        super().__init__()
        self.x = x

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        if model.use_stability and epoch + 1 >= model.eta:
            stability = model.refresh_pseudo_labels(self.x)
            if logs is not None:
                logs["mean_stability"] = float(np.mean(stability))
        model.copy_target_to_predecessor()
