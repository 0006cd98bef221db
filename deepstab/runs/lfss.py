"""An LFSS run from data to saved model: what ``python cli.py lfss`` does, callable from Python.

Example:

>>> from deepstab.runs.lfss import LFSSRun, run_lfss
>>> result = run_lfss(LFSSRun(dataset="cifar10-jpg", preset="cpu"))  # doctest: +SKIP
>>> result.metrics["acc"]  # doctest: +SKIP

Under ``torchrun --nproc_per_node N`` the run trains one model on N processes
(:mod:`deepstab.distributed`): ``batch_size`` images per process and step, the learning rate
multiplied by N (the linear scaling rule); rank 0 alone loads a checkpoint (the others receive
its state), writes checkpoints, prints and saves the model and labels.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import torch

from deepstab import checks, datasets, distributed
from deepstab.analysis.k_choice import KChoice
from deepstab.checkpoint import Checkpoint
from deepstab.datasets.store import to_unit_float
from deepstab.datasets.streaming import IndexedImages
from deepstab.errors import DeepstabError
from deepstab.io import save_model, write_labels_csv
from deepstab.methods.lfss import BASES, LFSSModel, lfss_optimizer
from deepstab.metrics import cluster_sizes
from deepstab.nn.networks import RESNETS
from deepstab.precision import precision_scope
from deepstab.runs.common import checkpoint_folder, choose_n_clusters, format_metrics, guarded_output, k_plot_path
from deepstab.runs.progress import TimeEstimate
from deepstab.runs.report import report_after_run
from deepstab.runs.settings import RunSettings, default_of, k_range_setting, n_clusters_setting, output_path, setting

# The paper's schedule (LFSS §4.1) and a CPU-sized one (docs/results.md, "LFSS").
PRESETS: dict[str, dict[str, float | int]] = {
    "paper": {
        "epochs": 1000,
        "batch_size": 256,
        "depth": 18,
        "width": 1.0,
        "hidden": 4096,
        "dim": 256,
        "eta": 200,
        "momentum": 0.996,
    },
    "cpu": {
        "epochs": 10,
        "batch_size": 128,
        "depth": 18,
        "width": 0.125,
        "hidden": 512,
        "dim": 128,
        "eta": 5,
        "momentum": 0.99,
    },
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
# Per-dataset normalisation, the authors' constants (their util.normalize): CIFAR's own, and
# ImageNet's for the other registered sets; other data gets its own channel statistics.
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALISATION = {
    "cifar10": CIFAR10,
    "cifar10-jpg": CIFAR10,
    "cifar20": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "stl10": IMAGENET,
    "imagenet10": IMAGENET,
    "imagenet-dogs": IMAGENET,
    "tiny-imagenet": IMAGENET,
}


FROM_PRESET = "[default: from --preset]"
PRESET_HELP = (
    "Schedule and network size. "
    + "; ".join(f"{k}: " + ", ".join(f"{a} {b}" for a, b in v.items()) for k, v in PRESETS.items())
    + "."
)


@dataclass
class LFSSRun(RunSettings):
    """Everything that defines an LFSS run; ``None`` fields take the preset's (or the paper's
    per-dataset) value."""

    dataset: str = setting("cifar10-jpg", "Dataset name (see `datasets`), npz:PATH or folder:PATH.")
    preset: str = setting("paper", PRESET_HELP, choices=tuple(PRESETS))
    n_clusters: str | int | None = n_clusters_setting()
    k_range: str | None = k_range_setting()
    epochs: int | None = setting(None, f"Training epochs. {FROM_PRESET}", check=checks.positive_int)
    batch_size: int | None = setting(
        None, f"Batch size (per process under torchrun). {FROM_PRESET}", check=checks.positive_int
    )
    lr: float = setting(
        0.05,
        "Base SGD learning rate: a 10-epoch warm-up, then cosine decay per iteration towards half of it "
        "(the LFSS authors' schedule); 10x for the predictor; times N on N processes under torchrun.",
        check=checks.positive,
    )
    eta: int | None = setting(
        None,
        "Warm-up epochs before the cluster-level loss (η). [default: the paper's per dataset, else from --preset]",
        check=checks.non_negative_int,
    )
    sigma: float | None = setting(
        None,
        "Noise σ before the predictor (Eq. 9). [default: the paper's per dataset, else 0.001]",
        check=checks.non_negative,
    )
    delta: float = setting(
        default_of(LFSSModel, "delta"),
        "Share δ of least stable samples left out of the cluster-level loss.",
        check=checks.share,
    )
    lam: float = setting(default_of(LFSSModel, "lam"), "Weight λ of L_I + L_C (Eq. 10).", check=checks.non_negative)
    tau: float = setting(default_of(LFSSModel, "tau"), "NT-Xent temperature τ.", check=checks.positive)
    momentum: float | None = setting(None, f"EMA momentum of the target network. {FROM_PRESET}", check=checks.fraction)
    weight_decay: float = setting(default_of(LFSSModel, "weight_decay"), "L2 weight decay.", check=checks.non_negative)
    depth: int | None = setting(None, f"ResNet depth. {FROM_PRESET}", choices=tuple(RESNETS))
    width: float | None = setting(None, f"ResNet channel multiplier. {FROM_PRESET}", check=checks.positive)
    hidden: int | None = setting(
        None, f"Hidden size of projector and predictor. {FROM_PRESET}", check=checks.positive_int
    )
    dim: int | None = setting(None, f"Representation size. {FROM_PRESET}", check=checks.positive_int)
    base: str = setting(
        default_of(LFSSModel, "base"), "byol (LFSS proper), or L_I + L_C on simclr or moco (Table 6).", choices=BASES
    )
    stability: bool = setting(
        default_of(LFSSModel, "stability"),
        "Use the sample-stability losses L_I and L_C; --no-stability trains the plain base method.",
    )
    sync_batch_norm: bool = setting(
        default_of(LFSSModel, "sync_batch_norm"),
        "Under torchrun, normalise with the statistics of the global batch (all processes); "
        "otherwise each process uses its own batch's.",
    )
    output: str | None = setting(
        None,
        "Model file (.keras); labels go beside it as .csv. [default: models/lfss-<dataset>.keras]",
        path="file",
        training=False,
    )
    models_dir: str = setting("models", "Default folder of the model file.", path="dir", training=False)
    checkpoint_every: int = setting(1, "Save a checkpoint every N epochs.", check=checks.positive_int, training=False)
    resume: bool = setting(
        False, "Go on from the last checkpoint of an interrupted run with the same --output.", training=False
    )
    eval_runs: int = setting(
        10, "k-means runs averaged for ACC/NMI/ARI (the paper: 10).", check=checks.positive_int, training=False
    )

    def resolve(self) -> None:
        checks.choice("preset", self.preset, PRESETS)
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        paper_eta, paper_sigma = PAPER_ETA_SIGMA.get(self.dataset, (None, 0.001))
        if self.eta is None:
            self.eta = paper_eta if self.preset == "paper" and paper_eta is not None else PRESETS[self.preset]["eta"]
        if self.sigma is None:
            self.sigma = paper_sigma

    @property
    def model_path(self) -> Path:
        suffix = "" if self.stability else "-nostab"
        base = "" if self.base == "byol" else f"-{self.base}"
        return output_path(self, f"lfss{base}{suffix}-{self.slug}")


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


def build_model(run: LFSSRun, x: np.ndarray, k: int | str) -> LFSSModel:
    """The run's model; ``k="auto"`` leaves K to be chosen from the embedding (:class:`LFSSModel`)."""
    mean, std = _normalisation(run.dataset, x)
    with precision_scope(run.precision):
        return _build(run, x, k, mean, std)


def _build(run: LFSSRun, x: np.ndarray, k: int | str, mean: tuple, std: tuple) -> LFSSModel:
    return LFSSModel(
        x.shape[1:],
        None if k == checks.AUTO else k,
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
        sync_batch_norm=run.sync_batch_norm,
        k_range=run.k_range,
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
    distributed.setup()
    with guarded_output(run) if distributed.is_main() else contextlib.nullcontext():
        keras.utils.set_random_seed(run.seed)
        if data is None:
            with distributed.main_first():  # rank 0 downloads and converts, the others read
                data = datasets.load(run.dataset, run.data_dir, stream=True, image_size=run.image_size)
        return _train(run, *data, callbacks, model)


def _advice(seconds: float) -> str | None:
    """A word on a schedule of more than a day on a machine without a GPU."""
    if seconds > 86400 and not torch.cuda.is_available():
        return "No GPU was found; --preset cpu trains a smaller network on a shorter schedule"
    return None


def _train(run: LFSSRun, x, y, callbacks: list | None, model: LFSSModel | None) -> LFSSResult:
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DeepstabError(f"LFSS needs images (N, H, W, 1 or 3); {run.dataset!r} has shape {x.shape}.")
    k = choose_n_clusters(run, y, len(x))
    batch_size = min(run.batch_size, len(x))
    batches = IndexedImages(x, batch_size, seed=run.seed, drop_last=False)  # the authors train on the rest too
    if model is None:
        model = build_model(run, x, k)
    elif model.image_shape != tuple(x.shape[1:]):
        raise DeepstabError(
            f"The model takes images of shape {model.image_shape}, but {run.dataset!r} has {tuple(x.shape[1:])}."
        )
    world = distributed.world_size()
    model.compile(optimizer=lfss_optimizer(run.lr * world, len(batches), run.epochs))
    checkpoint = Checkpoint(checkpoint_folder(run.model_path), run.training_settings(), every=run.checkpoint_every)
    main = distributed.is_main()
    if main and checkpoint.exists and not run.resume:
        raise DeepstabError(
            f"A checkpoint of an unfinished run exists in {checkpoint.folder}. Pass --resume to go on from it, "
            f"or --fresh to start over."
        )
    initial_epoch = distributed.broadcast_object(checkpoint.restore(model) if main else 0)  # RankSync shares it
    if main:
        processes = f" on {world} processes" if world > 1 else ""
        print(
            f"LFSS ({run.base}{'' if run.stability else ', no stability losses'}) on {run.dataset}: {len(x)} images, "
            f"K={k}, ResNet-{run.depth} x{run.width:g}, {run.epochs} epochs of {len(batches)} batches of "
            f"{batch_size * world}{processes}, η={run.eta}"
        )
    start = time.perf_counter()
    history = model.fit(
        batches,
        epochs=run.epochs,
        initial_epoch=initial_epoch,
        callbacks=[*([checkpoint, TimeEstimate("training", advice=_advice)] if main else []), *(callbacks or [])],
        verbose=run.verbose,
    ).history
    seconds = time.perf_counter() - start

    z = distributed.gather_array(model.embed(x[distributed.shard(len(x))]), len(x))
    result = LFSSResult(model, np.zeros(0, np.int64), None, {}, seconds, history)
    model.choose_n_clusters(z)  # with --n-clusters auto, where no L_C epoch chose K
    if main:
        if model.k_choice:
            KChoice.from_config(model.k_choice).plot(k_plot_path(run.model_path))
        result.labels = model.predict_labels(x, seed=run.seed, embeddings=z)
        result.sizes = cluster_sizes(result.labels, model.n_clusters)
        if y is not None and (y >= 0).any():
            result.metrics = model.evaluate_clustering(x, y, runs=run.eval_runs, embeddings=z)
        result.model_path = save_model(model, run.model_path)
        result.labels_path = write_labels_csv(run.model_path.with_suffix(".csv"), result.labels, None, y)
        checkpoint.remove()
        report_after_run(run, model, x, y, result.labels, None, embeddings=z, callbacks=callbacks)
    distributed.barrier()
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
