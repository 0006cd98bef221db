"""Loss functions of the clustering methods, written with ``keras.ops``.

DECS (IJCAI 2024): determinacy (Eq. 6), stability (Eq. 7) and the clustering
loss (Eq. 8), in the paper's form and in the form of the authors' released code.
"""

from __future__ import annotations

from keras import ops

VARIANTS = ("paper", "reference")
DEFAULT_LAMBDA = {"paper": 0.8, "reference": 0.4}


def determinacy(q, t, variant: str = "paper"):
    """DECS Eq. 6: how far each ``q_ij`` lies from the threshold ``t``, scaled to [0, 1].

    ``paper``: ``(q - t)^2 / t^2`` below ``t`` and ``(q - t)^2 / (1 - t)^2`` above.
    ``reference`` (authors' code): ``|q - t| / t`` and ``|q - t| / (1 - t)``.
    """
    scale = ops.where(q < t, t, 1.0 - t)
    gap = ops.abs(q - t) / scale
    return ops.square(gap) if variant == "paper" else gap


def stability(f, lam: float):
    """DECS Eq. 7: per-sample stability ``s_i = mean_j f_ij - λ var_j f_ij``."""
    return ops.mean(f, axis=1) - lam * ops.var(f, axis=1)


def decs_loss(q, t, variant: str = "paper", lam: float | None = None):
    """DECS clustering loss from soft assignments ``q`` and threshold ``t``.

    ``paper`` (Eq. 8): ``L_c = 1 - mean_i s_i`` with λ = 0.8 by default.
    ``reference`` (authors' code): ``1 - (mean_i s_i + var_i s_i)`` with λ = 0.4.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    s = stability(determinacy(q, t, variant), DEFAULT_LAMBDA[variant] if lam is None else lam)
    if variant == "paper":
        return 1.0 - ops.mean(s)
    return 1.0 - (ops.mean(s) + ops.var(s))


def size_prior(q):
    """``KL(mean_i q_i || uniform)``: zero when the batch spreads evenly over the clusters.

    Not part of DECS; an optional guard against collapse (DESIGN §4).
    """
    p = ops.mean(q, axis=0)
    k = ops.cast(ops.shape(q)[1], q.dtype)
    return ops.sum(p * ops.log(p * k + 1e-12))
