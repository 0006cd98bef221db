"""What the runs share: the number of clusters of a dataset, the reusable pretrained
autoencoder of the centroid methods, where checkpoints live, and how metrics are printed."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from deepstab import checks, datasets
from deepstab.checkpoint import Checkpoint
from deepstab.errors import DeepstabError
from deepstab.io import load_model, save_model
from deepstab.methods.base import CentroidClusterer


def choose_n_clusters(run, y: np.ndarray | None, n_samples: int) -> int:
    """K for a run (anything with ``n_clusters`` and ``dataset``): the explicit value, else the
    dataset's number of classes, else the number of distinct labels; checked against N."""
    if run.n_clusters is not None:
        k = run.n_clusters
    elif run.dataset in datasets.REGISTRY and datasets.REGISTRY[run.dataset].n_classes:
        k = datasets.REGISTRY[run.dataset].n_classes
    elif y is not None:
        k = len(np.unique(y[y >= 0]))
    else:
        raise DeepstabError(
            f"Dataset {run.dataset!r} has no labels, so the number of clusters is unknown: pass --n-clusters."
        )
    return checks.n_clusters("n_clusters", k, n_samples)


def checkpoint_folder(path: Path) -> Path:
    """The hidden folder beside ``path`` (a model file) that holds its run's checkpoint."""
    return path.parent / f".checkpoint-{path.name}"


def pretrained_autoencoder(
    run, model: CentroidClusterer, x: np.ndarray, path: Path, what: str = "autoencoder"
) -> float:
    """Load the autoencoder saved at ``path`` into ``model.autoencoder``, or pretrain it
    (resumable through a checkpoint beside ``path``, Adam at ``run.lr``) and save it there;
    return the seconds spent. ``run`` gives ``pretrain_epochs``, ``pretrain_batch_size``,
    ``lr`` and ``verbose``."""
    if path.exists():
        saved = load_model(path, expect=type(model.autoencoder))
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
    checkpoint = Checkpoint(checkpoint_folder(path), {"autoencoder": path.name})
    model.pretrain(
        x,
        epochs=run.pretrain_epochs,
        batch_size=run.pretrain_batch_size,
        optimizer=keras.optimizers.Adam(run.lr),
        checkpoint=checkpoint,
        verbose=run.verbose,
    )
    seconds = time.perf_counter() - start
    save_model(model.autoencoder, path)
    checkpoint.remove()
    return seconds


def format_metrics(metrics: dict[str, float]) -> str:
    """``ACC 0.9000  NMI 0.8000  ARI 0.7000``."""
    return "  ".join(f"{k.upper()} {v:.4f}" for k, v in metrics.items())
