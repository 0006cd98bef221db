"""A DECS run from data to saved model: what ``python cli.py decs`` does, callable from Python.

Example:

>>> from deepstab.runs.decs import DECSRun, run_decs
>>> result = run_decs(DECSRun(dataset="digits", preset="quick", output="/tmp/decs-digits.keras"))  # doctest: +SKIP
>>> result.metrics["acc"]  # doctest: +SKIP
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
from deepstab.io import save_model, write_labels_csv
from deepstab.methods.collapse import COLLAPSE_ACTIONS
from deepstab.methods.decs import DECS, PRIOR_TARGETS, STARTS
from deepstab.methods.losses import VARIANTS
from deepstab.metrics import cluster_sizes, evaluate
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

# Schedules. "default" is one rule for every dataset, measured on USPS, MNIST-test and digits
# (docs/results.md, bench/decs_pretraining.py): pretraining is counted in Adam steps, because the
# k-means quality of the embedding follows the steps taken whatever the batch size (32, 64 and 256
# measured on USPS) and a step at batch 32 is the cheapest; 30,000 steps at batch 32, at most 100
# epochs (the cap binds below 9,600 images and keeps small datasets short) at a constant rate, then
# 80 clustering epochs at batch 256. "paper" is DECS's own (§4.2: 500 pretraining epochs at batch
# 256, 10,000 clustering iterations). "quick" is a smoke test. A cosine-decayed pretraining rate
# (--pretrain-schedule cosine) is measured on one seed only (docs/results.md).
PRESETS: dict[str, dict[str, int | str]] = {
    "default": {
        "pretrain_steps": 30000,
        "pretrain_epochs": 100,
        "pretrain_batch_size": 32,
        "pretrain_schedule": "constant",
        "cluster_epochs": 80,
    },
    "paper": {"pretrain_epochs": 500, "pretrain_batch_size": 256, "pretrain_schedule": "constant", "iterations": 10000},
    "quick": {"pretrain_epochs": 10, "pretrain_batch_size": 32, "pretrain_schedule": "constant", "cluster_epochs": 20},
}
PRETRAIN_SCHEDULES = ("constant", "cosine")


def _describe(p: dict[str, int | str]) -> str:
    clustering = (
        f"{p['iterations']} clustering iterations" if "iterations" in p else f"{p['cluster_epochs']} clustering epochs"
    )
    pretraining = f"{p['pretrain_epochs']} pretraining epochs"
    if "pretrain_steps" in p:
        pretraining = f"{p['pretrain_steps']} pretraining steps (at most {p['pretrain_epochs']} epochs)"
    return f"{pretraining} at batch {p['pretrain_batch_size']} ({p['pretrain_schedule']} rate), {clustering}"


PRESET_HELP = "Schedule. " + "; ".join(f"{name}: {_describe(p)}" for name, p in PRESETS.items()) + "."
FROM_PRESET = "[default: from --preset]"


@dataclass
class DECSRun(RunSettings):
    """Everything that defines a DECS run; ``None`` fields take the preset's value."""

    def optimizer(self) -> keras.optimizers.Optimizer:
        """Adam at ``lr`` with Keras's epsilon (the DECS authors' Keras code) and deepstab's
        in-place update (:class:`deepstab.nn.optimizers.Adam`), for either stage."""
        return Adam(self.lr)

    def pretrain_optimizer(self, n_images: int) -> keras.optimizers.Optimizer:
        """:meth:`optimizer` with the pretraining schedule: its rate is ``lr`` throughout, or
        ``lr · (1 + cos(π s / S)) / 2`` at step ``s`` of the ``S`` pretraining steps on ``n_images``."""
        if self.pretrain_schedule == "constant":
            return self.optimizer()
        steps = self.pretraining_epochs(n_images) * int(np.ceil(n_images / self.pretrain_batch_size))
        return Adam(keras.optimizers.schedules.CosineDecay(self.lr, max(steps, 1), alpha=0.0))

    preset: str = setting("default", PRESET_HELP, choices=tuple(PRESETS))
    n_clusters: str | int | None = n_clusters_setting()
    k_range: str | None = k_range_setting()
    pretrain_epochs: int | None = setting(
        None,
        f"Autoencoder pretraining epochs (with --pretrain-steps: at most this many). {FROM_PRESET}",
        check=checks.non_negative_int,
    )
    pretrain_steps: int | None = setting(
        None,
        f"Autoencoder pretraining steps (batches), rounded up to whole epochs. {FROM_PRESET}",
        check=checks.non_negative_int,
    )
    pretrain_batch_size: int | None = setting(None, f"Pretraining batch size. {FROM_PRESET}", check=checks.positive_int)
    pretrain_schedule: str | None = setting(
        None,
        f"Pretraining learning rate: constant (--lr throughout) or cosine (from --lr down to 0 over the "
        f"pretraining steps). {FROM_PRESET}",
        choices=PRETRAIN_SCHEDULES,
    )
    iterations: int | None = setting(
        None,
        f"Clustering iterations (batches), rounded up to whole epochs. {FROM_PRESET}",
        check=checks.non_negative_int,
    )
    cluster_epochs: int | None = setting(
        None, f"Clustering epochs (instead of --iterations). {FROM_PRESET}", check=checks.non_negative_int
    )
    batch_size: int = setting(256, "Clustering batch size.", check=checks.positive_int)
    lr: float = setting(1e-3, "Adam learning rate for both stages.", check=checks.positive)
    variant: str = setting(
        default_of(DECS, "variant"),
        "Loss: 'paper' (Eqs. 6-8) or 'reference' (the authors' released code).",
        choices=VARIANTS,
    )
    alpha: float = setting(default_of(DECS, "alpha"), "Student-t degrees of freedom (Eq. 5).", check=checks.positive)
    lam: float | None = setting(
        None, "λ of Eq. 7. [default: 0.8 for paper, 0.4 for reference]", check=checks.non_negative
    )
    recon_weight: float = setting(
        default_of(DECS, "recon_weight"),
        "Weight of the reconstruction term of Eq. 1 during clustering.",
        check=checks.non_negative,
    )
    size_prior: float = setting(
        default_of(DECS, "size_prior"),
        "Weight of the cluster-size prior KL(mean q || target), the target set by --prior-target (not part of DECS; "
        "0 gives the paper's loss).",
        check=checks.non_negative,
    )
    prior_target: str = setting(
        default_of(DECS, "prior_target"),
        "What the size prior (and --on-collapse fallback's) pulls the cluster shares toward: uniform, or start (the "
        "clustering start's shares).",
        choices=PRIOR_TARGETS,
    )
    size_floor: float = setting(
        default_of(DECS, "size_floor"),
        "Weight of a barrier that keeps every cluster above --floor-share of an even share of each batch (not part "
        "of DECS; 0 disables).",
        check=checks.non_negative,
    )
    floor_share: float = setting(
        default_of(DECS, "floor_share"), "The share of an even split below which --size-floor pushes back."
    )
    on_collapse: str = setting(
        default_of(DECS, "on_collapse"),
        "What to do when a cluster empties or shrinks: fallback (restore the last healthy weights once and go on with "
        "the size prior at weight 1), split (refill it by the best 2-means split of another cluster, up to 3 times, "
        "then fall back), restart (start clustering over from the next-best k-means start, up to 2 times, then fall "
        "back), restore (restore and stop), stop, or warn.",
        choices=COLLAPSE_ACTIONS,
    )
    start: str = setting(
        default_of(DECS, "start"),
        "Clustering start: balanced (of 20 k-means partitions, the lowest-inertia one without a cluster under two "
        "thirds of an even share, if one lies within 5% of the lowest inertia) or inertia (the lowest inertia, as the "
        "paper).",
        choices=STARTS,
    )
    collapse_share: float = setting(
        default_of(DECS, "collapse_share"),
        "A cluster smaller than this share of an even split (1/K) counts as collapsing.",
        check=checks.share,
    )
    output: str | None = setting(
        None,
        "Model file (.keras); labels go beside it as .csv. [default: models/decs-<dataset>.keras]",
        path="file",
        training=False,
    )
    models_dir: str = setting(
        "models", "Where pretrained autoencoders are kept and reused.", path="dir", training=False
    )
    eval_every: int = setting(
        10,
        "Print ACC/NMI/ARI every N epochs when labels exist (the checks only watch: they change nothing the run "
        "learns).",
        check=checks.positive_int,
        training=False,
    )

    def resolve(self) -> None:
        checks.choice("preset", self.preset, PRESETS)
        preset = dict(PRESETS[self.preset])
        # An explicit length beats the preset's, in either unit.
        for given, other in (("iterations", "cluster_epochs"), ("pretrain_epochs", "pretrain_steps")):
            if getattr(self, given) is not None:
                preset.pop(other, None)
            elif getattr(self, other) is not None:
                preset.pop(given, None)
        for key, value in preset.items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    @property
    def model_path(self) -> Path:
        return output_path(self, f"decs-{self.slug}")

    def pretraining_epochs(self, n_images: int) -> int:
        """The pretraining epochs on ``n_images`` images: ``pretrain_steps`` rounded up to whole
        epochs, at most ``pretrain_epochs``."""
        lengths = [] if self.pretrain_epochs is None else [self.pretrain_epochs]
        if self.pretrain_steps is not None:
            lengths.append(int(np.ceil(self.pretrain_steps / np.ceil(n_images / self.pretrain_batch_size))))
        return min(lengths)

    def autoencoder_path(self, x: np.ndarray, model: DECS) -> Path:
        """Where the pretrained autoencoder of these images, this schedule, network and seed is kept."""
        ae = model.autoencoder
        settings = {name: getattr(self, name) for name in ("pretrain_batch_size", "lr", "seed")}
        if self.pretrain_schedule != "constant":  # names of constant-rate autoencoders stay as they were
            settings["pretrain_schedule"] = self.pretrain_schedule
        settings["pretrain_epochs"] = self.pretraining_epochs(len(x))
        settings |= {
            "embedding_dim": ae.embedding_dim,
            "filters": ae.filters,
            "shift": ae.shift,
            "rotation": ae.rotation,
        }
        return autoencoder_path(self, "decs-ae", x, settings)


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
    distributed.refuse("DECS")
    with guarded_output(run):
        keras.utils.set_random_seed(run.seed)
        x, y = data if data is not None else datasets.load(run.dataset, run.data_dir, image_size=run.image_size)
        if model is not None:
            return _cluster(run, model, x, y, callbacks, pretrain_seconds=0.0, initialise=False)
        return _pretrain_and_cluster(run, x, y, callbacks)


def _pretrain_and_cluster(run: DECSRun, x: np.ndarray, y: np.ndarray | None, callbacks: list | None) -> DECSResult:
    k = choose_n_clusters(run, y, len(x))
    auto = k == checks.AUTO
    model = _model(run, x, parse_k_range(run.k_range)[0] if auto else k)
    path = run.autoencoder_path(x, model)
    pretrain_seconds = pretrained_autoencoder(
        run, model, x, path, epochs=run.pretraining_epochs(len(x)), optimizer=run.pretrain_optimizer(len(x))
    )
    if auto:  # the same autoencoder under the clustering layer of the chosen K
        choice = chosen_k(run, model.embed(x))
        pretrained, model = model, _model(run, x, choice.k, k_choice=choice.to_config())
        model.autoencoder.set_weights(pretrained.autoencoder.get_weights())
    return _cluster(run, model, x, y, callbacks, pretrain_seconds, initialise=True)


def _model(run: DECSRun, x: np.ndarray, k: int, k_choice: dict | None = None) -> DECS:
    with precision_scope(run.precision):
        return _build(run, x, k, k_choice)


def _build(run: DECSRun, x: np.ndarray, k: int, k_choice: dict | None) -> DECS:
    return DECS(
        n_clusters=k,
        input_shape=x.shape[1:],
        alpha=run.alpha,
        variant=run.variant,
        lam=run.lam,
        recon_weight=run.recon_weight,
        size_prior=run.size_prior,
        prior_target=run.prior_target,
        size_floor=run.size_floor,
        floor_share=run.floor_share,
        on_collapse=run.on_collapse,
        collapse_share=run.collapse_share,
        start=run.start,
        seed=run.seed,
        k_choice=k_choice,
    )


def _cluster(run: DECSRun, model: DECS, x, y, extra_callbacks, pretrain_seconds: float, initialise: bool) -> DECSResult:
    """Stage 2 of :func:`run_decs`, then evaluation and saving."""
    if model.image_shape != tuple(x.shape[1:]):
        raise DeepstabError(
            f"The model takes images of shape {model.image_shape}, but {run.dataset!r} has "
            f"{tuple(x.shape[1:])}. Use the dataset the model was trained on."
        )
    start = time.perf_counter()
    if initialise:
        init_labels = model.initialize_centroids(x)
        if model.start_choice is not None:
            print(f"Clustering start: {model.start_choice.describe()}")
        if y is not None:
            print("k-means on the pretrained embeddings: " + format_metrics(evaluate(y, init_labels)))
    steps = int(np.ceil(len(x) / run.batch_size))
    epochs = int(np.ceil(run.iterations / steps)) if run.iterations is not None else run.cluster_epochs
    checkpoint = Checkpoint(checkpoint_folder(run.model_path), run.training_settings(), min_seconds=CHECKPOINT_SECONDS)
    callbacks: list = [checkpoint, TimeEstimate("clustering")]
    callbacks += [LabelMetrics(x, y, run.eval_every)] if y is not None else []
    model.compile(optimizer=run.optimizer())
    initial_epoch = checkpoint.restore(model)
    history = {}
    if epochs:
        print(f"Clustering: {epochs} epochs of {steps} iterations (batch {run.batch_size}), variant {run.variant!r}")
        history = model.fit(
            x,
            batch_size=run.batch_size,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks + list(extra_callbacks or []),
            verbose=run.verbose,
        ).history
    guard = model.collapse_guard
    cluster_seconds = time.perf_counter() - start

    labels, confidence = model.predict_clusters(x)
    result = DECSResult(
        model=model,
        labels=labels,
        confidence=confidence,
        metrics=evaluate(y, labels) if y is not None else None,
        sizes=cluster_sizes(labels, model.n_clusters),
        collapsed_epoch=guard.collapsed_epoch if guard else None,
        restored_epoch=guard.restored_epoch if guard else None,
        iterations_run=(initial_epoch + len(history.get("loss", []))) * steps,
        pretrain_seconds=pretrain_seconds,
        cluster_seconds=cluster_seconds,
        history=history,
    )
    result.model_path = save_model(model, run.model_path)
    result.labels_path = write_labels_csv(run.model_path.with_suffix(".csv"), labels, result.confidence, y)
    checkpoint.remove()
    report_after_run(run, model, x, y, labels, confidence, callbacks=extra_callbacks)
    return result


def summary(run: DECSRun, result: DECSResult) -> str:
    """The lines the command line prints at the end of a run."""
    lines = [
        f"DECS on {run.dataset}: {len(result.labels)} samples, {result.model.n_clusters} clusters, "
        f"variant {run.variant!r}"
    ]
    if result.metrics:
        lines.append("Final model: " + format_metrics(result.metrics))
    sizes = result.sizes
    lines.append(
        f"Cluster sizes: {sizes['counts']} ({sizes['n_nonempty']} non-empty, smallest {sizes['min_share']:.1%}, "
        f"largest {sizes['max_share']:.1%})"
    )
    if result.collapsed_epoch is not None:
        guard = result.model.collapse_guard
        restored = (
            f"the weights of epoch {guard.restored_epoch + 1}"
            if guard.restored_epoch is not None
            else "the k-means initialisation"
        )
        what = {"restore": f"stopped and restored {restored}", "stop": "stopped", "warn": "went on"}.get(
            run.on_collapse, ""
        )
        target = " toward the start's cluster shares" if run.prior_target == "start" else ""
        fallback = (
            f"restored {restored} and went on with the cluster-size prior{target} (weight {guard.fallback_prior:g})"
        )
        if run.on_collapse == "fallback":
            what = fallback
        if run.on_collapse == "split":
            refills = len(guard.splits)
            what = (
                f"refilled the shrunken cluster{'s' if refills > 1 else ''} by splitting another in two "
                f"({refills} time{'s' if refills > 1 else ''}, at epoch{'s' if len(guard.split_epochs) > 1 else ''} "
                f"{', '.join(str(e + 1) for e in guard.split_epochs)})"
            )
        if run.on_collapse == "restart":
            restarts = len(guard.restart_epochs)
            what = (
                f"started over from the next-best k-means start {restarts} time{'s' if restarts > 1 else ''} (at "
                f"epoch{'s' if restarts > 1 else ''} {', '.join(str(e + 1) for e in guard.restart_epochs)})"
                if restarts
                else "found no other k-means start"
            )
        if run.on_collapse in ("split", "restart"):
            then = f"; as clusters kept shrinking, it then {fallback}" if guard.fallback_epoch is not None else ""
            what += then or " and went on"
        lines.append(
            f"NOTE: the clustering began to collapse at epoch {result.collapsed_epoch + 1} (a cluster emptied or fell "
            f"below {run.collapse_share:.0%} of an even share); training {what}. --on-collapse chooses what happens "
            f"(see --help)."
        )
    lines.append(
        f"Iterations run: {result.iterations_run}; wall time: pretraining {result.pretrain_seconds:.0f} s, "
        f"clustering {result.cluster_seconds:.0f} s"
    )
    lines.append(f"Saved the model to {result.model_path} and the labels to {result.labels_path}")
    return "\n".join(lines)
