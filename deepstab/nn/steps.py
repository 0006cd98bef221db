"""What every model's torch-backend ``train_step`` shares: the images of a batch, and a
backward pass with an optimizer update."""

from __future__ import annotations

import inspect

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


def chain_call(model: keras.Model, x, training: bool = False):
    """``model(x, training=training)`` for a functional model whose layers form one chain, with
    each layer's ``call`` run directly. Keras's ``__call__`` (input checks, masking, autocasting,
    name scopes) costs about 0.1 ms per layer on the torch backend, a tenth of a small network's
    training step on a CPU; a chain of float32 layers needs none of it. Models that are not a
    single chain are called as usual."""
    chain = model.__dict__.get("_deepstab_chain")
    if chain is None:  # kept on the model itself, outside Keras's attribute tracking
        chain = _as_chain(model)
        object.__setattr__(model, "_deepstab_chain", chain)
    if not chain:
        return model(x, training=training)
    for layer, takes_training in chain:
        x = layer.call(x, training=training) if takes_training else layer.call(x)
    return x


def _as_chain(model: keras.Model) -> list:
    """``[(layer, call takes training)]`` when every layer of ``model`` feeds the next alone, else ``[]``."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    try:
        linked = all(b.input is a.output for a, b in zip(layers, layers[1:]))
        linked = linked and layers[0].input is model.inputs[0] and layers[-1].output is model.outputs[0]
    except (AttributeError, ValueError, IndexError):  # several inbound nodes, or no layers
        return []
    if not linked or any(isinstance(layer, keras.Model) for layer in layers):
        return []
    return [(layer, "training" in inspect.signature(layer.call).parameters) for layer in layers]
