"""Training data read batch by batch: an image array in memory or memory-mapped from the
uint8 disk store, with the indices of each batch so that a training step can look up
per-sample state (pseudo-labels, stabilities, DEC's target distribution)."""

from __future__ import annotations

import keras
import numpy as np

from deepstab import distributed
from deepstab.datasets.store import to_unit_float
from deepstab.errors import DeepstabError


class IndexedImages(keras.utils.PyDataset):
    """Batches ``(x[batch], batch indices)`` of an image array, reshuffled every epoch, so that
    ``train_step`` can look up each sample's pseudo-label and stability. ``x`` may be float in
    [0, 1] or uint8, in memory or memory-mapped from disk (``datasets.load(..., stream=True)``):
    only the batch is read and converted to float32. With ``drop_last=False`` the last, smaller
    batch is kept too (unless it would give a process fewer than two images).

    The order of epoch ``e`` is a function of ``(seed, e)`` alone (:attr:`epoch` counts the
    epochs; set it to resume), so a resumed run reads the batches an uninterrupted one reads.
    Under :mod:`deepstab.distributed` with N processes, a step reads a global batch of
    ``N * batch_size`` images, the same permutation on every rank, and each rank its own
    contiguous slice of it (:func:`~deepstab.distributed.shard`); the indices a batch comes with
    are then those of the global batch, every rank's rows in rank order, so a step knows every
    rank's rows without asking (alone, they are the batch's own).
    """

    def __init__(
        self,
        x: np.ndarray,
        batch_size: int,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.x, self.batch_size, self.shuffle, self.drop_last = x, int(batch_size), shuffle, bool(drop_last)
        self.seed = int(distributed.broadcast_object(np.random.SeedSequence().entropy if seed is None else seed))
        self.world = distributed.world_size()
        self.epoch = 0
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def global_batch(self) -> int:
        """Images per step over all processes."""
        return self.batch_size * self.world

    def __len__(self) -> int:
        n, g = len(self.x), self.global_batch
        if not self.drop_last and n % g >= 2 * self.world:  # a batch of one cannot be normalised
            return -(-n // g)
        return max(n // g, 1)  # full batches only

    @property
    def order(self) -> np.ndarray:
        """This epoch's order of the samples (the same on every rank)."""
        if self._order is None or self._order[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = (self.epoch, rng.permutation(len(self.x)) if self.shuffle else np.arange(len(self.x)))
        return self._order[1]

    def __getitem__(self, i):
        batch = self.order[i * self.global_batch : (i + 1) * self.global_batch]
        parts = [np.sort(batch[distributed.shard(len(batch), self.world, r)]) for r in range(self.world)]
        return to_unit_float(self.x[parts[distributed.rank()]]), np.concatenate(parts)

    def on_epoch_end(self):
        self.epoch += 1


def indexed_batches(
    x,
    image_shape: tuple[int, ...],
    n_clusters: int,
    batch_size: int,
    shuffle: bool,
    seed: int | None,
    who: str,
    drop_last: bool = True,
) -> keras.utils.PyDataset:
    """``x`` itself when it is a ``PyDataset`` of indexed batches, else an :class:`IndexedImages`
    of the image array ``x`` (checked: images of ``image_shape``, at least ``n_clusters`` of
    them) in batches of ``batch_size`` (at most ``len(x)``), the last smaller one kept unless
    ``drop_last``. ``who`` names the caller in errors."""
    if isinstance(x, keras.utils.PyDataset):
        return x
    if not isinstance(x, np.ndarray) or x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise DeepstabError(
            f"{who} needs images as an array of shape (N, {', '.join(map(str, image_shape))}), "
            f"got {getattr(x, 'shape', type(x).__name__)}."
        )
    if len(x) < max(n_clusters, 2):
        raise DeepstabError(f"{len(x)} images are too few for {n_clusters} clusters.")
    return IndexedImages(x, min(batch_size, len(x)), shuffle=shuffle, seed=seed, drop_last=drop_last)
