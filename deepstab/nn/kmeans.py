"""k-means on embeddings: Euclidean (scikit-learn's), to initialise the centroid methods, and
cosine (the LFSS authors' ``torch_clustering``), for LFSS's pseudo-labels and evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from deepstab import distributed
from deepstab.errors import DeepstabError


def _checked(z, n_clusters: int) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if n_clusters > len(z):
        raise DeepstabError(
            f"n_clusters={n_clusters} is larger than the number of samples ({len(z)}). "
            f"Use at most {len(z)} clusters or give more data."
        )
    if not np.all(np.isfinite(z)):
        raise DeepstabError(
            "The embeddings hold NaN or infinite values, so k-means cannot run: the network "
            "diverged. Lower the learning rate or check the input data."
        )
    return z


def kmeans(z: np.ndarray, n_clusters: int, n_init: int = 20, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``z`` (N, d) with k-means (``n_init`` restarts); return ``(centres, labels)``."""
    z = _checked(z, n_clusters)
    model = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(z)
    return model.cluster_centers_.astype(np.float32), model.labels_.astype(np.int64)


# DECS's start (bench/decs_starts.py): a partition whose smallest cluster holds less than this share
# of an even split is passed over for one without such a cluster, if one costs at most
# BALANCE_TOLERANCE more inertia than the lowest.
SMALL_CLUSTER = 2 / 3
BALANCE_TOLERANCE = 0.05
# Two k-means partitions count as the same start when their ARI is at least this.
SAME_PARTITION = 0.9


@dataclass
class Start:
    """A k-means partition chosen by :func:`balanced_kmeans`, and why."""

    centres: np.ndarray
    labels: np.ndarray
    index: int  # which of the single-start runs
    count: int  # of how many
    excess: float  # its inertia over the lowest one's, minus 1
    min_share: float  # its smallest cluster over an even share N / K
    lowest_min_share: float  # the same for the partition of lowest inertia

    def describe(self) -> str:
        """One line for the run's output."""
        if self.excess == 0.0:
            return (
                f"the lowest-inertia one of {self.count} k-means partitions (smallest cluster "
                f"{self.min_share:.2f} of an even share)"
            )
        return (
            f"of {self.count} k-means partitions, the lowest-inertia one whose smallest cluster holds at least "
            f"{SMALL_CLUSTER:.2f} of an even share ({self.min_share:.2f}, at {self.excess:+.1%} inertia), where the "
            f"lowest-inertia partition's smallest holds {self.lowest_min_share:.2f}"
        )


def single_starts(z: np.ndarray, n_clusters: int, seeds: list[int]) -> list[KMeans]:
    """One fitted single-start k-means of ``z`` (in float64) per seed of ``seeds``."""
    z = _checked(z, n_clusters)
    return [KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit(z) for seed in seeds]


def balanced_kmeans(z: np.ndarray, n_clusters: int, seeds: list[int], unlike: list[np.ndarray] = ()) -> Start | None:
    """Single-start k-means runs on ``z``, one per seed of ``seeds`` (k-means++ seeding): the
    partition of lowest inertia, unless its smallest cluster holds less than
    :data:`SMALL_CLUSTER` of an even share ``N / K`` and another partition within
    :data:`BALANCE_TOLERANCE` of that inertia has no such cluster; then the lowest-inertia one
    of those. With ``unlike`` (label arrays of partitions tried before), the rule chooses among
    the runs whose partition is unlike each of them (ARI below :data:`SAME_PARTITION`): the
    next-best start, for DECS's restart on collapse. ``None`` when no run is unlike them all.

    k-means with restarts keeps the lowest inertia, and on a pretrained embedding that is often
    a partition that splits a large class and merges two others, leaving one small cluster that
    DECS's loss then empties; a partition of nearly the same inertia without a small cluster
    starts it far better. A lowest-inertia partition without a small cluster is kept, even when
    a more balanced one is near (on USPS, whose classes are unbalanced, that one is worse;
    ``bench/decs_starts.py``, docs/results.md).

    Example:

    >>> import numpy as np
    >>> z = np.concatenate([np.zeros((20, 2)), np.full((20, 2), 5.0)]) + np.random.default_rng(0).normal(size=(40, 2))
    >>> start = balanced_kmeans(z, 2, seeds=[0, 1, 2, 3])
    >>> sorted(np.bincount(start.labels).tolist()), start.count, start.excess
    ([20, 20], 4, 0.0)
    """
    runs = single_starts(z, n_clusters, seeds)
    pool = [i for i, r in enumerate(runs) if all(adjusted_rand_score(t, r.labels_) < SAME_PARTITION for t in unlike)]
    if not pool:
        return None
    inertia = np.array([runs[i].inertia_ for i in pool])
    shares = np.array([np.bincount(runs[i].labels_, minlength=n_clusters).min() * n_clusters / len(z) for i in pool])
    lowest = int(np.argmin(inertia))
    fine = np.flatnonzero((inertia <= inertia[lowest] * (1 + BALANCE_TOLERANCE)) & (shares >= SMALL_CLUSTER))
    picked = int(fine[np.argmin(inertia[fine])]) if len(fine) else lowest
    chosen, run = pool[picked], runs[pool[picked]]
    inertia_all = np.array([r.inertia_ for r in runs])
    lowest_all = int(np.argmin(inertia_all))
    lowest_share = np.bincount(runs[lowest_all].labels_, minlength=n_clusters).min() * n_clusters / len(z)
    return Start(
        run.cluster_centers_.astype(np.float32),
        run.labels_.astype(np.int64),
        chosen,
        len(seeds),
        float(run.inertia_ / inertia_all[lowest_all] - 1.0),
        float(shares[picked]),
        float(lowest_share),
    )


def cosine_kmeans(
    z,
    n_clusters: int,
    n_init: int = 10,
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
    sharded: bool = False,
) -> np.ndarray:
    """k-means with the cosine distance ``1 - cos(z_i, c_k)``, as the LFSS authors' code
    (``torch_clustering.PyTorchKMeans(metric="cosine")``): k-means++ seeding on that distance
    (``2 + ln K`` candidates per centre), centres the plain means of their rows (raw, as given),
    restart ``r`` seeded ``seed + r``, each stopped when its labels stop changing or its centres
    move less than ``tol`` times the mean feature variance; returns the labels of the state of
    least inertia seen after any update of any restart.

    ``sharded=True`` under torchrun: ``z`` is this rank's slice of the rows
    (:func:`deepstab.distributed.shard`), every sum over rows is all-reduced (the k-means++
    draws, the centres, the inertia, the stopping rule), and the labels of this rank's rows are
    returned: the single-process result on all rows, up to the order of float64 sums, with no
    embedding leaving its rank (``bench/lfss_distributed_bench.py --kmeans``).

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 0.1], [2.0, 0.0], [0.0, 1.0], [0.1, 3.0]])
    >>> cosine_kmeans(z, 2).tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    True
    """
    rows = _Rows(z, n_clusters, sharded)
    x, unit, total = rows.x, rows.unit, rows.sum

    def assign(centres):
        distances = 1.0 - unit @ torch.nn.functional.normalize(centres, dim=1).T
        inertia, labels = distances.min(dim=1)
        return labels, float(total(inertia.sum()))

    threshold = tol * float(rows.variance().mean())
    best_inertia, best_labels = float("inf"), None
    for restart in range(n_init):
        centres = _plus_plus(rows, n_clusters, torch.Generator().manual_seed(seed + restart))
        labels, _ = assign(centres)
        for _ in range(max_iter):
            counts = total(torch.bincount(labels, minlength=n_clusters).to(x.dtype))
            counts = torch.where(counts > 0, counts, torch.full_like(counts, 1e-6))
            moved = total(torch.zeros_like(centres).index_add_(0, labels, x)) / counts[:, None]
            new_labels, inertia = assign(moved)
            if inertia < best_inertia:
                best_inertia, best_labels = inertia, new_labels
            shift = float((1.0 - torch.nn.functional.cosine_similarity(centres, moved, dim=1, eps=1e-12)).sum())
            changed = total(torch.count_nonzero(new_labels != labels).to(x.dtype))
            if not changed or shift <= threshold:
                break
            labels, centres = new_labels, moved
    return best_labels.cpu().numpy().astype(np.int64)


class _Rows:
    """The rows k-means clusters, all of them or (``sharded``) this rank's slice, with sums over
    all rows (:meth:`sum`) and rows fetched by their global index (:meth:`fetch`)."""

    def __init__(self, z, n_clusters: int, sharded: bool):
        self.sharded = sharded and distributed.active()
        device = distributed.device() if self.sharded else "cpu"
        self.x = torch.as_tensor(np.asarray(z, dtype=np.float64), device=device)
        self.n = int(self.sum(torch.tensor(float(len(self.x)), dtype=torch.float64, device=device)))
        if n_clusters > self.n:
            raise DeepstabError(
                f"n_clusters={n_clusters} is larger than the number of samples ({self.n}). "
                f"Use at most {self.n} clusters or give more data."
            )
        if self.sum((~torch.isfinite(self.x)).any().to(torch.float64)) > 0:
            raise DeepstabError(
                "The embeddings hold NaN or infinite values, so k-means cannot run: the network "
                "diverged. Lower the learning rate or check the input data."
            )
        self.unit = torch.nn.functional.normalize(self.x, dim=1)
        self.start = distributed.shard(self.n).start if self.sharded else 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (itself without sharding)."""
        if not self.sharded:
            return t
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    def variance(self) -> torch.Tensor:
        """The unbiased variance of each feature over all rows."""
        if not self.sharded:
            return self.x.var(dim=0)
        mean = self.sum(self.x.sum(dim=0)) / self.n
        return self.sum(((self.x - mean) ** 2).sum(dim=0)) / (self.n - 1)

    def fetch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (raw and unit) at global ``index``, on every rank."""
        if not self.sharded:
            return self.x[index], self.unit[index]
        local = index - self.start
        mine = (local >= 0) & (local < len(self.x))
        out = torch.zeros((len(index), self.x.shape[1]), dtype=self.x.dtype, device=self.x.device)
        out[mine] = self.x[local[mine]]
        out = self.sum(out)  # each row comes from one rank, zeros from the others: exact
        return out, torch.nn.functional.normalize(out, dim=1)

    def locate(self, draws: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
        """Global indices of the inverse-CDF ``draws`` in the cumulative sum of ``nearest`` over all rows."""
        cumulative = torch.cumsum(nearest, 0)
        if not self.sharded:
            return torch.searchsorted(cumulative, draws).clamp(max=len(cumulative) - 1)
        ends = torch.cumsum(distributed.gather(cumulative[-1:].contiguous()), 0)  # each rank's end
        owner = torch.searchsorted(ends, draws).clamp(max=len(ends) - 1)
        before = torch.cat([ends.new_zeros(1), ends[:-1]])[owner]
        local = torch.searchsorted(cumulative, draws - before).clamp(max=len(cumulative) - 1)
        index = torch.where(owner == distributed.rank(), local + self.start, torch.zeros_like(local))
        return self.sum(index)


def _plus_plus(rows: _Rows, k: int, generator) -> torch.Tensor:
    """k-means++ seeding with the cosine distance: each centre the best of ``2 + ln k`` candidates
    drawn in proportion to their distance to the nearest centre so far (inverse-CDF draws)."""
    trials = 2 + int(math.log(k))
    first = torch.randint(rows.n, (1,), generator=generator).to(rows.x.device)
    chosen, chosen_unit = rows.fetch(first)
    nearest = 1.0 - rows.unit @ chosen_unit[0]
    potential = rows.sum(nearest.sum())
    centres = [chosen[0]]
    for _ in range(1, k):
        draws = (torch.rand(trials, generator=generator, dtype=rows.x.dtype) * potential.cpu()).to(rows.x.device)
        candidates, candidates_unit = rows.fetch(rows.locate(draws, nearest))
        options = torch.minimum(nearest[None], 1.0 - candidates_unit @ rows.unit.T)  # (trials, rows)
        best = int(torch.argmin(rows.sum(options.sum(dim=1))))
        centres.append(candidates[best])
        nearest = options[best]
        potential = rows.sum(nearest.sum())
    return torch.stack(centres).clone()
