"""The epoch-end work of LFSS (Algorithm 1): stabilities, k-means pseudo-labels and the
predecessor copy; and, under torchrun, what keeps the ranks one model."""

from __future__ import annotations

import keras
import numpy as np

from deepstab import distributed

# Added to the seed of every random generator, times the rank: each rank draws its own views.
RANK_SEED_STRIDE = 1_000_003


class LFSSEpochEnd(keras.callbacks.Callback):
    """End of every epoch: under torchrun, average the moving statistics over the ranks; after
    the warm-up (epoch ``>= eta``), recompute stabilities and k-means pseudo-labels from the
    target (they feed ``L_C`` in the next epoch); then copy the target into the predecessor.
    Logs ``mean_stability`` once labels exist."""

    def __init__(self, x: np.ndarray):
        super().__init__()
        self.x = x

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        model.average_moving_statistics()
        if model.use_stability and epoch + 1 >= model.eta:
            stability = model.refresh_pseudo_labels(self.x)
            if logs is not None:
                logs["mean_stability"] = float(np.mean(stability))
        model.copy_target_to_predecessor()


class RankSync(keras.callbacks.Callback):
    """Under torchrun, at the start of training: every variable of the model and its optimizer
    and the per-sample state from rank 0 (also after a resume, which rank 0 loads), then each
    rank's random generators moved to their own stream (rank 0's is the saved one)."""

    def on_train_begin(self, logs=None):
        model = self.model
        variables = {id(v): v for v in model.variables}
        if model.optimizer is not None and model.optimizer.built:
            variables |= {id(v): v for v in model.optimizer.variables}
        distributed.broadcast_variables(list(variables.values()))
        model.restore_training_state(distributed.broadcast_object(model.training_state()))
        for generator in model.random_generators():
            state = np.asarray(generator.state.value.cpu())
            generator.state.assign(state + np.array([RANK_SEED_STRIDE * distributed.rank(), 0], state.dtype))
