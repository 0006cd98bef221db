"""A DEC, IDEC or DCN run, with or without BRB: what ``python cli.py dec|idec|dcn`` does.

Example:

>>> from deepstab.runs.centroid import CentroidRun, run_centroid
>>> result = run_centroid(CentroidRun(method="idec", dataset="usps", brb=True))  # doctest: +SKIP
>>> result.metrics["acc"], result.reset_epochs  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from deepstab import checks, datasets, distributed
from deepstab.analysis.k_choice import parse_k_range
from deepstab.analysis.progress import LabelMetrics
from deepstab.checkpoint import Checkpoint
from deepstab.errors import DeepstabError
from deepstab.io import atomic_path, save_model, write_labels_csv
from deepstab.methods.brb import BRB, RESET_DRAWS, SUBSAMPLES
from deepstab.methods.dec import CENTROID_UPDATES, DCN, DEC, IDEC, METHODS, TARGETS, VIEWS, FeedForwardClusterer
from deepstab.methods.losses import COUNT_RULES
from deepstab.metrics import cluster_sizes, evaluate
from deepstab.nn.autoencoders import AUGMENTATIONS, STANDARDISATIONS
from deepstab.nn.networks import INITS
from deepstab.nn.optimizers import Adam
from deepstab.precision import precision_scope
from deepstab.runs.common import (
    CHECKPOINT_SECONDS,
    autoencoder_path,
    checkpoint_folder,
    choose_n_clusters,
    chosen_k,
    format_metrics,
    guarded_output,
    pretrained_autoencoder,
)
from deepstab.runs.progress import TimeEstimate
from deepstab.runs.report import report_after_run
from deepstab.runs.settings import RunSettings, default_of, k_range_setting, n_clusters_setting, output_path, setting

METHOD_ONLY = {
    "target": ("dec", "idec"),
    "target_interval": ("dec", "idec"),
    "gamma": ("idec",),
    "lam": ("dcn",),
    "centroid_update": ("dcn",),
    "counts": ("dcn",),
    "reseed_lost": ("dcn",),
}
# The settings that change the pretrained autoencoder (with the data, its cache key).
AUTOENCODER_SETTINGS = (
    "embedding_dim", "input_side", "standardise", "batch_norm", "init", "augmentation", "pretrain_augmented",
    "clip_norm", "pretrain_epochs", "pretrain_batch_size", "lr", "seed",
)  # fmt: skip


def _own(cls: type, name: str, help: str, **kwargs):
    """A setting whose default is ``cls``'s constructor default for ``name``."""
    return setting(default_of(cls, name), help, **kwargs)


@dataclass
class CentroidRun(RunSettings):
    """Everything that defines a DEC/IDEC/DCN run. The defaults are the BRB authors' code and
    configuration for the feed-forward runs of their paper."""

    adam_epsilon = 1e-8  # PyTorch's, as the BRB authors' code

    def optimizer(self) -> keras.optimizers.Optimizer:
        """Adam at ``lr`` with PyTorch's epsilon and in-place update, for either stage."""
        return Adam(self.lr, epsilon=self.adam_epsilon)

    method: str = setting("dec", "The centroid method.", choices=tuple(METHODS), cli=False)
    dataset: str = setting("usps", "Dataset name (see `datasets`), npz:PATH or folder:PATH.")
    n_clusters: str | int | None = n_clusters_setting()
    k_range: str | None = k_range_setting()
    embedding_dim: int | None = setting(
        None, "Embedding size e of d-1024-512-256-e. [default: K]", check=checks.positive_int
    )
    input_side: int | None = _own(
        FeedForwardClusterer,
        "image_size",
        "Side of the square images the autoencoder takes (resized inside the model). "
        "[default: 28 for grey images, 32 for colour, as the BRB authors]",
        check=checks.positive_int,
    )
    standardise: str = _own(
        FeedForwardClusterer,
        "standardise",
        "channel: one mean and std per channel (the BRB authors); pixel: per pixel, std floored at the average.",
        choices=STANDARDISATIONS,
    )
    batch_norm: bool = _own(FeedForwardClusterer, "batch_norm", "Batch normalisation after every hidden layer.")
    init: str = _own(
        FeedForwardClusterer, "init", "Initial weights: torch (nn.Linear's) or glorot (Keras's).", choices=INITS
    )
    augmentation: str = _own(
        FeedForwardClusterer,
        "augmentation",
        "Random views: affine (rotation ±16°, whole-pixel shift ≤10%, x-shear ±8°, nearest; the BRB authors), "
        "shift-rotation (DECS's: ±10°, ±10%, bilinear) or none.",
        choices=AUGMENTATIONS,
    )
    pretrain_augmented: bool = _own(
        FeedForwardClusterer,
        "pretrain_augmented",
        "Pretrain on random views (the BRB authors pretrain on clean images).",
    )
    clip_norm: float | None = _own(
        FeedForwardClusterer,
        "clip_norm",
        "Clip the autoencoder's gradients to this global norm.",
        check=checks.positive,
    )
    views: str = _own(
        FeedForwardClusterer,
        "views",
        "both: a clean and an augmented view per step (the BRB authors); augmented: the augmented view only.",
        choices=VIEWS,
    )
    pretrain_epochs: int = setting(250, "Autoencoder pretraining epochs (MSE, Adam).", check=checks.non_negative_int)
    pretrain_batch_size: int = setting(256, "Pretraining batch size.", check=checks.positive_int)
    epochs: int = setting(400, "Clustering epochs.", check=checks.non_negative_int)
    batch_size: int = setting(256, "Clustering batch size.", check=checks.positive_int)
    lr: float = setting(1e-3, "Adam learning rate for both stages (epsilon 1e-8, as PyTorch's).", check=checks.positive)
    alpha: float = _own(
        FeedForwardClusterer,
        "alpha",
        "Student-t degrees of freedom of the soft assignments.",
        check=checks.positive,
        cli=False,
    )
    target: str = _own(
        DEC,
        "target",
        "batch: P of the clean view in each batch (the BRB authors); dataset: P of the whole training set.",
        choices=TARGETS,
        commands=METHOD_ONLY["target"],
    )
    target_interval: int = _own(
        DEC,
        "target_interval",
        "With --target dataset, refresh P every N epochs.",
        check=checks.positive_int,
        commands=METHOD_ONLY["target_interval"],
    )
    gamma: float = _own(
        IDEC,
        "gamma",
        "γ: weight of the clustering loss, L = L_r + γ L_c (IDEC Eq. 7).",
        check=checks.non_negative,
        commands=METHOD_ONLY["gamma"],
    )
    lam: float = _own(
        DCN,
        "lam",
        "λ: weight of the k-means term, the mean over N x K of ||z - m||² A (DCN Eq. 5, the BRB authors).",
        check=checks.non_negative,
        commands=METHOD_ONLY["lam"],
    )
    centroid_update: str = _own(
        DCN,
        "centroid_update",
        "epoch: a pass over the clean images after every epoch (the BRB authors); batch: every step.",
        choices=CENTROID_UPDATES,
        commands=METHOD_ONLY["centroid_update"],
    )
    counts: str = _own(
        DCN,
        "counts",
        "frozen: step 1/(c+1) with c fixed at 100 (what the BRB authors' code computes); eq8: counts grow (DCN Eq. 8); "
        "mini-batch: c <- c/2 + n/2 per batch (their update's center_lr=0.5 default, which their call leaves unused).",
        choices=COUNT_RULES,
        commands=METHOD_ONLY["counts"],
    )
    reseed_lost: bool = _own(
        DCN, "reseed_lost", "Re-seed clusters that got no sample in an epoch.", commands=METHOD_ONLY["reseed_lost"]
    )
    brb: bool = setting(
        False, "Break the reclustering barrier (ICLR 2025): soft reset and re-clustering every --brb-interval epochs."
    )
    brb_interval: int = _own(BRB, "interval", "Epochs T between BRB interventions.", check=checks.positive_int)
    brb_alpha: float = _own(BRB, "alpha", "Soft-reset factor α: θ ← α θ + (1 - α) φ.", check=checks.fraction)
    brb_subsample: int = _own(
        BRB, "subsample", "Images embedded for BRB's k-means re-clustering.", check=checks.positive_int
    )
    brb_subsample_order: str = _own(
        BRB,
        "subsample_order",
        "first: the first images every time (the BRB authors); random: a new random sample.",
        choices=SUBSAMPLES,
    )
    brb_draws: str = _own(
        BRB,
        "draws",
        "φ of the soft reset: kaiming (the BRB authors) or layer (each layer's own initializers).",
        choices=RESET_DRAWS,
    )
    brb_reset: bool = _own(BRB, "reset", "Do BRB's soft reset (--no-brb-reset: recluster-only ablation).")
    brb_recluster: bool = _own(
        BRB, "recluster", "Do BRB's re-clustering and moment reset (--no-brb-recluster: reset-only ablation)."
    )
    brb_reset_embedding: bool = _own(BRB, "reset_embedding", "Include the embedding layer in the soft reset.")
    output: str | None = setting(
        None,
        "Model file (.keras); labels (.csv) and ACC over epochs (.png) go beside it. "
        "[default: models/<method>[-brb]-<dataset>.keras]",
        path="file",
        training=False,
    )
    models_dir: str = setting(
        "models", "Where pretrained autoencoders are kept and shared by dec, idec and dcn.", path="dir", training=False
    )
    eval_every: int = setting(
        1,
        "Record the label change rate (and ACC/NMI/ARI with labels) every N epochs (reporting only).",
        check=checks.positive_int,
        training=False,
    )

    def validate(self) -> None:
        if self.brb and not (self.brb_reset or self.brb_recluster):
            raise DeepstabError("BRB with --no-brb-reset and --no-brb-recluster does nothing: keep one of them.")

    @property
    def name(self) -> str:
        return f"{self.method}{'-brb' if self.brb else ''}"

    @property
    def model_path(self) -> Path:
        return output_path(self, f"{self.name}-{self.slug}")

    def model_settings(self) -> dict:
        """The keyword arguments of the method's class that this run sets."""
        shared = ("embedding_dim", "standardise", "batch_norm", "init", "augmentation")
        shared += ("pretrain_augmented", "clip_norm", "views", "alpha")
        own = tuple(name for name, methods in METHOD_ONLY.items() if self.method in methods)
        return {name: getattr(self, name) for name in shared + own} | {"image_size": self.input_side, "seed": self.seed}


@dataclass
class CentroidResult:
    model: FeedForwardClusterer
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


def build_model(run: CentroidRun, shape: tuple[int, ...], k: int, **settings) -> FeedForwardClusterer:
    with precision_scope(run.precision):
        return METHODS[run.method](k, shape, **(run.model_settings() | settings))


# The embedding size e of a run that chooses K (the default e = K is not known before the
# autoencoder is pretrained): the authors' e on their ten-class datasets.
AUTO_EMBEDDING_DIM = 10


def pretrained_model(run: CentroidRun, x: np.ndarray, y: np.ndarray | None) -> tuple[FeedForwardClusterer, float]:
    """A new model of the run's method whose autoencoder is the shared pretrained one (pretrained
    and saved first when it is not there yet); also the seconds spent pretraining. With
    ``--n-clusters auto``, K is chosen from the pretrained embedding (:func:`chosen_k`)."""
    k = choose_n_clusters(run, y, len(x))
    auto = k == checks.AUTO
    shape = tuple(x.shape[1:])
    fixed = {"embedding_dim": run.embedding_dim or AUTO_EMBEDDING_DIM} if auto else {}
    model = build_model(run, shape, parse_k_range(run.k_range)[0] if auto else k, **fixed)
    settings = {name: getattr(run, name) for name in AUTOENCODER_SETTINGS} | {"n_clusters": k}
    path = autoencoder_path(run, "dense-ae", x, settings)
    seconds = pretrained_autoencoder(run, model, x, path, "feed-forward autoencoder")
    if auto:  # the same autoencoder under the clustering layer of the chosen K
        choice = chosen_k(run, model.embed(x))
        pretrained, model = model, build_model(run, shape, choice.k, k_choice=choice.to_config(), **fixed)
        model.autoencoder.set_weights(pretrained.autoencoder.get_weights())
    return model, seconds


def run_centroid(
    run: CentroidRun, data: tuple[np.ndarray, np.ndarray | None] | None = None, callbacks: list | None = None
) -> CentroidResult:
    """Load the data, pretrain (or reuse) the autoencoder, k-means, cluster with the method
    (and BRB when asked), evaluate the final model, save the model, labels and a plot.

    ``data``, ``(x, y)`` already loaded from ``run.dataset``, saves loading it again;
    ``callbacks`` are added to the clustering stage's ``fit``."""
    distributed.refuse(run.method.upper())
    with guarded_output(run):
        keras.utils.set_random_seed(run.seed)
        x, y = data if data is not None else datasets.load(run.dataset, run.data_dir, image_size=run.image_size)
        return _cluster(run, x, y, callbacks or [])


def _cluster(run: CentroidRun, x: np.ndarray, y: np.ndarray | None, extra_callbacks: list) -> CentroidResult:
    model, pretrain_seconds = pretrained_model(run, x, y)
    k = model.n_clusters

    start = time.perf_counter()
    init_labels = model.initialize_centroids(x)
    init_metrics = evaluate(y, init_labels) if y is not None else None
    if init_metrics:
        print("k-means on the pretrained embeddings: " + format_metrics(init_metrics))
    callbacks: list = [LabelMetrics(x, y, run.eval_every), TimeEstimate("clustering")]
    brb = None
    if run.brb:
        brb = BRB(
            x,
            run.brb_interval,
            run.brb_alpha,
            run.brb_subsample,
            run.brb_reset,
            run.brb_recluster,
            reset_embedding=run.brb_reset_embedding,
            draws=run.brb_draws,
            subsample_order=run.brb_subsample_order,
        )
        callbacks.append(brb)
    checkpoint = Checkpoint(checkpoint_folder(run.model_path), run.training_settings(), min_seconds=CHECKPOINT_SECONDS)
    callbacks += [checkpoint, *extra_callbacks]
    model.compile(optimizer=run.optimizer())
    initial_epoch = checkpoint.restore(model)
    history = {}
    if run.epochs:
        brb_note = f", BRB every {run.brb_interval} epochs" if brb else ""
        print(f"{run.name.upper()}: {run.epochs} epochs at batch {run.batch_size}{brb_note}")
        history = model.fit(
            x,
            batch_size=run.batch_size,
            epochs=run.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=run.verbose,
        ).history
    cluster_seconds = time.perf_counter() - start

    labels, confidence = model.predict_clusters(x)
    result = CentroidResult(
        model,
        labels,
        evaluate(y, labels) if y is not None else None,
        init_metrics,
        cluster_sizes(labels, k),
        list(brb.reset_epochs) if brb else [],
        brb.seconds if brb else 0.0,
        pretrain_seconds,
        cluster_seconds,
        history,
    )
    result.model_path = save_model(model, run.model_path)
    result.labels_path = write_labels_csv(run.model_path.with_suffix(".csv"), labels, confidence, y)
    if "acc" in history:
        result.plot_path = plot_history(
            history, result.reset_epochs, run.model_path.with_suffix(".png"), run.name.upper()
        )
    checkpoint.remove()
    report_after_run(run, model, x, y, labels, confidence, callbacks=extra_callbacks)
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
        lines.append(
            "Final model: "
            + format_metrics(result.metrics)
            + "  (k-means init: "
            + format_metrics(result.init_metrics)
            + ")"
        )
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
