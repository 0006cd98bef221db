"""What the runs share: the number of clusters of a dataset, the reusable pretrained
autoencoder of the centroid methods, where checkpoints live, and how metrics are printed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from deepstab import checks, datasets
from deepstab.analysis.k_choice import KChoice, check_range, choose_k, parse_k_range
from deepstab.checkpoint import Checkpoint
from deepstab.errors import DeepstabError
from deepstab.io import check_model_path, load_model, output_lock, save_model, writable_folder
from deepstab.methods.base import CentroidClusterer
from deepstab.precision import DEFAULT_PRECISION
from deepstab.runs.progress import TimeEstimate


def choose_n_clusters(run, y: np.ndarray | None, n_samples: int) -> int | str:
    """K for a run (anything with ``n_clusters`` and ``dataset``): the explicit value (a number or
    ``"auto"``), else the dataset's number of classes, else the number of distinct labels, else
    (no labels) ``"auto"``; a number is checked against N."""
    if run.n_clusters is not None:
        k = run.n_clusters
    elif run.dataset in datasets.REGISTRY and datasets.REGISTRY[run.dataset].n_classes:
        k = datasets.REGISTRY[run.dataset].n_classes
    elif y is not None:
        k = len(np.unique(y[y >= 0]))
    else:
        print(f"{run.dataset!r} has no labels and no --n-clusters was given: choosing K from the embedding.")
        k = checks.AUTO
    if k == checks.AUTO:
        check_range(parse_k_range(run.k_range), n_samples)
        return k
    if run.k_range is not None:
        raise DeepstabError(
            f"--k-range gives the candidates of --n-clusters auto, but this run's K is {k}"
            f"{' (given)' if run.n_clusters is not None else ' (the data has labels)'}: add --n-clusters auto, or "
            f"leave --k-range out."
        )
    return checks.n_clusters("n_clusters", k, n_samples)


def chosen_k(run, z: np.ndarray) -> KChoice:
    """Choose K for ``run`` (its ``k_range`` and ``seed``) from the embeddings ``z``; print the
    table and one line on the choice, and write the score-against-K plot beside the model."""
    print(f"Choosing K from the embedding of {len(z)} images (--n-clusters auto) ...", flush=True)
    start = time.perf_counter()
    choice = choose_k(z, parse_k_range(run.k_range), seed=run.seed)
    print(choice.table())
    print(f"Chose {choice.describe()}; in {time.perf_counter() - start:.0f} s.")
    plotted = choice.plot(k_plot_path(run.model_path))
    if plotted:
        print(f"The score against K: {plotted}")
    return choice


def k_plot_path(model_path: Path) -> Path:
    """Where a run that chose K keeps its score-against-K plot: ``<model>-k.png``."""
    return model_path.with_name(model_path.stem + "-k.png")


# Short epochs are checkpointed at most this often, in seconds (a killed run loses at most this
# much work); DEEPSTAB_CHECKPOINT_SECONDS=0 checkpoints every epoch.
CHECKPOINT_SECONDS = float(os.environ.get("DEEPSTAB_CHECKPOINT_SECONDS", 30))


def data_digest(x: np.ndarray) -> str:
    """The sha256 of an image array's shape, dtype and values."""
    digest = hashlib.sha256(f"{x.shape}{x.dtype}".encode())
    for start in range(0, len(x), 4096):
        digest.update(np.ascontiguousarray(x[start : start + 4096]).tobytes())
    return digest.hexdigest()


# Part of every cache key: autoencoders pretrained before the draws came from the run's own
# streams (deepstab.seeding) are not reused, since a fresh run would not give them.
PRETRAINING_DRAWS = "seeded streams"


def autoencoder_path(run, prefix: str, x: np.ndarray, settings: dict) -> Path:
    """Where the pretrained autoencoder of these images and these ``settings`` (everything that
    changes it) is kept for reuse: ``<models_dir>/<prefix>-<dataset>-<hash>.keras``. Other data
    under the same file name, any other setting, or another ``run.precision`` gives another file
    (float32 autoencoders keep the names they had before precisions were offered)."""
    if run.precision != DEFAULT_PRECISION:
        settings = settings | {"precision": run.precision}
    key = json.dumps(settings, sort_keys=True, default=str) + data_digest(x) + PRETRAINING_DRAWS
    return Path(run.models_dir) / f"{prefix}-{run.slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.keras"


def checkpoint_folder(path: Path) -> Path:
    """The hidden folder beside ``path`` (a model file) that holds its run's checkpoint."""
    return path.parent / f".checkpoint-{path.name}"


def pretrained_autoencoder(
    run,
    model: CentroidClusterer,
    x: np.ndarray,
    path: Path,
    what: str = "autoencoder",
    epochs: int | None = None,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> float:
    """Load the autoencoder saved at ``path`` into ``model.autoencoder``, or pretrain it for
    ``epochs`` (default ``run.pretrain_epochs``; resumable through a checkpoint beside ``path``)
    with ``optimizer`` (default ``run.optimizer()``) and save it there; return the seconds spent.
    ``run`` gives ``pretrain_batch_size``, ``optimizer()``, ``fresh`` and ``verbose``.

    Invariants: the run that reuses a saved autoencoder goes on exactly as the run that pretrained
    it, since the clustering stage draws from streams of its own (:mod:`deepstab.seeding`). One
    run at a time pretrains the autoencoder of ``path``: a run that needs it while another
    pretrains it says so, waits for the lock on ``path`` and reuses what that run saved (or,
    if that run stopped without saving it, goes on from its checkpoint)."""
    epochs = run.pretrain_epochs if epochs is None else epochs
    if not path.exists():

        def waiting(pid: int) -> None:
            print(
                f"Waiting for the {what} that another run (process {pid}) is pretraining into {path}: this run "
                f"reuses it once it is saved.",
                flush=True,
            )

        with output_lock(path, on_wait=waiting):
            if not path.exists():  # else the run waited for saved it
                print(f"Pretraining the {what}: {epochs} epochs, batch {run.pretrain_batch_size}")
                start = time.perf_counter()
                checkpoint = Checkpoint(
                    checkpoint_folder(path), {"autoencoder": path.name}, min_seconds=CHECKPOINT_SECONDS
                )
                if run.fresh:
                    checkpoint.remove()
                model.pretrain(
                    x,
                    epochs=epochs,
                    batch_size=run.pretrain_batch_size,
                    optimizer=optimizer or run.optimizer(),
                    checkpoint=checkpoint,
                    callbacks=[TimeEstimate("pretraining")],
                    verbose=run.verbose,
                )
                seconds = time.perf_counter() - start
                save_model(model.autoencoder, path)
                checkpoint.remove()
                return seconds
    saved = load_model(path, expect=type(model.autoencoder))
    if [tuple(w.shape) for w in saved.weights] != [tuple(w.shape) for w in model.autoencoder.weights]:
        raise DeepstabError(
            f"The saved autoencoder {path} was built for images of shape {saved.image_shape} or another network "
            f"size than this run ({model.autoencoder.image_shape}). Delete it or use another --models-dir."
        )
    model.autoencoder.set_weights(saved.get_weights())
    print(f"Reusing the pretrained autoencoder {path}")
    return 0.0


@contextlib.contextmanager
def guarded_output(run) -> Iterator[None]:
    """Before any work: check that the run's model file and models folder can be written; then
    hold the lock on the model file (a second run on it stops with an error), and with
    ``run.fresh`` delete the checkpoint of an interrupted run on it, else check that the
    checkpoint is readable and of the same settings."""
    path = check_model_path(run.model_path)
    writable_folder(run.models_dir, "The models folder")
    with output_lock(path):
        checkpoint = Checkpoint(checkpoint_folder(path), run.training_settings())
        if run.fresh:
            checkpoint.remove()
        checkpoint.check()
        yield


def format_metrics(metrics: dict[str, float]) -> str:
    """``ACC 0.9000  NMI 0.8000  ARI 0.7000``."""
    return "  ".join(f"{k.upper()} {v:.4f}" for k, v in metrics.items())
