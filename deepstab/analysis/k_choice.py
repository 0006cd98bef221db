"""Choosing the number of clusters K without labels (``--n-clusters auto``).

The rule (``bench/choose_k.py`` compares it with the other candidates on cases of known K;
``docs/results.md`` has the table): draw ``resamples`` subsamples of at most ``subsample``
embeddings, map each to 2-D with t-SNE (a Student-t kernel, the one of DEC's soft assignment),
and for every candidate K run k-means on each map and take its silhouette. The score of K is the
mean silhouette over the resamples; the chosen K is the smallest whose mean lies within one
standard error (over the resamples) of the best mean: the one-standard-error rule, which prefers
the simpler partition when the resamples cannot tell two K apart. Also reported, as a measure of
how stable each K's partition is: the mean adjusted Rand index of the k-means partitions of
consecutive resamples on the images they share (chance-corrected, so large K is not favoured).

Invariants: the choice is a function of the embeddings, the range and the seed (every draw comes
from :func:`deepstab.seeding.derive`); labels are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, silhouette_score

from deepstab import checks, seeding
from deepstab.errors import DeepstabError

K_RANGE = (2, 30)
RESAMPLES = 4
SUBSAMPLE = 2000  # images per resample, and at most this share of the data:
SUBSAMPLE_SHARE = 0.8
PERPLEXITY = 50.0  # of 30, 50 and 100 the best on the tuning cases (docs/results.md)
KMEANS_INITS = 5
MIN_PER_CLUSTER = 5  # a resample must hold at least this many images per cluster of the largest K


@dataclass
class KChoice:
    """The scores of every candidate K and the one chosen (see the module's docstring)."""

    ks: list[int]
    score: list[float]  # mean silhouette of the resamples' k-means partitions of their t-SNE maps
    spread: list[float]  # its standard error over the resamples
    agreement: list[float]  # mean ARI of consecutive resamples' partitions on their shared images
    k: int
    resamples: int
    subsample: int

    @property
    def best(self) -> int:
        """The K of the highest mean score (the chosen K, or a larger one within its error)."""
        return self.ks[int(np.argmax(self.score))]

    @property
    def runner_up(self) -> int:
        """The K of the highest mean score other than the chosen K."""
        others = [i for i, k in enumerate(self.ks) if k != self.k]
        return self.ks[max(others, key=lambda i: self.score[i])]

    def _at(self, k: int) -> float:
        return self.score[self.ks.index(k)]

    def describe(self) -> str:
        """One line for the run's output: the choice, its score and its margin to the runner-up."""
        i = self.ks.index(self.k)
        margin = self._at(self.k) - self._at(self.runner_up)
        why = (
            f"the smallest within one standard error of the best, K={self.best} at {self._at(self.best):.3f}; "
            if self.best != self.k
            else ""
        )
        return (
            f"K={self.k} of {self.ks[0]}..{self.ks[-1]}: mean silhouette {self.score[i]:.3f} ± "
            f"{self.spread[i]:.3f} over {self.resamples} resampled t-SNE maps of {self.subsample} images "
            f"({why}runner-up K={self.runner_up}, margin {margin:+.3f}; partition agreement ARI "
            f"{self.agreement[i]:.2f})"
        )

    def table(self) -> str:
        """The scores of every K, one line each, the chosen K marked."""
        lines = ["    K  silhouette  ± s.e.  agreement (ARI)"]
        for k, s, e, a in zip(self.ks, self.score, self.spread, self.agreement):
            lines.append(f"{'>' if k == self.k else ' '} {k:3d}  {s:10.3f}  {e:6.3f}  {a:15.2f}")
        return "\n".join(lines)

    def to_config(self) -> dict:
        """Plain lists and numbers (saved in the model's config)."""
        return {
            "ks": list(map(int, self.ks)),
            "score": [float(v) for v in self.score],
            "spread": [float(v) for v in self.spread],
            "agreement": [float(v) for v in self.agreement],
            "k": int(self.k),
            "resamples": int(self.resamples),
            "subsample": int(self.subsample),
        }

    @classmethod
    def from_config(cls, config: dict | None) -> KChoice | None:
        """The choice :meth:`to_config` saved, or ``None``."""
        return cls(**config) if config else None

    def plot(self, path) -> Path | None:
        """Score (± its standard error) and agreement against K, the chosen K marked, as a PNG at
        ``path``; ``None`` (nothing written) without matplotlib (the ``plot`` extra)."""
        from deepstab.analysis.report import _pyplot
        from deepstab.io import atomic_path

        plt = _pyplot()
        if plt is None:
            return None
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.errorbar(self.ks, self.score, yerr=self.spread, marker="o", ms=3, label="mean silhouette (t-SNE maps)")
        ax.plot(self.ks, self.agreement, marker="s", ms=3, ls="--", label="partition agreement (ARI)")
        ax.axvline(self.k, color="grey", lw=1)
        ax.set_xlabel("K")
        ax.set_title(f"Chosen K = {self.k}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as partial:
            fig.savefig(partial, format="png")
        plt.close(fig)
        return Path(path)


def parse_k_range(value: str | None) -> tuple[int, int]:
    """``"LOW:HIGH"`` (checked by :func:`deepstab.checks.k_range`) as ``(low, high)``; ``None`` gives
    :data:`K_RANGE`."""
    if value is None:
        return K_RANGE
    low, high = checks.k_range("k_range", value).split(":")
    return int(low), int(high)


def resample_size(n_samples: int, subsample: int = SUBSAMPLE) -> int:
    """The number of images in each resample of ``n_samples``."""
    return min(subsample, int(SUBSAMPLE_SHARE * n_samples))


def check_range(k_range: tuple[int, int], n_samples: int, subsample: int = SUBSAMPLE) -> None:
    """Refuse a range whose largest K the data cannot score: each resample must hold at least
    ``MIN_PER_CLUSTER`` images per cluster."""
    m = resample_size(n_samples, subsample)
    if m < MIN_PER_CLUSTER * k_range[1]:
        fits = m // MIN_PER_CLUSTER
        advice = f"use --k-range {k_range[0]}:{fits}" if fits > k_range[0] else "give more images"
        raise DeepstabError(
            f"Choosing K among {k_range[0]}..{k_range[1]} needs at least {MIN_PER_CLUSTER * k_range[1]} images in "
            f"each resample, but {n_samples} images give resamples of {m}: {advice}, or pass --n-clusters."
        )


def choose_k(
    z: np.ndarray,
    k_range: tuple[int, int] = K_RANGE,
    seed: int = 0,
    resamples: int = RESAMPLES,
    subsample: int = SUBSAMPLE,
) -> KChoice:
    """Score every K of ``k_range`` (inclusive) on the embeddings ``z`` (N, d) and choose one
    (see the module's docstring)."""
    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    if not np.all(np.isfinite(z)):
        raise DeepstabError("The embeddings hold NaN or infinite values, so K cannot be chosen: the network diverged.")
    check_range(k_range, len(z), subsample)
    m = resample_size(len(z), subsample)
    ks = list(range(k_range[0], k_range[1] + 1))
    rng = seeding.stream(seed, "k-choice")
    index = [np.sort(rng.choice(len(z), m, replace=False)) for _ in range(resamples)]
    perplexity = min(PERPLEXITY, (m - 1) / 3)
    maps = [
        TSNE(2, perplexity=perplexity, init="pca", random_state=seeding.derive(seed, "k-choice", r)).fit_transform(z[i])
        for r, i in enumerate(index)
    ]
    silhouettes = np.zeros((resamples, len(ks)))
    agreement = np.zeros(len(ks))
    for j, k in enumerate(ks):
        labels = []
        for r, points in enumerate(maps):
            fitted = KMeans(k, n_init=KMEANS_INITS, random_state=seeding.derive(seed, "k-choice", r, k)).fit(points)
            labels.append(fitted.labels_)
            silhouettes[r, j] = silhouette_score(points, fitted.labels_)
        pairs = []
        for r in range(resamples - 1):
            _, a, b = np.intersect1d(index[r], index[r + 1], assume_unique=True, return_indices=True)
            pairs.append(adjusted_rand_score(labels[r][a], labels[r + 1][b]))
        agreement[j] = np.mean(pairs) if pairs else np.nan
    score = silhouettes.mean(axis=0)
    spread = silhouettes.std(axis=0, ddof=1) / np.sqrt(resamples) if resamples > 1 else np.zeros(len(ks))
    best = int(np.argmax(score))
    chosen = ks[int(np.flatnonzero(score >= score[best] - spread[best])[0])]
    return KChoice(ks, score.tolist(), spread.tolist(), agreement.tolist(), chosen, resamples, m)
