"""A run's random streams: every random draw of training is a function of the run's seed and
of what the draw is for (a stage, an epoch).

Invariant: no draw of training comes from a generator that anything else draws from. Torch's
and NumPy's global generators are not used by training: Keras's ``predict`` (a label check, the
stability tracker, the collapse guard) draws a seed from torch's global generator for each data
loader it opens, so a run that shuffled from it would change with the presence of labels, with
``--eval-every`` and across a resume. With the streams derived here, labels, metrics, logging
and interruptions never change what a run learns, and a resumed epoch draws what the
uninterrupted run drew in it.

The streams of a run seeded ``s``:

- the batch order of epoch ``e`` of stage ``t`` (pretraining, clustering):
  :class:`~deepstab.datasets.streaming.IndexedImages` seeded ``derive(s, t)``;
- the augmentations of epoch ``e`` of stage ``t``: the model's seed generators reset to
  ``derive(s, t, e, i)`` when the epoch begins (:class:`EpochSeeds`);
- k-means of the initial centroids: ``derive(s, "kmeans")``; BRB's interventions: one stream
  ``stream(s, "brb")``; DCN's epoch-end centroid pass of epoch ``e``: ``stream(s, "centroid-pass", e)``.

Example:

>>> derive(0, "clustering") == derive(0, "clustering") != derive(1, "clustering")
True
>>> 0 <= derive(0, "pretraining", 3) < 2**31
True
"""

from __future__ import annotations

import keras
import numpy as np

# What a draw is for; the numbers are part of what a seed gives.
PURPOSES = {"pretraining": 1, "clustering": 2, "kmeans": 3, "brb": 4, "centroid-pass": 5, "k-choice": 6}


def _sequence(seed: int, purpose: str, keys: tuple[int, ...]) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), PURPOSES[purpose], *(int(k) for k in keys)])


def derive(seed: int, purpose: str, *keys: int) -> int:
    """A seed in ``[0, 2**31)`` for the draws of ``purpose`` (and ``keys``, an epoch say) in the
    run seeded ``seed``."""
    return int(_sequence(seed, purpose, keys).generate_state(1)[0] >> 1)


def stream(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A NumPy generator for the draws of ``purpose`` (and ``keys``) in the run seeded ``seed``."""
    return np.random.default_rng(_sequence(seed, purpose, keys))


def model_seed(seed: int | None) -> int:
    """A model's seed: ``seed``, or one drawn from NumPy's global generator when it is ``None``
    (so ``keras.utils.set_random_seed`` fixes it), once, when the model is made."""
    return int(np.random.randint(2**31)) if seed is None else int(seed)


def generator_states(model: keras.Model) -> list:
    """The state variables of ``model``'s seed generators (its augmentations', LFSS's noise):
    the variables that are not among its weights, so ``save_weights`` leaves them out."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class EpochSeeds(keras.callbacks.Callback):
    """When each epoch begins, reset the seed generators of the trained model to
    ``derive(seed, purpose, epoch, i)`` (the ``i``-th generator): the random views of an epoch
    are a function of the seed and the epoch number, whatever ran before it."""

    def __init__(self, seed: int, purpose: str):
        super().__init__()
        self.seed, self.purpose = int(seed), purpose

    def on_epoch_begin(self, epoch, logs=None):
        for i, state in enumerate(generator_states(self.model)):
            state.assign(np.array([derive(self.seed, self.purpose, epoch, i), 0], dtype=state.dtype))
