"""The ``python cli.py stability`` job: train a method while tracking sample stability, then report.

Example:

>>> from deepstab.runs.stability import StabilityRun, run_stability
>>> summary = run_stability(StabilityRun(dataset="digits", epochs=20, output="/tmp/stab"))  # doctest: +SKIP
>>> summary["recurrence"]["rows"][3]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

from deepstab import checks, datasets, distributed
from deepstab.analysis.tracker import SampleStabilityTracker
from deepstab.checkpoint import Checkpoint
from deepstab.errors import DeepstabError, DeepstabNote
from deepstab.io import load_model
from deepstab.methods.decs import DECS
from deepstab.methods.lfss import LFSSModel
from deepstab.runs.common import checkpoint_folder
from deepstab.runs.decs import PRESETS, DECSRun, run_decs
from deepstab.runs.lfss import LFSSRun, run_lfss
from deepstab.runs.settings import RunSettings, setting

# Methods whose training the job can track (DEC, IDEC and DCN are not offered yet).
METHODS = ("decs", "lfss")


@dataclass
class StabilityRun(RunSettings):
    """A tracked training run plus what to track and where to report. ``decs`` pretrains (or
    reuses) the autoencoder by ``preset`` and tracks ``epochs`` clustering epochs; ``lfss``
    trains its ``cpu`` preset for ``epochs`` epochs."""

    method: str = setting("decs", "The clustering method to train while tracking.", choices=METHODS)
    epochs: int = setting(30, "Clustering epochs to train and track.", check=checks.positive_int)
    track_every: int = setting(
        1, "Measure stability every K epochs (against the previous tracked point).", check=checks.positive_int
    )
    output: str = setting(
        "stability-report",
        "Folder for stability.csv, summary.json, the pictures, report.html and the model.",
        path="dir",
        training=False,
    )
    model: str | None = setting(
        None, "Continue training this saved model instead of starting from a pretrained autoencoder.", path="file"
    )
    preset: str = setting(
        "default", "Pretraining schedule when no --model is given (see `decs --help`).", choices=tuple(PRESETS)
    )
    pretrain_epochs: int | None = setting(
        None, "Autoencoder pretraining epochs. [default: from --preset]", check=checks.non_negative_int
    )
    pretrain_batch_size: int | None = setting(
        None, "Pretraining batch size. [default: from --preset]", check=checks.positive_int
    )
    bins: int = setting(
        10,
        "Equal-count stability bins for accuracy by stability (Observation 1).",
        check=functools.partial(checks.int_at_least, low=2),
        training=False,
    )
    share: float = setting(
        0.1,
        "Share of least (most) stable samples per epoch for recurrence and atypical samples.",
        check=functools.partial(checks.in_range, low=0.0, high=1.0, low_open=True, high_open=True),
        training=False,
    )
    recurrence_epochs: int | None = setting(
        5,
        "Count the recurrence (Observation 2) over this many tracked epochs, spread evenly.",
        check=checks.positive_int,
        training=False,
    )
    models_dir: str = setting(
        "models", "Where pretrained autoencoders are kept and reused.", path="dir", training=False
    )

    def validate(self) -> None:
        if self.track_every > self.epochs:
            raise DeepstabError(
                f"track_every must lie between 1 and epochs ({self.epochs}), got {self.track_every}: "
                "stability is measured between tracked epochs."
            )


def run_stability(run: StabilityRun) -> dict:
    """Train ``run.method`` for ``run.epochs`` epochs with a :class:`SampleStabilityTracker`,
    then write the report to ``run.output``; return its summary (under torchrun, rank 0
    writes and returns it, the other ranks return an empty dict).

    The tracking is not kept in checkpoints, so an interrupted job trains the tracked epochs
    again from their start (its pretrained autoencoder is reused), and says so."""
    out = Path(run.output)
    distributed.setup()
    interrupted = Checkpoint(checkpoint_folder(out / "model.keras"))
    if interrupted.exists and not run.fresh and distributed.is_main():
        warnings.warn(
            f"The stability tracking of an interrupted job is not saved, so the tracked training starts over "
            f"(the checkpoint in {interrupted.folder} is deleted).",
            DeepstabNote,
            stacklevel=2,
        )
        interrupted.remove()
    with distributed.main_first():
        x, y = datasets.load(run.dataset, run.data_dir, image_size=run.image_size)
    tracker = SampleStabilityTracker(x, every=run.track_every)
    if run.method == "decs":
        decs_run = DECSRun(
            dataset=run.dataset,
            data_dir=run.data_dir,
            image_size=run.image_size,
            report=run.report,
            fresh=run.fresh,
            preset=run.preset,
            pretrain_epochs=run.pretrain_epochs,
            pretrain_batch_size=run.pretrain_batch_size,
            cluster_epochs=run.epochs,
            seed=run.seed,
            precision=run.precision,
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
            image_size=run.image_size,
            report=run.report,
            fresh=run.fresh,
            preset="cpu",
            epochs=run.epochs,
            eta=max(run.epochs // 2, 1),
            seed=run.seed,
            precision=run.precision,
            output=str(out / "model.keras"),
        )
        model = load_model(run.model, expect=LFSSModel) if run.model else None
        result = run_lfss(lfss_run, callbacks=[tracker], model=model, data=(x, y))
        labels, confidence, metrics, seconds = result.labels, None, result.metrics, result.seconds
    if not distributed.is_main():
        return {}
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
        out,
        y=y,
        clusters=labels,
        confidence=confidence,
        bins=run.bins,
        share=run.share,
        recurrence_epochs=run.recurrence_epochs,
        description=description,
        extra=extra,
    )
