"""What every model's torch-backend ``train_step`` shares: the images of a batch, and a
backward pass with an optimizer update."""

from __future__ import annotations

import inspect

import keras
import torch

try:  # Keras's scope in which float32 weights read as the layer's compute dtype (not public API)
    from keras.src.backend import AutocastScope
except ImportError:  # mixed-precision models are then called through Keras's __call__
    AutocastScope = None


def images_of(data):
    """The images of a batch given as ``x``, ``(x,)`` or ``(x, y[, w])``."""
    return data[0] if isinstance(data, (tuple, list)) else data


def apply_gradients(model: keras.Model, loss, variables: list, transform=None) -> None:
    """Back-propagate ``loss`` and let the model's optimizer update ``variables``.

    ``transform(grads, variables) -> grads`` may rewrite the gradients first (LFSS adds
    weight decay and scales the predictor's). Under float16 mixed precision the optimizer is a
    ``LossScaleOptimizer``: the loss is multiplied by its scale before the backward pass, and
    ``transform`` sees the gradients divided by it (the true gradients).
    """
    optimizer = model.optimizer
    model.zero_grad()
    optimizer.scale_loss(loss).backward()
    with torch.no_grad():
        grads = [v.value.grad for v in variables]
        if transform is not None:
            scale = _loss_scale(optimizer)
            if scale is None:
                grads = transform(grads, variables)
            else:
                grads = transform([None if g is None else g / scale for g in grads], variables)
                grads = [None if g is None else g * scale for g in grads]
        optimizer.apply(grads, variables)


def _loss_scale(optimizer: keras.optimizers.Optimizer):
    """The factor :meth:`scale_loss` multiplies the loss by; ``None`` when it leaves it as it is."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.dynamic_scale.value if optimizer.built else optimizer.initial_scale
    return optimizer.loss_scale_factor


def clip_by_global_norm(grads: list, max_norm: float) -> list:
    """``grads`` scaled in place by ``min(1, max_norm / (||grads|| + 1e-6))``, their global L2
    norm, as ``torch.nn.utils.clip_grad_norm_``; returns them."""
    if not grads:
        return grads
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return grads


def graph_call(model: keras.Model, x, training: bool = False):
    """``model(x, training=training)`` for a functional model of one input and one output, run
    through its graph with each layer's ``call`` called directly (nested functional models the
    same way). Keras's ``__call__`` (input checks, masking, autocasting, name scopes) costs about
    0.1 ms per layer on the torch backend: a tenth of a small network's training step on a CPU,
    and several milliseconds per ResNet-18 call; layers on unmasked tensors need none of it. In
    a mixed-precision model each layer's floating inputs are cast to its compute dtype and its
    call runs in Keras's autocast scope (its float32 weights read in that dtype), as ``__call__``
    does. Other models are called as usual.

    Invariant: the result equals ``model(x, training=training)`` (``tests/test_layers.py``).
    """
    plan = model.__dict__.get("_deepstab_plan")
    if plan is None:  # kept on the model itself, outside Keras's attribute tracking
        plan = _plan(model)
        object.__setattr__(model, "_deepstab_plan", plan)
    if not plan:
        return model(x, training=training)
    steps, n_slots, output = plan
    values = [None] * n_slots
    values[0] = x if torch.is_tensor(x) else keras.ops.convert_to_tensor(x)
    for call, takes_training, sources, many, target in steps:
        inputs = [values[i] for i in sources] if many else values[sources[0]]
        values[target] = call(inputs, training=training) if takes_training else call(inputs)
    return values[output]


def _plan(model: keras.Model) -> tuple | None:
    """``(steps, number of slots, output slot)`` for :func:`graph_call`, each step ``(call, takes
    training, input slots, inputs as a list, output slot)`` in an order that computes every
    input first; ``None`` when the model is not a plain functional graph of float layers."""
    try:
        (model_input,), (model_output,) = model.inputs, model.outputs
        nodes_by_depth = model._nodes_by_depth
    except (AttributeError, TypeError, ValueError):  # not functional, or several inputs or outputs
        return None
    dtypes = {node.operation.compute_dtype for nodes in nodes_by_depth.values() for node in nodes if not node.is_input}
    mixed = dtypes != {"float32"}
    if not dtypes <= {"float32", "bfloat16", "float16"} or (mixed and AutocastScope is None):
        return None
    slots = {id(model_input): 0}
    steps = []
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.is_input:
                continue
            layer, args = node.operation, node.arguments.args
            many = len(args) == 1 and isinstance(args[0], (list, tuple))
            sources = list(args[0]) if many else list(args)
            masked = any(v is not None for v in node.arguments.kwargs.values())  # Keras records mask=None
            if masked or (not many and len(args) != 1) or len(node.outputs) != 1:
                return None
            if not isinstance(layer, keras.layers.Layer):
                return None
            if any(id(t) not in slots for t in sources):
                return None
            if isinstance(layer, keras.Model):
                if _plan(layer) is None:
                    return None
                call, takes_training = (lambda inner: lambda h, training: graph_call(inner, h, training))(layer), True
            else:
                call, takes_training = layer.call, "training" in inspect.signature(layer.call).parameters
                if mixed and layer.autocast:
                    call = _in_precision(call, layer.compute_dtype, layer.compute_dtype != layer.variable_dtype)
            slots[id(node.outputs[0])] = len(slots)
            steps.append((call, takes_training, [slots[id(t)] for t in sources], many, slots[id(node.outputs[0])]))
    if id(model_output) not in slots:
        return None
    return steps, len(slots), slots[id(model_output)]


def _in_precision(call, dtype: str, scoped: bool):
    """``call`` with its floating inputs cast to ``dtype``, within Keras's autocast scope of
    ``dtype`` when ``scoped`` (a layer whose weights are of another dtype than it computes in)."""
    target = getattr(torch, dtype)

    def cast(x):
        return x.to(target) if torch.is_tensor(x) and x.is_floating_point() and x.dtype != target else x

    def run(inputs, **kwargs):
        inputs = [cast(x) for x in inputs] if isinstance(inputs, (list, tuple)) else cast(inputs)
        if not scoped:
            return call(inputs, **kwargs)
        with AutocastScope(dtype):
            return call(inputs, **kwargs)

    return run
