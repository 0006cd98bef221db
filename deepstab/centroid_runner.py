"""A DEC, IDEC or DCN run, with or without BRB: what ``python cli.py dec|idec|dcn`` does.

Example:

>>> from deepstab.centroid_runner import CentroidRun, run_centroid
>>> result = run_centroid(CentroidRun(method="idec", dataset="usps", brb=True))  # doctest: +SKIP
>>> result.metrics["acc"], result.reset_epochs  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from deepstab import datasets
from deepstab.brb import BRB
from deepstab.callbacks import LabelMetrics
from deepstab.dec import METHODS, CentroidModel, DenseAutoencoder
from deepstab.errors import DeepstabError, check_settings
from deepstab.files import atomic_path
from deepstab.metrics import cluster_sizes, evaluate
from deepstab.runner import choose_n_clusters, format_metrics, pretrained_autoencoder, write_labels_csv
from deepstab.saving import save_model


@dataclass
class CentroidRun:
    """Everything that defines a DEC/IDEC/DCN run (defaults: the BRB authors' feed-forward setup)."""

    method: str = "dec"
    dataset: str = "usps"
    data_dir: str | None = None
    n_clusters: int | None = None
    embedding_dim: int | None = None
    pretrain_epochs: int = 250
    pretrain_batch_size: int = 256
    epochs: int = 400
    batch_size: int = 256
    lr: float = 1e-3
    augment: bool = True
    alpha: float = 1.0
    target_interval: int = 1
    gamma: float = 0.1
    lam: float = 0.05
    brb: bool = False
    brb_interval: int = 20
    brb_alpha: float = 0.8
    brb_subsample: int = 10000
    brb_reset: bool = True
    brb_recluster: bool = True
    brb_reset_embedding: bool = False
    seed: int = 0
    output: str | None = None
    models_dir: str = "models"
    eval_every: int = 1
    verbose: int | None = None

    def __post_init__(self):
        if self.verbose is None:
            self.verbose = 1 if sys.stdout.isatty() else 2
        check_settings(
            self,
            choices={"method": tuple(METHODS)},
            positive=("pretrain_batch_size", "batch_size", "eval_every", "target_interval", "brb_interval", "brb_subsample"),
            non_negative=("pretrain_epochs", "epochs"),
        )
        if not 0.0 <= self.brb_alpha <= 1.0:
            raise DeepstabError(f"brb_alpha must lie in [0, 1], got {self.brb_alpha}.")
        if self.brb and not (self.brb_reset or self.brb_recluster):
            raise DeepstabError("BRB with --no-brb-reset and --no-brb-recluster does nothing: keep one of them.")

    @property
    def name(self) -> str:
        return f"{self.method}{'-brb' if self.brb else ''}"

    @property
    def model_path(self) -> Path:
        return Path(self.output) if self.output else Path(self.models_dir) / f"{self.name}-{datasets.slug(self.dataset)}.keras"

    def autoencoder_path(self, embedding_dim: int) -> Path:
        """The pretrained autoencoder shared by DEC, IDEC and DCN (with or without BRB) of this
        dataset, schedule and seed."""
        views = "" if self.augment else "-noaug"
        name = f"dense-ae-{datasets.slug(self.dataset)}-e{embedding_dim}-{self.pretrain_epochs}ep-b{self.pretrain_batch_size}{views}-seed{self.seed}.keras"
        return Path(self.models_dir) / name


@dataclass
class CentroidResult:
    model: CentroidModel
    labels: np.ndarray
    metrics: dict[str, float] | None
    init_metrics: dict[str, float] | None
    sizes: dict[str, object]
    reset_epochs: list[int]
    brb_seconds: float
    pretrain_seconds: float
    cluster_seconds: float
    history: dict[str, list] = field(default_factory=dict)
    model_path: Path | None = None
    labels_path: Path | None = None
    plot_path: Path | None = None


def build_model(run: CentroidRun, shape: tuple[int, ...], k: int) -> CentroidModel:
    own = {"dec": {"target_interval": run.target_interval}, "idec": {"target_interval": run.target_interval, "gamma": run.gamma}, "dcn": {"lam": run.lam}}
    return METHODS[run.method](k, shape, embedding_dim=run.embedding_dim, augment=run.augment, alpha=run.alpha, **own[run.method])


def pretrained_model(run: CentroidRun, x: np.ndarray, y: np.ndarray | None) -> tuple[CentroidModel, float]:
    """A new model of the run's method whose autoencoder is the shared pretrained one (pretrained
    and saved first when it is not there yet); also the seconds spent pretraining."""
    model = build_model(run, tuple(x.shape[1:]), choose_n_clusters(run, y, len(x)))
    # Pretrained on the views the clustering stage will see (augmented unless --no-augment).
    path = run.autoencoder_path(model.autoencoder.embedding_dim)
    return model, pretrained_autoencoder(run, model, x, path, DenseAutoencoder, "feed-forward autoencoder")


def run_centroid(run: CentroidRun, data: tuple[np.ndarray, np.ndarray | None] | None = None) -> CentroidResult:
    """Load the data, pretrain (or reuse) the autoencoder, k-means, cluster with the method
    (and BRB when asked), evaluate the final model, save the model, labels and a plot."""
    keras.utils.set_random_seed(run.seed)
    x, y = data if data is not None else datasets.load(run.dataset, run.data_dir)
    model, pretrain_seconds = pretrained_model(run, x, y)
    k = model.n_clusters

    start = time.perf_counter()
    init_labels = model.initialize_centroids(x, seed=run.seed)
    init_metrics = evaluate(y, init_labels) if y is not None else None
    if init_metrics:
        print("k-means on the pretrained embeddings: " + format_metrics(init_metrics))
    callbacks: list = [LabelMetrics(x, y, run.eval_every)]
    brb = None
    if run.brb:
        brb = BRB(
            x, run.brb_interval, run.brb_alpha, run.brb_subsample, run.brb_reset, run.brb_recluster,
            reset_embedding=run.brb_reset_embedding, seed=run.seed,
        )
        callbacks.append(brb)
    callbacks.append(keras.callbacks.BackupAndRestore(str(run.model_path.parent / f".backup-{run.model_path.stem}")))
    model.compile(optimizer=keras.optimizers.Adam(run.lr))
    history = {}
    if run.epochs:
        print(f"{run.name.upper()}: {run.epochs} epochs at batch {run.batch_size}" + (f", BRB every {run.brb_interval} epochs" if brb else ""))
        history = model.fit(x, batch_size=run.batch_size, epochs=run.epochs, callbacks=callbacks, verbose=run.verbose, seed=run.seed).history
    cluster_seconds = time.perf_counter() - start

    labels = model.predict_labels(x)
    result = CentroidResult(
        model, labels, evaluate(y, labels) if y is not None else None, init_metrics, cluster_sizes(labels, k),
        list(brb.reset_epochs) if brb else [], brb.seconds if brb else 0.0, pretrain_seconds, cluster_seconds, history,
    )
    result.model_path = save_model(model, run.model_path)
    result.labels_path = write_labels_csv(run.model_path.with_suffix(".csv"), labels, None, y)
    if "acc" in history:
        result.plot_path = plot_history(history, result.reset_epochs, run.model_path.with_suffix(".png"), run.name.upper())
    return result


def plot_history(history: dict[str, list], reset_epochs: list[int], path: Path, title: str) -> Path | None:
    """ACC (and the label change rate) over epochs with the BRB interventions marked, as a PNG;
    ``None`` without matplotlib (the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = np.arange(1, len(history["acc"]) + 1)
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot(epochs, history["acc"], label="ACC")
    if "label_change" in history:
        axis.plot(epochs, history["label_change"], label="label change rate", alpha=0.7)
    for i, epoch in enumerate(reset_epochs):
        axis.axvline(epoch + 0.5, color="grey", linestyle=":", label="BRB reset + recluster" if i == 0 else None)
    axis.set_xlabel("epoch")
    axis.set_ylim(0, 1)
    axis.set_title(title)
    axis.legend(loc="center right")
    figure.tight_layout()
    with atomic_path(path) as partial:
        figure.savefig(partial, format="png", dpi=100)
    plt.close(figure)
    return path


def summary(run: CentroidRun, result: CentroidResult) -> str:
    """The lines the command line prints at the end of a run."""
    lines = [f"{run.name.upper()} on {run.dataset}: {len(result.labels)} samples, {result.model.n_clusters} clusters"]
    if result.metrics:
        lines.append("Final model: " + format_metrics(result.metrics) + "  (k-means init: " + format_metrics(result.init_metrics) + ")")
    sizes = result.sizes
    lines.append(f"Cluster sizes: {sizes['counts']} ({sizes['n_nonempty']} non-empty)")
    if run.brb:
        lines.append(
            f"BRB interventions at the start of epochs: {', '.join(str(e + 1) for e in result.reset_epochs) or 'none'} "
            f"({result.brb_seconds:.1f} s in all)"
        )
    lines.append(f"Wall time: pretraining {result.pretrain_seconds:.0f} s, clustering {result.cluster_seconds:.0f} s")
    saved = f"Saved the model to {result.model_path} and the labels to {result.labels_path}"
    lines.append(saved + (f"; ACC over epochs in {result.plot_path}" if result.plot_path else ""))
    return "\n".join(lines)
