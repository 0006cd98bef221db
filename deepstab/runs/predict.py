"""Labelling a dataset with a saved model: what ``python cli.py predict`` does.

Every deepstab model answers ``predict_clusters(x) -> (labels, confidence or None)`` and
``image_shape``, so any saved DECS, DEC, IDEC, DCN or LFSS model labels data the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepstab import datasets
from deepstab.errors import DeepstabError
from deepstab.io import load_model, write_labels_csv
from deepstab.methods.base import CentroidClusterer
from deepstab.methods.lfss import LFSSModel
from deepstab.metrics import cluster_sizes, evaluate

MODEL_TYPES = (CentroidClusterer, LFSSModel)


@dataclass
class Prediction:
    labels: np.ndarray
    metrics: dict[str, float] | None
    sizes: dict[str, object]
    labels_path: Path


def run_predict(model_path: str, dataset: str, data_dir: str | None = None, output: str | None = None) -> Prediction:
    """Label ``dataset`` with the model saved at ``model_path``; write the labels CSV to
    ``output`` (default: beside the model, ``<model>-<dataset>.csv``)."""
    model = load_model(model_path, expect=MODEL_TYPES)
    side = model.image_shape[0] if model.image_shape[0] == model.image_shape[1] else None
    x, y = datasets.load(dataset, data_dir, stream=True, image_size=side if dataset.startswith("folder:") else None)
    if tuple(x.shape[1:]) != tuple(model.image_shape):
        raise DeepstabError(
            f"{model_path} was trained on images of shape {tuple(model.image_shape)}, but {dataset!r} has images of "
            f"shape {tuple(x.shape[1:])}. Use data of the same size and channels."
        )
    labels, confidence = model.predict_clusters(x)
    path = (
        Path(output) if output else Path(model_path).with_name(f"{Path(model_path).stem}-{datasets.slug(dataset)}.csv")
    )
    write_labels_csv(path, labels, confidence, y)
    return Prediction(
        labels, evaluate(y, labels) if y is not None else None, cluster_sizes(labels, model.n_clusters), path
    )
