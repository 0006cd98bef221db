"""The cluster report of a model: what ``python cli.py report`` does, and the page every
training command writes beside its model (``--no-report`` skips it).

The page is :func:`deepstab.analysis.cluster_report.write_cluster_report`'s; the export
:func:`deepstab.analysis.cluster_export.export_clusters`'. This module loads the model and the
data, gets each model's labels, confidence and embeddings the same way, and finds the file
names of a ``folder:`` dataset.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from deepstab import datasets
from deepstab.analysis.cluster_export import check_export_folder, export_clusters
from deepstab.analysis.cluster_report import write_cluster_report
from deepstab.analysis.k_choice import KChoice
from deepstab.analysis.tracker import SampleStabilityTracker
from deepstab.datasets.readers import folder_listing
from deepstab.datasets.store import to_unit_float
from deepstab.errors import DeepstabError
from deepstab.io import existing_model_file, writable_folder
from deepstab.methods.base import CentroidClusterer
from deepstab.metrics import cluster_sizes, evaluate
from deepstab.runs.predict import load_model_and_data


@dataclass
class FolderFiles:
    """The image files of a ``folder:`` dataset, in the order of its loaded images."""

    root: Path
    files: list[Path]
    names: list[str]  # relative to root, with "/"
    classes: list[str] | None  # class c's folder name, when the folder has class sub-folders


def folder_files(dataset: str, n_images: int) -> FolderFiles | None:
    """The files of ``dataset`` when it is ``folder:PATH`` (None for any other dataset).

    Invariant: the files are listed as :func:`deepstab.datasets.load_folder` lists them to
    build its store, so file ``i`` is image ``i``; a folder that changed since the images were
    loaded (another count) is refused."""
    if not dataset.startswith("folder:"):
        return None
    root = Path(dataset[len("folder:") :])
    with warnings.catch_warnings():  # its notes were given when the images were loaded
        warnings.simplefilter("ignore")
        listing, labelled = folder_listing(root)
    if len(listing) != n_images:
        raise DeepstabError(
            f"{root} holds {len(listing)} images now but {n_images} were loaded: it changed meanwhile. Run the "
            f"command again."
        )
    files = [path for path, _ in listing]
    classes = sorted({path.relative_to(root).parts[0] for path in files}) if labelled else None
    return FolderFiles(root, files, [path.relative_to(root).as_posix() for path in files], classes)


def method_name(model) -> str:
    """``DECS``, ``DEC``, ``IDEC``, ``DCN`` or ``LFSS``: the model's class name."""
    return type(model).__name__.removesuffix("Model")


def model_settings(model) -> dict[str, object]:
    """The model's own settings (its Keras config), plain values only."""
    plain = (int, float, str, bool)
    skip = {"name", "trainable", "dtype"}
    return {key: value for key, value in model.get_config().items() if key not in skip and isinstance(value, plain)}


def predict_with_embeddings(model, x) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """``(labels, confidence or None, embeddings, centroids or None)`` of the images ``x`` from one
    pass of the encoder; the labels and confidence are exactly ``model.predict_clusters(x)``'s."""
    if isinstance(model, CentroidClusterer):
        x = to_unit_float(np.asarray(x))  # one array, so the embeddings are reused
        with model.reusing_embeddings():
            labels, confidence = model.predict_clusters(x)
            z = model.embed(x)
        return labels, confidence, z, keras.ops.convert_to_numpy(model.clustering.centroids)
    z = model.embed(x)
    return model.predict_labels(x, embeddings=z), None, z, None


def write_page(
    folder: Path,
    model,
    dataset: str,
    x,
    y,
    labels: np.ndarray,
    confidence: np.ndarray | None,
    embeddings: np.ndarray,
    centroids: np.ndarray | None,
    settings: dict[str, object],
    seed: int = 0,
    stability: np.ndarray | None = None,
) -> Path:
    """The page of ``model``'s clustering of ``dataset`` in ``folder`` (file names and class
    names from a ``folder:`` dataset; ``stability``, where tracked, picks the least stable members)."""
    found = folder_files(dataset, len(labels))
    return write_cluster_report(
        folder,
        x,
        labels,
        embeddings,
        model.n_clusters,
        confidence=confidence,
        centres=centroids,
        y=y,
        names=found.names if found else None,
        class_names=found.classes if found else None,
        method=method_name(model),
        dataset=dataset,
        settings=settings,
        seed=seed,
        k_choice=KChoice.from_config(getattr(model, "k_choice", None)),
        stability=stability,
    )


@dataclass
class Report:
    """What ``report`` produced: the page, the labels, their scores and sizes, and the export's counts."""

    page: Path
    labels: np.ndarray
    metrics: dict[str, float] | None
    sizes: dict[str, object]
    export: dict[str, object] | None


def run_report(
    model_path: str,
    dataset: str,
    data_dir: str | None = None,
    output: str | None = None,
    image_size: int | None = None,
    export: str | None = None,
    copy: bool = False,
) -> Report:
    """Label ``dataset`` with the model saved at ``model_path`` and write the cluster report
    into ``output`` (default: beside the model, ``<model>-<dataset>-report/``); with
    ``export``, sort the images into its cluster folders too.

    Invariants: the model file must exist, the report folder must be writable and the export
    folder empty or absent, all checked before anything is loaded; the images must have the
    model's shape (``image_size`` resizes them, as ``predict``'s)."""
    model_file = existing_model_file(model_path)
    folder = Path(output) if output else model_file.with_name(f"{model_file.stem}-{datasets.slug(dataset)}-report")
    writable_folder(folder, "The report folder")
    if export is not None:
        check_export_folder(export)
    model, x, y = load_model_and_data(model_path, dataset, data_dir, image_size)
    labels, confidence, z, centroids = predict_with_embeddings(model, x)
    page = write_page(folder, model, dataset, x, y, labels, confidence, z, centroids, model_settings(model))
    exported = None
    if export is not None:
        found = folder_files(dataset, len(labels))
        exported = export_clusters(
            export,
            labels,
            model.n_clusters,
            files=found.files if found else None,
            root=found.root if found else None,
            x=None if found else x,
            confidence=confidence,
            y=y,
            copy=copy,
        )
    metrics = evaluate(y, labels) if y is not None and (y >= 0).any() else None
    return Report(page, labels, metrics, cluster_sizes(labels, model.n_clusters), exported)


def report_after_run(
    run,
    model,
    x,
    y,
    labels: np.ndarray,
    confidence: np.ndarray | None,
    embeddings: np.ndarray | None = None,
    callbacks: list | None = None,
) -> Path | None:
    """The page a training run writes at its end, after its model and labels are saved:
    ``<model>-report/index.html`` beside ``run.model_path``, unless ``run.report`` is off.
    ``embeddings``, the run's own of ``x``, save computing them again; a
    :class:`~deepstab.analysis.tracker.SampleStabilityTracker` among the run's ``callbacks``
    gives each cluster's least stable members. Prints where the page is; returns its path (None
    when off)."""
    if not run.report:
        return None
    centroids = None
    if isinstance(model, CentroidClusterer):
        x = to_unit_float(np.asarray(x))
        centroids = keras.ops.convert_to_numpy(model.clustering.centroids)
    z = model.embed(x) if embeddings is None else embeddings
    settings = {key: value for key, value in run.training_settings().items() if key != "dataset"}
    folder = run.model_path.with_name(f"{run.model_path.stem}-report")
    trackers = [c for c in callbacks or [] if isinstance(c, SampleStabilityTracker) and c.epochs]
    stability = trackers[0].stability.mean(axis=0) if trackers else None
    page = write_page(folder, model, run.dataset, x, y, labels, confidence, z, centroids, settings, run.seed, stability)
    print(f"Wrote the cluster report to {page}")
    return page
