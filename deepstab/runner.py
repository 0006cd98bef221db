"""A DECS run from data to saved model: what ``python cli.py decs`` does, callable from Python.

Example:

>>> from deepstab.runner import DECSRun, run_decs
>>> result = run_decs(DECSRun(dataset="digits", preset="quick", output="/tmp/decs-digits.keras"))  # doctest: +SKIP
>>> result.metrics["acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from deepstab import datasets
from deepstab.callbacks import COLLAPSE_ACTIONS, LabelMetrics
from deepstab.decs import DECS, ConvAutoencoder
from deepstab.errors import DeepstabError, check_settings
from deepstab.files import atomic_path
from deepstab.losses import VARIANTS
from deepstab.metrics import cluster_sizes, evaluate
from deepstab.saving import load_model, save_model

# Schedules (README, "Schedules"). "paper": DECS's own (500 pretraining epochs at
# batch 256, 10,000 clustering iterations). "default" is the paper's pretraining
# with 3,000 clustering iterations (DESIGN §4 measured convergence by then), except
# where DEFAULT_SCHEDULES names a measured cheaper one; "quick" is a smoke test.
PRESETS: dict[str, dict[str, int]] = {
    "default": {"pretrain_epochs": 500, "pretrain_batch_size": 256, "iterations": 3000},
    "paper": {"pretrain_epochs": 500, "pretrain_batch_size": 256, "iterations": 10000},
    "quick": {"pretrain_epochs": 10, "pretrain_batch_size": 32, "cluster_epochs": 20},
}

# The `default` preset of datasets where a shorter schedule was measured to be enough
# (README, "Schedules"): the bundled 8x8 digits (the < 3 minute main job) and MNIST-test.
DEFAULT_SCHEDULES: dict[str, dict[str, int]] = {
    "digits": {"pretrain_epochs": 30, "pretrain_batch_size": 32, "cluster_epochs": 60},
    "mnist-test": {"pretrain_epochs": 50, "pretrain_batch_size": 32, "cluster_epochs": 80},
}


def schedule(preset: str, dataset: str) -> dict[str, int]:
    """The schedule ``preset`` gives ``dataset`` (the `default` preset differs per dataset)."""
    if preset not in PRESETS:
        raise DeepstabError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}.")
    if preset == "default" and dataset in DEFAULT_SCHEDULES:
        return dict(DEFAULT_SCHEDULES[dataset])
    return dict(PRESETS[preset])


@dataclass
class DECSRun:
    """Everything that defines a DECS run; ``None`` fields take the preset's value."""

    dataset: str = "digits"
    data_dir: str | None = None
    preset: str = "default"
    n_clusters: int | None = None
    pretrain_epochs: int | None = None
    pretrain_batch_size: int | None = None
    iterations: int | None = None
    cluster_epochs: int | None = None
    batch_size: int = 256
    lr: float = 1e-3
    variant: str = "paper"
    alpha: float = 1.0
    lam: float | None = None
    recon_weight: float = 0.0
    size_prior: float = 0.0
    on_collapse: str = "fallback"
    collapse_share: float = 0.25
    seed: int = 0
    output: str | None = None
    models_dir: str = "models"
    eval_every: int = 10
    verbose: int | None = None  # None: progress bars on a terminal, one line per epoch otherwise

    def __post_init__(self):
        if self.verbose is None:
            self.verbose = 1 if sys.stdout.isatty() else 2
        preset = schedule(self.preset, self.dataset)
        if self.iterations is not None:  # an explicit count beats the preset's, in either unit
            preset.pop("cluster_epochs", None)
        elif self.cluster_epochs is not None:
            preset.pop("iterations", None)
        for key, value in preset.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        check_settings(
            self,
            choices={"variant": VARIANTS, "on_collapse": COLLAPSE_ACTIONS},
            positive=("pretrain_batch_size", "batch_size"),
            non_negative=("pretrain_epochs", "iterations", "cluster_epochs"),
        )
        if not self.alpha > 0:
            raise DeepstabError(f"alpha must be positive, got {self.alpha}.")

    @property
    def slug(self) -> str:
        """The dataset name made safe for file names."""
        return datasets.slug(self.dataset)

    @property
    def model_path(self) -> Path:
        return Path(self.output) if self.output else Path(self.models_dir) / f"decs-{self.slug}.keras"

    @property
    def autoencoder_path(self) -> Path:
        """Where the pretrained autoencoder of this dataset, schedule and seed is kept for reuse."""
        name = f"decs-{self.slug}-ae-{self.pretrain_epochs}ep-b{self.pretrain_batch_size}-seed{self.seed}.keras"
        return Path(self.models_dir) / name


@dataclass
class DECSResult:
    """What a run produced: the model, its labels, and what was measured."""

    model: DECS
    labels: np.ndarray
    confidence: np.ndarray
    metrics: dict[str, float] | None
    sizes: dict[str, object]
    collapsed_epoch: int | None
    restored_epoch: int | None
    iterations_run: int
    pretrain_seconds: float
    cluster_seconds: float
    history: dict[str, list] = field(default_factory=dict)
    model_path: Path | None = None
    labels_path: Path | None = None


def write_labels_csv(path: Path, labels: np.ndarray, confidence: np.ndarray | None, truth: np.ndarray | None) -> Path:
    """Write ``index,cluster[,confidence][,label]`` rows to ``path`` atomically."""
    header = ["index", "cluster"] + (["confidence"] if confidence is not None else []) + (["label"] if truth is not None else [])
    with atomic_path(path) as partial, open(partial, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for i, label in enumerate(labels):
            row = [i, int(label)] + ([f"{confidence[i]:.6f}"] if confidence is not None else [])
            writer.writerow(row + ([int(truth[i])] if truth is not None else []))
    return path


def choose_n_clusters(run, y: np.ndarray | None, n_samples: int) -> int:
    """K for a run (anything with ``n_clusters`` and ``dataset``): the explicit value, else the
    dataset's number of classes, else the number of distinct labels; checked against N."""
    if run.n_clusters is not None:
        k = run.n_clusters
    elif run.dataset in datasets.REGISTRY and datasets.REGISTRY[run.dataset].n_classes:
        k = datasets.REGISTRY[run.dataset].n_classes
    elif y is not None:
        k = len(np.unique(y))
    else:
        raise DeepstabError(f"Dataset {run.dataset!r} has no labels, so the number of clusters is unknown: pass --n-clusters.")
    if k < 2:
        raise DeepstabError(f"n_clusters must be at least 2, got {k}.")
    if k > n_samples:
        raise DeepstabError(
            f"n_clusters={k} is larger than the number of samples ({n_samples}). Use at most {n_samples} clusters or give more data."
        )
    return k


def _backup_dir(path: Path) -> Path:
    return path.parent / f".backup-{path.stem}"


def pretrained_autoencoder(run, model: keras.Model, x: np.ndarray, path: Path, kind: type, what: str = "autoencoder") -> float:
    """Load the autoencoder saved at ``path`` into ``model.autoencoder``, or pretrain it with
    ``model.pretrain`` (resumable, Adam at ``run.lr``) and save it there; return the seconds spent.
    ``run`` gives ``pretrain_epochs``, ``pretrain_batch_size``, ``lr`` and ``verbose``."""
    if path.exists():
        saved = load_model(path, expect=kind)
        if [tuple(w.shape) for w in saved.weights] != [tuple(w.shape) for w in model.autoencoder.weights]:
            raise DeepstabError(
                f"The saved autoencoder {path} was built for images of shape {saved.image_shape} or another network "
                f"size than this run ({model.autoencoder.image_shape}). Delete it or use another --models-dir."
            )
        model.autoencoder.set_weights(saved.get_weights())
        print(f"Reusing the pretrained autoencoder {path}")
        return 0.0
    print(f"Pretraining the {what}: {run.pretrain_epochs} epochs, batch {run.pretrain_batch_size}")
    start = time.perf_counter()
    backup = keras.callbacks.BackupAndRestore(str(_backup_dir(path)))
    model.pretrain(
        x,
        epochs=run.pretrain_epochs,
        batch_size=run.pretrain_batch_size,
        optimizer=keras.optimizers.Adam(run.lr),
        callbacks=[backup],
        verbose=run.verbose,
    )
    seconds = time.perf_counter() - start
    save_model(model.autoencoder, path)
    return seconds


def run_decs(
    run: DECSRun,
    callbacks: list | None = None,
    model: DECS | None = None,
    data: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> DECSResult:
    """Load the data, pretrain (or reuse) the autoencoder, cluster with DECS,
    evaluate the final model, and save the model and its labels.

    ``callbacks`` are added to the clustering stage's ``fit``. ``model``, a trained
    DECS model, is trained further instead of a new one (no pretraining, no k-means).
    ``data``, ``(x, y)`` already loaded from ``run.dataset``, saves loading it again.
    """
    keras.utils.set_random_seed(run.seed)
    x, y = data if data is not None else datasets.load(run.dataset, run.data_dir)
    if model is not None:
        return _cluster(run, model, x, y, callbacks, pretrain_seconds=0.0, initialise=False)
    k = choose_n_clusters(run, y, len(x))
    model = DECS(
        n_clusters=k,
        input_shape=x.shape[1:],
        alpha=run.alpha,
        variant=run.variant,
        lam=run.lam,
        recon_weight=run.recon_weight,
        size_prior=run.size_prior,
        on_collapse=run.on_collapse,
        collapse_share=run.collapse_share,
    )
    pretrain_seconds = pretrained_autoencoder(run, model, x, run.autoencoder_path, ConvAutoencoder)
    return _cluster(run, model, x, y, callbacks, pretrain_seconds, initialise=True)


def _cluster(run, model, x, y, extra_callbacks, pretrain_seconds: float, initialise: bool) -> DECSResult:
    """Stage 2 of :func:`run_decs`, then evaluation and saving."""
    if model.autoencoder.image_shape != tuple(x.shape[1:]):
        raise DeepstabError(
            f"The model takes images of shape {model.autoencoder.image_shape}, but {run.dataset!r} has "
            f"{tuple(x.shape[1:])}. Use the dataset the model was trained on."
        )
    k = model.n_clusters
    start = time.perf_counter()
    if initialise:
        init_labels = model.initialize_centroids(x, seed=run.seed)
        if y is not None:
            print("k-means on the pretrained embeddings: " + format_metrics(evaluate(y, init_labels)))
    steps = int(np.ceil(len(x) / run.batch_size))
    epochs = int(np.ceil(run.iterations / steps)) if run.iterations is not None else run.cluster_epochs
    callbacks: list = [keras.callbacks.BackupAndRestore(str(_backup_dir(run.model_path)))]
    if y is not None:
        callbacks.insert(0, LabelMetrics(x, y, run.eval_every))
    callbacks += list(extra_callbacks or [])
    model.compile(optimizer=keras.optimizers.Adam(run.lr))
    history = {}
    if epochs:
        print(f"Clustering: {epochs} epochs of {steps} iterations (batch {run.batch_size}), variant {run.variant!r}")
        history = model.fit(x, batch_size=run.batch_size, epochs=epochs, callbacks=callbacks, verbose=run.verbose).history
    guard = model.collapse_guard
    cluster_seconds = time.perf_counter() - start

    q = model.predict(x, batch_size=1024, verbose=0)
    labels = np.argmax(q, axis=1)
    result = DECSResult(
        model=model,
        labels=labels,
        confidence=q.max(axis=1),
        metrics=evaluate(y, labels) if y is not None else None,
        sizes=cluster_sizes(labels, k),
        collapsed_epoch=guard.collapsed_epoch if guard else None,
        restored_epoch=guard.restored_epoch if guard else None,
        iterations_run=len(history.get("loss", [])) * steps,
        pretrain_seconds=pretrain_seconds,
        cluster_seconds=cluster_seconds,
        history=history,
    )
    result.model_path = save_model(model, run.model_path)
    result.labels_path = write_labels_csv(run.model_path.with_suffix(".csv"), labels, result.confidence, y)
    return result


def format_metrics(metrics: dict[str, float]) -> str:
    """``ACC 0.9000  NMI 0.8000  ARI 0.7000``."""
    return "  ".join(f"{k.upper()} {v:.4f}" for k, v in metrics.items())


def summary(run: DECSRun, result: DECSResult) -> str:
    """The lines the command line prints at the end of a run."""
    lines = [f"DECS on {run.dataset}: {len(result.labels)} samples, {result.model.n_clusters} clusters, variant {run.variant!r}"]
    if result.metrics:
        lines.append("Final model: " + format_metrics(result.metrics))
    sizes = result.sizes
    lines.append(
        f"Cluster sizes: {sizes['counts']} ({sizes['n_nonempty']} non-empty, smallest {sizes['min_share']:.1%}, largest {sizes['max_share']:.1%})"
    )
    if result.collapsed_epoch is not None:
        guard = result.model.collapse_guard
        restored = (
            f"the weights of epoch {guard.restored_epoch + 1}" if guard.restored_epoch is not None else "the k-means initialisation"
        )
        what = {
            "restore": f"stopped and restored {restored}",
            "stop": "stopped",
            "warn": "went on",
        }.get(run.on_collapse, "")
        if run.on_collapse == "fallback":
            what = f"restored {restored} and went on with the cluster-size prior (weight {guard.fallback_prior:g})"
        lines.append(
            f"NOTE: the clustering began to collapse at epoch {result.collapsed_epoch + 1} (a cluster emptied or fell "
            f"below {run.collapse_share:.0%} of an even share); training {what}. See README, 'Collapse'."
        )
    lines.append(
        f"Iterations run: {result.iterations_run}; wall time: pretraining {result.pretrain_seconds:.0f} s, "
        f"clustering {result.cluster_seconds:.0f} s"
    )
    lines.append(f"Saved the model to {result.model_path} and the labels to {result.labels_path}")
    return "\n".join(lines)
