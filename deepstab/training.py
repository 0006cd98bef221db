"""Pieces shared by the models' torch-backend ``train_step``s."""

from __future__ import annotations

import keras
import numpy as np
import torch

from deepstab.image_store import to_unit_float


def images_of(data):
    """The images of a batch given as ``x``, ``(x,)`` or ``(x, y[, w])``."""
    return data[0] if isinstance(data, (tuple, list)) else data


def apply_gradients(model: keras.Model, loss, variables: list, transform=None) -> None:
    """Back-propagate ``loss`` and let the model's optimizer update ``variables``.

    ``transform(grads, variables) -> grads`` may rewrite the gradients first (LFSS adds
    weight decay and scales the predictor's).
    """
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        grads = [v.value.grad for v in variables]
        if transform is not None:
            grads = transform(grads, variables)
        model.optimizer.apply(grads, variables)


class IndexedImages(keras.utils.PyDataset):
    """Batches ``(x[batch], batch indices)`` of an image array, reshuffled every epoch, so that
    ``train_step`` can look up each sample's pseudo-label and stability. ``x`` may be float in
    [0, 1] or uint8, in memory or memory-mapped from disk (``datasets.load(..., stream=True)``):
    only the batch is read and converted to float32."""

    def __init__(self, x: np.ndarray, batch_size: int, shuffle: bool = True, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.x, self.batch_size, self.shuffle = x, int(batch_size), shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

    def __len__(self) -> int:
        return len(self.x) // self.batch_size if len(self.x) >= self.batch_size else 1  # full batches, as the papers

    def __getitem__(self, i):
        index = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        return to_unit_float(self.x[index]), index

    def on_epoch_end(self):
        if self.shuffle:
            self.order = self.rng.permutation(len(self.x))
