"""Labelling a dataset with a saved model: what ``python cli.py predict`` does.

Every deepstab model answers ``predict_clusters(x) -> (labels, confidence or None)`` and
``image_shape``, so any saved DECS, DEC, IDEC, DCN or LFSS model labels data the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepstab import checks, datasets
from deepstab.errors import DeepstabError
from deepstab.io import check_output_file, existing_model_file, load_model, write_labels_csv
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


def load_model_and_data(model_path: str, dataset: str, data_dir: str | None, image_size: int | None):
    """``(model, x, y)``: the saved model (any deepstab method) and the images of ``dataset``,
    which must have the model's shape; ``image_size``, the model's side, resizes them (with a
    note). Anything else is one paragraph that says what to pass."""
    if image_size is not None:
        image_size = checks.positive_int("image_size", image_size)
    model = load_model(model_path, expect=MODEL_TYPES)
    height, width, channels = model.image_shape
    if image_size is not None and (image_size, image_size) != (height, width):
        raise DeepstabError(
            f"{model_path} takes images of {height}x{width} pixels, so --image-size {image_size} cannot fit it"
            + (f"; pass --image-size {height}." if height == width else "; resize the images to that size.")
        )
    x, y = datasets.load(dataset, data_dir, stream=True, image_size=image_size)
    if tuple(x.shape[1:]) != (height, width, channels):
        resize = (
            f" Pass --image-size {height} to resize them (bilinear)."
            if height == width and x.shape[-1] == channels
            else " Use data of the same size and channels."
        )
        raise DeepstabError(
            f"{model_path} was trained on images of shape {tuple(model.image_shape)}, but {dataset!r} has images of "
            f"shape {tuple(x.shape[1:])}.{resize}"
        )
    return model, x, y


def run_predict(
    model_path: str,
    dataset: str,
    data_dir: str | None = None,
    output: str | None = None,
    image_size: int | None = None,
) -> Prediction:
    """Label ``dataset`` with the model saved at ``model_path``; write the labels CSV to
    ``output`` (default: beside the model, ``<model>-<dataset>.csv``).

    Invariants: the model file must exist, and the output is checked (a writable folder, no
    folder in the file's place) before anything is loaded; images of another size than the
    model's are refused unless ``image_size``, the model's side, is given, and then resized
    with a note."""
    model_file = existing_model_file(model_path)
    path = Path(output) if output else model_file.with_name(f"{model_file.stem}-{datasets.slug(dataset)}.csv")
    check_output_file(path, "The labels file")
    model, x, y = load_model_and_data(model_path, dataset, data_dir, image_size)
    labels, confidence = model.predict_clusters(x)
    write_labels_csv(path, labels, confidence, y)
    return Prediction(
        labels, evaluate(y, labels) if y is not None else None, cluster_sizes(labels, model.n_clusters), path
    )
