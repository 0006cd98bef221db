"""Adam and SGD with PyTorch's update arithmetic, in place, for the steps whose speed (and, for
SGD under a schedule, whose numbers) are compared with plain PyTorch.

Keras's Adam on the torch backend computes the same update with five temporary tensor lists per
step; on a network of a few million weights that memory traffic is a measurable share of a CPU
step. :class:`Adam` updates the moments and the weights in place (``lerp_``, ``addcmul_``,
``addcdiv_``), as ``torch.optim.Adam`` does, and keeps the bias correction on the device.

Example:

>>> import keras
>>> from deepstab.nn.optimizers import Adam
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
>>> model.compile(optimizer=Adam(1e-3, epsilon=1e-8), loss="mse")
>>> _ = model.fit(keras.ops.ones((4, 3)), keras.ops.ones((4, 1)), epochs=1, verbose=0)
"""

from __future__ import annotations

import keras
import torch


@keras.saving.register_keras_serializable(package="deepstab")
class Adam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` (same arguments, state and saved form, ``amsgrad`` excluded)
    whose update runs in place: ``m ← m + (1 - β1)(g - m)``, ``v ← β2 v + (1 - β2) g²``,
    ``θ ← θ - lr sqrt(1 - β2^t) / (1 - β1^t) · m / (sqrt(v) + ε)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("deepstab's in-place Adam has no amsgrad; use keras.optimizers.Adam.")

    @torch.no_grad()
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        params = [v.value for v in trainable_variables]
        index = [self._get_variable_index(v) for v in trainable_variables]
        m = [self._momentums[i].value for i in index]
        v = [self._velocities[i].value for i in index]
        step = (self.iterations.value + 1).to(params[0].dtype)
        lr = _learning_rate(learning_rate, params[0].dtype)
        alpha = lr * torch.sqrt(1 - self.beta_2**step) / (1 - self.beta_1**step)
        torch._foreach_lerp_(m, grads, 1 - self.beta_1)
        torch._foreach_mul_(v, self.beta_2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - self.beta_2)
        denominator = torch._foreach_sqrt(v)
        torch._foreach_add_(denominator, self.epsilon)
        torch._foreach_div_(denominator, alpha)
        torch._foreach_addcdiv_(params, m, denominator, value=-1.0)


@keras.saving.register_keras_serializable(package="deepstab")
class SGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with PyTorch's momentum: ``b ← μ b + g``, ``θ ← θ - lr b``, in place
    and with the learning rate kept on the device. Keras's SGD keeps ``v ← μ v - lr g`` instead,
    which differs whenever the learning rate changes between steps (every step, under a
    schedule). Same arguments, state and saved form as Keras's (``nesterov`` excluded)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.nesterov:
            raise ValueError("deepstab's SGD has no Nesterov momentum; use keras.optimizers.SGD.")

    @torch.no_grad()
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        params = [v.value for v in trainable_variables]
        lr = _learning_rate(learning_rate, params[0].dtype)
        if not self.momentum:
            torch._foreach_sub_(params, torch._foreach_mul(grads, lr))
            return
        buffers = [self.momentums[self._get_variable_index(v)].value for v in trainable_variables]
        torch._foreach_mul_(buffers, self.momentum)
        torch._foreach_add_(buffers, grads)
        torch._foreach_sub_(params, torch._foreach_mul(buffers, lr))


def _learning_rate(learning_rate, dtype: torch.dtype) -> torch.Tensor:
    """The step's learning rate (a Keras variable or a number) as a tensor of ``dtype``."""
    lr = learning_rate.value if hasattr(learning_rate, "value") else torch.as_tensor(learning_rate)
    return lr.to(dtype)
