"""An LFSS run from data to saved model: what ``python cli.py lfss`` does, callable from Python.

Example:

>>> from deepstab.lfss_runner import LFSSRun, run_lfss
>>> result = run_lfss(LFSSRun(dataset="cifar10-jpg", preset="cpu"))  # doctest: +SKIP
>>> result.metrics["acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from deepstab import datasets
from deepstab.errors import DeepstabError, check_settings
from deepstab.image_store import to_unit_float
from deepstab.lfss import BASES, LFSSCheckpoint, LFSSModel, lfss_optimizer
from deepstab.training import IndexedImages
from deepstab.metrics import cluster_sizes
from deepstab.runner import choose_n_clusters, format_metrics, write_labels_csv
from deepstab.saving import save_model

# The paper's schedule (LFSS §4.1, DESIGN §5) and a CPU-sized one (README, "LFSS schedules").
PRESETS: dict[str, dict[str, float | int]] = {
    "paper": {"epochs": 1000, "batch_size": 256, "depth": 18, "width": 1.0, "hidden": 4096, "dim": 256, "eta": 200, "momentum": 0.996},
    "cpu": {"epochs": 10, "batch_size": 128, "depth": 18, "width": 0.125, "hidden": 512, "dim": 128, "eta": 5, "momentum": 0.99},
}
# Per-dataset (η, σ) of the paper; others take η from the preset and σ = 0.001.
PAPER_ETA_SIGMA = {
    "cifar10": (200, 0.001),
    "cifar10-jpg": (200, 0.001),
    "cifar20": (500, 0.001),
    "stl10": (500, 0.01),
    "imagenet10": (200, 0.01),
    "imagenet-dogs": (500, 0.001),
    "tiny-imagenet": (200, 0.001),
}
# Per-dataset normalisation (channel means and stds of the training images).
NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar10-jpg": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar20": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class LFSSRun:
    """Everything that defines an LFSS run; ``None`` fields take the preset's (or the paper's
    per-dataset) value."""

    dataset: str = "cifar10-jpg"
    data_dir: str | None = None
    preset: str = "paper"
    n_clusters: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 0.05
    eta: int | None = None
    sigma: float | None = None
    delta: float = 0.1
    lam: float = 0.1
    tau: float = 0.5
    momentum: float | None = None
    weight_decay: float = 5e-4
    depth: int | None = None
    width: float | None = None
    hidden: int | None = None
    dim: int | None = None
    base: str = "byol"
    stability: bool = True
    seed: int = 0
    output: str | None = None
    models_dir: str = "models"
    checkpoint_every: int = 1
    resume: bool = False
    eval_runs: int = 10
    verbose: int | None = None

    def __post_init__(self):
        if self.verbose is None:
            self.verbose = 1 if sys.stdout.isatty() else 2
        if self.preset not in PRESETS:
            raise DeepstabError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}.")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        paper_eta, paper_sigma = PAPER_ETA_SIGMA.get(self.dataset, (None, 0.001))
        if self.eta is None:
            self.eta = paper_eta if self.preset == "paper" and paper_eta is not None else PRESETS[self.preset]["eta"]
        if self.sigma is None:
            self.sigma = paper_sigma
        check_settings(self, choices={"base": BASES}, positive=("epochs", "batch_size", "checkpoint_every", "eval_runs"))

    @property
    def model_path(self) -> Path:
        suffix = "" if self.stability else "-nostab"
        base = "" if self.base == "byol" else f"-{self.base}"
        return Path(self.output) if self.output else Path(self.models_dir) / f"lfss{base}{suffix}-{datasets.slug(self.dataset)}.keras"

    @property
    def checkpoint_dir(self) -> Path:
        return self.model_path.parent / f".checkpoint-{self.model_path.stem}"


@dataclass
class LFSSResult:
    model: LFSSModel
    labels: np.ndarray
    metrics: dict[str, float] | None
    sizes: dict[str, object]
    seconds: float
    history: dict
    model_path: Path | None = None
    labels_path: Path | None = None


def _normalisation(dataset: str, x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if dataset in NORMALISATION:
        return NORMALISATION[dataset]
    sample = to_unit_float(np.asarray(x[:: max(len(x) // 5000, 1)]))
    return tuple(sample.mean(axis=(0, 1, 2)).tolist()), tuple(np.maximum(sample.std(axis=(0, 1, 2)), 1e-3).tolist())


def build_model(run: LFSSRun, x: np.ndarray, k: int) -> LFSSModel:
    mean, std = _normalisation(run.dataset, x)
    return LFSSModel(
        x.shape[1:],
        k,
        depth=run.depth,
        width=run.width,
        hidden=run.hidden,
        dim=run.dim,
        base=run.base,
        stability=run.stability,
        eta=run.eta,
        sigma=run.sigma,
        delta=run.delta,
        lam=run.lam,
        tau=run.tau,
        momentum=run.momentum,
        weight_decay=run.weight_decay,
        mean=mean,
        std=std,
        seed=run.seed,
    )


def run_lfss(
    run: LFSSRun,
    callbacks: list | None = None,
    model: LFSSModel | None = None,
    data: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> LFSSResult:
    """Load the data, train LFSS with checkpoints (resumable), evaluate k-means on the target
    embeddings (mean of ``eval_runs`` runs), save the model and its labels.

    ``callbacks`` are added to ``fit``; ``model``, a trained LFSS model, is trained further
    instead of a new one; ``data``, ``(x, y)`` already loaded, saves loading it again.
    """
    keras.utils.set_random_seed(run.seed)
    x, y = data if data is not None else datasets.load(run.dataset, run.data_dir, stream=True)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DeepstabError(f"LFSS needs images (N, H, W, 1 or 3); {run.dataset!r} has shape {x.shape}.")
    k = choose_n_clusters(run, y, len(x))
    batch_size = min(run.batch_size, len(x))
    batches = IndexedImages(x, batch_size, seed=run.seed)
    if model is None:
        model = build_model(run, x, k)
    elif model.image_shape != tuple(x.shape[1:]):
        raise DeepstabError(f"The model takes images of shape {model.image_shape}, but {run.dataset!r} has {tuple(x.shape[1:])}.")
    model.compile(optimizer=lfss_optimizer(run.lr * batch_size / 256, len(batches) * run.epochs))
    checkpoints = run.checkpoint_dir
    if checkpoints.exists() and not run.resume:
        raise DeepstabError(
            f"A checkpoint of an unfinished run exists in {checkpoints}. Pass --resume to go on from it, "
            f"or delete the folder to start over."
        )
    backup = LFSSCheckpoint(str(checkpoints), every=run.checkpoint_every)
    print(
        f"LFSS ({run.base}{'' if run.stability else ', no stability losses'}) on {run.dataset}: {len(x)} images, "
        f"K={k}, ResNet-{run.depth} x{run.width:g}, {run.epochs} epochs of {len(batches)} batches of {batch_size}, η={run.eta}"
    )
    start = time.perf_counter()
    history = model.fit(batches, epochs=run.epochs, callbacks=[backup, *(callbacks or [])], verbose=run.verbose).history
    seconds = time.perf_counter() - start
    shutil.rmtree(checkpoints, ignore_errors=True)

    metrics = None
    z = model.embed(x)
    labels = model.predict_labels(x, seed=run.seed, embeddings=z)
    if y is not None and (y >= 0).any():
        metrics = model.evaluate_clustering(x, y, runs=run.eval_runs, embeddings=z)
    result = LFSSResult(model, labels, metrics, cluster_sizes(labels, k), seconds, history)
    result.model_path = save_model(model, run.model_path)
    result.labels_path = write_labels_csv(run.model_path.with_suffix(".csv"), labels, None, y)
    return result


def summary(run: LFSSRun, result: LFSSResult) -> str:
    """The lines the command line prints at the end of a run."""
    lines = [f"LFSS on {run.dataset}: {len(result.labels)} samples, {result.model.n_clusters} clusters"]
    if result.metrics:
        m = result.metrics
        lines.append(
            f"k-means on the target embeddings, mean of {run.eval_runs} runs: "
            + format_metrics({k: m[k] for k in ("acc", "nmi", "ari")})
            + f"  (ACC std {m['acc_std']:.4f})"
        )
    lines.append(f"Cluster sizes: {result.sizes['counts']}")
    lines.append(f"Training wall time: {result.seconds:.0f} s")
    lines.append(f"Saved the model to {result.model_path} and the labels to {result.labels_path}")
    return "\n".join(lines)

