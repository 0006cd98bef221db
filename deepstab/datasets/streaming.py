"""Training data read batch by batch: an image array in memory or memory-mapped from the
uint8 disk store, with the indices of each batch so that a training step can look up
per-sample state (pseudo-labels, stabilities, DEC's target distribution)."""

from __future__ import annotations

import keras
import numpy as np

from deepstab.datasets.store import to_unit_float
from deepstab.errors import DeepstabError


class IndexedImages(keras.utils.PyDataset):
    """Batches ``(x[batch], batch indices)`` of an image array, reshuffled every epoch, so that
    ``train_step`` can look up each sample's pseudo-label and stability. ``x`` may be float in
    [0, 1] or uint8, in memory or memory-mapped from disk (``datasets.load(..., stream=True)``):
    only the batch is read and converted to float32. With ``drop_last=False`` the last, smaller
    batch is kept too (unless it would hold a single image)."""

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
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        if not self.drop_last and len(self.x) % self.batch_size != 1:  # a batch of one cannot be normalised
            return -(-len(self.x) // self.batch_size)
        return len(self.x) // self.batch_size if len(self.x) >= self.batch_size else 1  # full batches only

    def __getitem__(self, i):
        index = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        return to_unit_float(self.x[index]), index

    def on_epoch_end(self):
        if self.shuffle:
            self.order = self.rng.permutation(len(self.x))


def indexed_batches(
    x, image_shape: tuple[int, ...], n_clusters: int, batch_size: int, shuffle: bool, seed: int | None, who: str
) -> keras.utils.PyDataset:
    """``x`` itself when it is a ``PyDataset`` of indexed batches, else an :class:`IndexedImages`
    of the image array ``x`` (checked: images of ``image_shape``, at least ``n_clusters`` of
    them) in batches of ``batch_size`` (at most ``len(x)``). ``who`` names the caller in errors."""
    if isinstance(x, keras.utils.PyDataset):
        return x
    if not isinstance(x, np.ndarray) or x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise DeepstabError(
            f"{who} needs images as an array of shape (N, {', '.join(map(str, image_shape))}), "
            f"got {getattr(x, 'shape', type(x).__name__)}."
        )
    if len(x) < max(n_clusters, 2):
        raise DeepstabError(f"{len(x)} images are too few for {n_clusters} clusters.")
    return IndexedImages(x, min(batch_size, len(x)), shuffle=shuffle, seed=seed)
