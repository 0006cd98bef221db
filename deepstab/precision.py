"""Training precision: float32, or Keras's mixed precision with bfloat16 or float16.

A model built while Keras's global dtype policy is ``mixed_bfloat16`` or ``mixed_float16``
(``keras.config.set_dtype_policy`` in a script; :func:`precision_scope`, which ``--precision``
uses) keeps every weight, optimizer slot, EMA and predecessor copy in float32 and computes its
networks' convolutions, dense layers and activations in the reduced type. Whatever the policy,
the parts whose numerics the papers rely on run in float32 (``EXACT``):

- the random views and the input standardisation and resizing (their layers are float32);
- the Student-t soft assignments (DEC Eq. 1, DECS Eq. 5; :class:`~deepstab.nn.layers.ClusteringLayer`
  is float32) and all computed from them: Otsu's threshold, DECS Eqs. 6-8, DEC's target and KL,
  DCN's distances, the size prior;
- LFSS's normalised embeddings in L_S, L_I and L_C (the losses cast their inputs first) and its
  cosine k-means;
- every embedding a model returns (float32 NumPy arrays), and so k-means and the metrics.

Batch normalisation takes reduced-precision inputs with float32 statistics and affine weights.
With float16, whose range is narrow, the loss is multiplied by a dynamic scale before the
backward pass (Keras's ``LossScaleOptimizer``, which ``compile`` wraps around the optimizer of
a ``mixed_float16`` model) and the gradients are divided by it before any clipping or weight
decay; a step whose gradients overflow is skipped and the scale halved, so the first few steps
of a run (from a scale of 2^15) may not update the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
from keras import ops

from deepstab.errors import DeepstabError

# --precision's values and the Keras dtype policy each stands for.
PRECISIONS = {"32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
DEFAULT_PRECISION = "32"
EXACT = "float32"  # the dtype of the parts that stay exact whatever the policy


def policy_name(precision: str) -> str:
    """The Keras dtype policy of a ``--precision`` value (``"32"``, ``"bf16"`` or ``"fp16"``)."""
    if str(precision) not in PRECISIONS:
        raise DeepstabError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    return PRECISIONS[str(precision)]


def precision_scope(precision: str) -> contextlib.AbstractContextManager[None]:
    """Build models in ``precision`` within the block (:func:`policy_scope` of its policy)."""
    return policy_scope(policy_name(precision))


@contextlib.contextmanager
def policy_scope(policy: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``policy`` within the block and put back after: the
    networks a model builds in its constructor (also when it is loaded) take it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def precision_of(layer: keras.layers.Layer) -> str:
    """The ``--precision`` value whose policy ``layer`` (say a model) computes in."""
    names = {policy: precision for precision, policy in PRECISIONS.items()}
    return names.get(layer.dtype_policy.name, DEFAULT_PRECISION)


def exact(x):
    """``x`` as a float32 tensor (unchanged when it is one)."""
    x = ops.convert_to_tensor(x)
    return x if keras.backend.standardize_dtype(x.dtype) == EXACT else ops.cast(x, EXACT)
