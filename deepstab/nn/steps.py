"""What every model's torch-backend ``train_step`` shares: the images of a batch, and a
backward pass with an optimizer update."""

from __future__ import annotations

import keras
import torch


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


def clip_by_global_norm(grads: list, max_norm: float) -> list:
    """``grads`` scaled in place by ``min(1, max_norm / (||grads|| + 1e-6))``, their global L2
    norm, as ``torch.nn.utils.clip_grad_norm_``; returns them."""
    if not grads:
        return grads
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return grads
