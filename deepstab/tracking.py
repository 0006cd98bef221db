"""The ``python cli.py stability`` job: train a method while tracking sample stability, then report.

Example:

>>> from deepstab.tracking import StabilityRun, run_stability
>>> summary = run_stability(StabilityRun(dataset="digits", epochs=20, output="/tmp/stab"))  # doctest: +SKIP
>>> summary["recurrence"]["rows"][3]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepstab import datasets
from deepstab.decs import DECS
from deepstab.errors import DeepstabError
from deepstab.lfss import LFSSModel
from deepstab.lfss_runner import LFSSRun, run_lfss
from deepstab.runner import DECSRun, run_decs
from deepstab.saving import load_model
from deepstab.stability import SampleStabilityTracker

# Methods whose training the job can track (DEC, IDEC and DCN are not offered yet).
METHODS = ("decs", "lfss")


@dataclass
class StabilityRun:
    """A tracked training run plus what to track and where to report. ``decs`` pretrains (or
    reuses) the autoencoder by ``preset`` and tracks ``epochs`` clustering epochs; ``lfss``
    trains its ``cpu`` preset for ``epochs`` epochs."""

    dataset: str = "digits"
    method: str = "decs"
    epochs: int = 30
    track_every: int = 1
    output: str = "stability-report"
    model: str | None = None
    data_dir: str | None = None
    preset: str = "default"
    pretrain_epochs: int | None = None
    pretrain_batch_size: int | None = None
    bins: int = 10
    share: float = 0.1
    recurrence_epochs: int | None = 5
    seed: int = 0
    models_dir: str = "models"

    def __post_init__(self):
        if self.method not in METHODS:
            raise DeepstabError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.epochs < 1:
            raise DeepstabError(f"epochs must be a positive integer, got {self.epochs}.")
        if not 1 <= self.track_every <= self.epochs:
            raise DeepstabError(
                f"track_every must lie between 1 and epochs ({self.epochs}), got {self.track_every}: "
                "stability is measured between tracked epochs."
            )


def run_stability(run: StabilityRun) -> dict:
    """Train ``run.method`` for ``run.epochs`` epochs with a :class:`SampleStabilityTracker`,
    then write the report to ``run.output``; return its summary."""
    out = Path(run.output)
    x, y = datasets.load(run.dataset, run.data_dir)
    tracker = SampleStabilityTracker(x, every=run.track_every)
    if run.method == "decs":
        decs_run = DECSRun(
            dataset=run.dataset,
            data_dir=run.data_dir,
            preset=run.preset,
            pretrain_epochs=run.pretrain_epochs,
            pretrain_batch_size=run.pretrain_batch_size,
            cluster_epochs=run.epochs,
            seed=run.seed,
            output=str(out / "model.keras"),
            models_dir=run.models_dir,
            eval_every=max(run.epochs // 5, 1),
        )
        model = load_model(run.model, expect=DECS) if run.model else None
        result = run_decs(decs_run, callbacks=[tracker], model=model, data=(x, y))
        labels, confidence, metrics, seconds = result.labels, result.confidence, result.metrics, result.cluster_seconds
    else:  # lfss: the CPU-sized network, trained for run.epochs with the warm-up at half of them
        lfss_run = LFSSRun(
            dataset=run.dataset,
            data_dir=run.data_dir,
            preset="cpu",
            epochs=run.epochs,
            eta=max(run.epochs // 2, 1),
            seed=run.seed,
            output=str(out / "model.keras"),
        )
        model = load_model(run.model, expect=LFSSModel) if run.model else None
        result = run_lfss(lfss_run, callbacks=[tracker], model=model, data=(x, y))
        labels, confidence, metrics, seconds = result.labels, None, result.metrics, result.seconds
    fit_seconds = seconds - tracker.seconds
    extra = {
        "dataset": run.dataset,
        "method": run.method,
        "epochs": run.epochs,
        "track_every": run.track_every,
        "final_metrics": metrics,
        "tracking_seconds": round(tracker.seconds, 2),
        "training_seconds": round(fit_seconds, 2),
    }
    description = (
        f"{run.method.upper()} on {run.dataset}, {run.epochs} epochs, tracked every {run.track_every}; "
        f"tracking took {tracker.seconds:.0f} s beside {fit_seconds:.0f} s of training."
    )
    return tracker.report(
        out, y=y, clusters=labels, confidence=confidence, bins=run.bins, share=run.share,
        recurrence_epochs=run.recurrence_epochs, description=description, extra=extra,
    )
