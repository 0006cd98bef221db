"""What a run tells its user about time: the estimated wall time of each long stage, printed
once its first steps have been timed."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.4 h`` or ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class TimeEstimate(keras.callbacks.Callback):
    """Print, once, the estimated wall time of the training steps of a stage: the time of
    ``after`` steps (after a first, warm-up step) times the steps left. ``advice(seconds)`` may
    add a sentence (LFSS suggests a smaller preset on a machine without a GPU).

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> estimate = TimeEstimate("fitting", after=2)
    >>> _ = model.fit(np.ones((16, 2)), np.ones((16, 1)), batch_size=2, epochs=3, verbose=0, callbacks=[estimate])
    ... # doctest: +ELLIPSIS
    Estimated time for fitting: ... (24 steps)
    >>> estimate.seconds > 0
    True
    """

    def __init__(self, stage: str, after: int = 5, advice: Callable[[float], str | None] | None = None):
        super().__init__()
        self.stage, self.after, self.advice = stage, max(int(after), 1), advice
        self.seconds: float | None = None

    def on_train_begin(self, logs=None):
        self._first_epoch, self._steps, self._start = None, 0, None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is not None:
            return
        self._steps += 1
        if self._steps == 1:
            self._start = time.perf_counter()
            return
        if self._steps - 1 < self.after:
            return
        per_step = (time.perf_counter() - self._start) / (self._steps - 1)
        per_epoch = self.params.get("steps") or 1
        total = per_epoch * (self.params["epochs"] - (self._first_epoch or 0))
        self.seconds = per_step * total
        line = f"Estimated time for {self.stage}: {duration(self.seconds)} ({total:,} steps)"
        extra = self.advice(self.seconds) if self.advice else None
        print(line + (f". {extra}" if extra else ""), flush=True)
