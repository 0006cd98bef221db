"""The callback that records every sample's stability while a model trains (LFSS §3)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from deepstab.analysis.measures import cosine_stability
from deepstab.analysis.report import write_report
from deepstab.errors import DeepstabError


class SampleStabilityTracker(keras.callbacks.Callback):
    """Record every sample's stability during ``fit`` (LFSS §3).

    The un-augmented images ``x`` are embedded once when training begins and again
    after every ``every``-th epoch; each tracked epoch stores the cosine between the
    new embeddings and those of the previous tracked point (the previous epoch when
    ``every=1``). That costs one forward pass over ``x`` per tracked epoch, plus one
    at the start; ``seconds`` holds the time spent.

    Stabilities are kept as a float16 array of shape (tracked epochs, N) holding
    ``1 - stability`` (float16 keeps about 3 significant digits of it for stabilities
    close to 1, where a float16 of the stability itself would round most samples to the
    same value), in memory, or on disk as ``directory/instability.npy`` (a memory map)
    when ``directory`` is given, which bounds memory for large N.

    Args:
        x: the training images (or any array the encoder takes), un-augmented.
        every: track every this many epochs.
        embed: a callable or Keras model mapping a batch array to embeddings. Default:
            the trained model's ``embed`` method, else its ``predict``.
        batch_size: batch size of the embedding passes.
        directory: where to keep the stability array on disk; ``None`` keeps it in memory.

    Example:

    >>> import numpy as np, keras
    >>> from deepstab.analysis.tracker import SampleStabilityTracker
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> tracker = SampleStabilityTracker(x)
    >>> _ = model.fit(x, x[:, :3], epochs=2, verbose=0, callbacks=[tracker])
    >>> tracker.stability.shape, tracker.epochs
    ((2, 64), [1, 2])
    """

    def __init__(
        self,
        x: np.ndarray,
        every: int = 1,
        embed: Callable[[np.ndarray], np.ndarray] | keras.Model | None = None,
        batch_size: int = 1024,
        directory: str | Path | None = None,
    ):
        super().__init__()
        if int(every) < 1:
            raise DeepstabError(f"every must be a positive number of epochs, got {every}.")
        if len(x) < 2:
            raise DeepstabError(f"Stability tracking needs at least 2 samples, got {len(x)}.")
        self.x, self.every, self.batch_size = x, int(every), int(batch_size)
        self._embed = embed
        self.directory = Path(directory) if directory is not None else None
        self.epochs: list[int] = []
        self.seconds = 0.0
        self._store: np.ndarray | None = None
        self._previous: np.ndarray | None = None

    def embed(self) -> np.ndarray:
        """Embeddings of ``x`` under the encoder as it is now."""
        fn = self._embed
        if fn is None:
            fn = getattr(self.model, "embed", None)
            if fn is None:
                return self.model.predict(self.x, batch_size=self.batch_size, verbose=0)
            return fn(self.x, batch_size=self.batch_size)
        if isinstance(fn, keras.Model):
            return fn.predict(self.x, batch_size=self.batch_size, verbose=0)
        return np.asarray(fn(self.x))

    def _timed_embed(self) -> np.ndarray:
        start = time.perf_counter()
        z = np.asarray(self.embed(), dtype=np.float32)
        self.seconds += time.perf_counter() - start
        return z

    def on_train_begin(self, logs=None):
        total = int(self.params.get("epochs") or 1)
        slots = max(total // self.every, 1)
        shape = (slots, len(self.x))
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._store = np.lib.format.open_memmap(self.directory / "instability.npy", "w+", np.float16, shape)
        else:
            self._store = np.zeros(shape, np.float16)
        self.epochs = []
        self._previous = self._timed_embed()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every or len(self.epochs) >= len(self._store):
            return
        current = self._timed_embed()
        self._store[len(self.epochs)] = 1.0 - cosine_stability(current, self._previous)
        self.epochs.append(epoch + 1)
        self._previous = current

    @property
    def stability(self) -> np.ndarray:
        """(tracked epochs, N) float32 stabilities, one row per entry of ``epochs``."""
        if self._store is None:
            raise DeepstabError("No stability recorded yet: pass the tracker to fit() first.")
        return 1.0 - self._store[: len(self.epochs)].astype(np.float32)

    def report(
        self, output_dir: str | Path, y: np.ndarray | None = None, clusters: np.ndarray | None = None, **kwargs
    ) -> dict:
        """Write ``stability.csv``, ``summary.json`` and (with matplotlib) the pictures and
        ``report.html`` to ``output_dir``; return the summary. ``clusters`` defaults to the
        model's ``predict_labels(x)`` when it has one."""
        if clusters is None and hasattr(self.model, "predict_labels"):
            clusters = self.model.predict_labels(self.x)
        return write_report(output_dir, self.x, self.stability, self.epochs, y=y, clusters=clusters, **kwargs)
