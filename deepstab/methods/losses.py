"""Loss functions of the clustering methods, written with ``keras.ops``.

DECS (IJCAI 2024): determinacy (Eq. 6), stability (Eq. 7) and the clustering
loss (Eq. 8), in the paper's form and in the form of the authors' released code.

LFSS (ICML 2025): the noisy self-distillation loss L_S (Eq. 9), NT-Xent for the
instance-level loss L_I (Eq. 4), and cluster centres for the cluster-level loss L_C
(Eqs. 5-8); MoCo's InfoNCE for the Table 6 variant.

DEC (Xie et al. 2016) and IDEC (Guo et al. 2017): the target distribution and
``KL(P || Q)``; DCN (Yang et al. 2017): the k-means term with hard assignments and the
count-based centroid update.
"""

from __future__ import annotations

import keras
from keras import ops

from deepstab.nn.constants import like

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


def size_prior(q, target=None):
    """``KL(mean_i q_i || target)``, by default ``target`` uniform: zero when the batch spreads
    over the clusters as ``target`` (K shares summing to 1) says.

    Not part of DECS; an optional guard against collapse.
    """
    p = ops.mean(q, axis=0)
    if target is None:
        k = ops.cast(ops.shape(q)[1], q.dtype)
        return ops.sum(p * ops.log(p * k + 1e-12))
    return ops.sum(p * (ops.log(p + 1e-12) - ops.log(ops.convert_to_tensor(target) + 1e-12)))


def size_floor(q, share: float):
    """``mean_j max(0, log(share) - log(K p_j))`` with ``p_j = mean_i q_ij``: zero while every
    cluster holds at least ``share`` of an even share of the batch's soft mass, and growing
    without bound as one empties (a barrier, not a pull toward even sizes).

    Not part of DECS; an optional guard against collapse that leaves unbalanced classes alone.
    """
    p = ops.mean(q, axis=0)
    k = ops.cast(ops.shape(q)[1], q.dtype)
    gap = ops.log(like(share, p)) - ops.log(p * k + 1e-12)
    return ops.mean(ops.maximum(gap, like(0.0, gap)))


def _normalize(x, eps: float = 1e-12):
    x = ops.convert_to_tensor(x)  # a NumPy array divided by a CUDA tensor fails
    norm = ops.norm(x, axis=-1, keepdims=True)
    return x / ops.maximum(norm, like(eps, norm))


def byol_loss(prediction, target):
    """LFSS Eq. 9 for one view pair: ``mean_i 2 - 2 cos(prediction_i, target_i)``.

    ``prediction`` is ``h(f_o(x^o) + σξ)``, ``target`` is ``f_t(x^t)`` (no gradient).
    """
    return ops.mean(2.0 - 2.0 * ops.sum(_normalize(prediction) * _normalize(target), axis=-1))


def nt_xent(a, b, tau: float = 0.5, valid=None):
    """NT-Xent (SimCLR) between rows of ``a`` and ``b`` (N, d): row ``i`` of ``a`` and of ``b``
    form a positive pair; the other 2N - 2 rows of both are negatives; cosine similarity
    over temperature ``tau``, averaged over the 2N anchors. Rows where ``valid`` (N,) is
    False take no part, as anchors or as negatives.

    LFSS Eq. 4 (L_I) applies it to ``f_o(x_i)`` and ``f_p(x_i)``; Eq. 8 (L_C) to the cluster
    centres of the online and target embeddings.
    """
    n = ops.shape(a)[0]
    z = _normalize(ops.concatenate([a, b], axis=0))
    logits = ops.matmul(z, ops.transpose(z)) / tau
    excluded = ops.eye(2 * n, dtype="bool")  # an anchor is not its own negative
    if valid is not None:
        valid2 = ops.concatenate([valid, valid], axis=0)
        excluded = ops.logical_or(excluded, ops.logical_not(ops.expand_dims(valid2, 0)))
    logits = ops.where(excluded, like(-1e9, logits), logits)
    partner = ops.concatenate([ops.arange(n) + n, ops.arange(n)], axis=0)
    losses = keras.losses.sparse_categorical_crossentropy(partner, logits, from_logits=True)
    if valid is None:
        return ops.mean(losses)
    weight = ops.cast(valid2, losses.dtype)
    total = ops.sum(weight)
    return ops.sum(losses * weight) / ops.maximum(total, like(1.0, total))


def nt_xent_self(online, predecessor, tau: float = 0.5):
    """LFSS L_I for one view (Eq. 4, the authors' ``nt_xent_self``): the online rows are the only
    anchors; the positive of ``online_i`` is ``predecessor_i``, its negatives the predecessor's
    rows of the other samples, and the positive is left out of the denominator:
    ``mean_i [-s_ii / τ + log Σ_{j≠i} exp(s_ij / τ)]`` with ``s_ij = cos(online_i, predecessor_j)``."""
    a, b = _normalize(online), _normalize(predecessor)
    logits = ops.matmul(a, ops.transpose(b)) / tau
    others = ops.where(ops.eye(ops.shape(a)[0], dtype="bool"), like(-1e9, logits), logits)
    return ops.mean(ops.logsumexp(others, axis=1) - ops.diagonal(logits))


def cluster_centres(z, labels, keep, n_clusters: int):
    """LFSS Eqs. 5-7: the L2-normalised mean of the kept raw rows of ``z`` in each cluster (the
    authors' ``forward_prt_loss``; Eq. 7 sums them, which has the same direction).

    Returns ``(centres (K, d), present (K,) bool)``; clusters with no kept row in the
    batch are absent and their centre is zero.
    """
    onehot = ops.one_hot(labels, n_clusters, dtype=z.dtype) * ops.expand_dims(ops.cast(keep, z.dtype), 1)
    counts = ops.sum(onehot, axis=0)
    sums = ops.matmul(ops.transpose(onehot), z)
    return _normalize(sums / ops.maximum(ops.expand_dims(counts, 1), like(1.0, counts))), counts > 0


def cluster_loss(z_online, z_target, labels, keep, n_clusters: int, tau: float = 0.5):
    """LFSS L_C (Eqs. 7-8): NT-Xent between the online and target centres of the clusters
    present among the batch's kept samples (same cluster positive, others negative)."""
    c_online, present = cluster_centres(z_online, labels, keep, n_clusters)
    c_target, _ = cluster_centres(z_target, labels, keep, n_clusters)
    return nt_xent(c_online, c_target, tau, valid=present)


def info_nce(query, key, queue, tau: float = 0.2):
    """MoCo's InfoNCE: ``key_i`` is the positive of ``query_i``; the rows of ``queue`` (M, d)
    are negatives."""
    q, k, negatives = _normalize(query), _normalize(key), _normalize(queue)
    positive = ops.sum(q * k, axis=-1, keepdims=True)
    logits = ops.concatenate([positive, ops.matmul(q, ops.transpose(negatives))], axis=1) / tau
    zeros = ops.zeros((ops.shape(q)[0],), dtype="int32")
    return ops.mean(keras.losses.sparse_categorical_crossentropy(zeros, logits, from_logits=True))


# ----------------------------------------------------------------- DEC, IDEC, DCN


def target_distribution(q):
    """DEC Eq. 3: ``p_ij = (q_ij^2 / f_j) / Σ_j' (q_ij'^2 / f_j')`` with ``f_j = Σ_i q_ij``."""
    q = ops.convert_to_tensor(q)
    weight = ops.square(q) / ops.sum(q, axis=0, keepdims=True)
    return weight / ops.sum(weight, axis=1, keepdims=True)


def dec_cross_entropy(p, q, eps: float = 1e-8):
    """DEC's clustering loss as the BRB authors' code computes it:
    ``-mean_i Σ_j p_ij log(q_ij + eps)``. It equals ``KL(P || Q)`` (DEC Eq. 2) plus the entropy
    of ``P``, which has no gradient (``P`` is a fixed target), so the two train identically."""
    p, q = ops.convert_to_tensor(p), ops.convert_to_tensor(q)
    return -ops.mean(ops.sum(p * ops.log(q + like(eps, q)), axis=1))


def squared_distances(z, centroids):
    """``||z_i - m_k||^2`` for every sample and centroid, shape (N, K)."""
    return ops.sum(ops.square(ops.expand_dims(ops.convert_to_tensor(z), 1) - centroids), axis=-1)


def dcn_cluster_loss(z, centroids, assignments):
    """DCN's k-means term (Eq. 5) as the BRB authors' code computes it: the mean over all N x K
    entries of ``D * A``, with ``D_ik = ||z_i - m_k||^2`` and ``A`` the one-hot hard assignments
    (held fixed), i.e. ``mean_i ||z_i - m_{s_i}||^2 / K`` (the caller multiplies by λ)."""
    z, centroids = ops.convert_to_tensor(z), ops.convert_to_tensor(centroids)
    distances = squared_distances(z, centroids)
    return ops.mean(distances * ops.one_hot(ops.convert_to_tensor(assignments), ops.shape(centroids)[0], dtype=z.dtype))


COUNT_RULES = ("frozen", "eq8", "mini-batch")
CENTER_LR = 0.5  # the BRB authors' mini-batch update's default


def dcn_centroid_update(centroids, counts, z, assignments, rule: str = "frozen"):
    """DCN's centroid update (Eq. 8) for one batch; returns the new ``(centroids, counts)``.

    ``"eq8"``: for each sample in turn, ``c_k ← c_k + 1`` and ``m_k ← m_k - (1 / c_k)(m_k - z_i)``
    for its cluster ``k``; in closed form, ``m_k ← (c_k m_k + Σ z_i) / (c_k + n_k)``.
    ``"frozen"``: what the BRB authors' code computes (its mini-batch update with the learning-rate
    argument left at 0): each cluster with ``n_k ≥ 1`` samples in the batch moves
    ``m_k ← m_k + (mean_k z - m_k) / (c_k + 1)`` and the counts never change.
    ``"mini-batch"``: that update as the authors' code's default ``center_lr = 0.5`` intends:
    for each cluster with ``n_k ≥ 1``, ``c'_k = (1 - 0.5) c_k + 0.5 n_k``, the step is
    ``1 / (c'_k + 1)``, and the count kept is ``floor(c'_k)`` (their integer counts).
    """
    centroids, counts, z = (ops.convert_to_tensor(t) for t in (centroids, counts, z))
    one_hot = ops.one_hot(assignments, ops.shape(centroids)[0], dtype=z.dtype)  # (N, K)
    n = ops.sum(one_hot, axis=0)
    sums = ops.matmul(ops.transpose(one_hot), z)
    if rule == "eq8":
        new_counts = counts + n
        return (ops.expand_dims(counts, 1) * centroids + sums) / ops.expand_dims(new_counts, 1), new_counts
    if rule not in ("frozen", "mini-batch"):
        raise ValueError(f"rule must be one of {COUNT_RULES}, got {rule!r}.")
    present = n > 0
    means = sums / ops.expand_dims(ops.maximum(n, like(1.0, n)), 1)
    if rule == "mini-batch":
        counts = ops.where(present, (1.0 - CENTER_LR) * counts + CENTER_LR * n, counts)
    moved = centroids + (means - centroids) / ops.expand_dims(counts + 1.0, 1)
    if rule == "mini-batch":
        counts = ops.floor(counts)
    return ops.where(ops.expand_dims(present, 1), moved, centroids), counts
