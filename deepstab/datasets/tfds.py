"""tensorflow-datasets as a source: the splits of a tfds dataset image by image, and one clear
error for every way tfds can fail (offline, build or format errors)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from deepstab.datasets.readers import as_unit_images
from deepstab.datasets.store import Source
from deepstab.errors import DeepstabError


def tfds_source(tfds_name: str, splits: tuple[str, ...], label_key: str, data_dir: Path) -> Source:
    """Images of tensorflow-datasets splits in order (downloaded and prepared into ``data_dir``,
    with tfds's own checksums); a split named ``unlabelled`` gets the label -1."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=str(data_dir))
    builder.download_and_prepare(file_format="array_record")
    sources = [(split, builder.as_data_source(split=split)) for split in splits]

    def items() -> Iterator[tuple[np.ndarray, int]]:
        for split, source in sources:
            for item in source:
                yield np.asarray(item["image"]), (-1 if split == "unlabelled" else int(item[label_key]))

    return sum(len(source) for _, source in sources), items


def tfds_call(dataset, root: Path, build: Callable):
    """Run ``build`` (which uses tensorflow-datasets, downloading into ``root/tfds``) and turn
    its failures into one clear error."""
    try:
        return build()
    except DeepstabError:
        raise
    except Exception as exc:  # tfds surfaces network, build and format errors as many types
        local = (
            f"Put the IDX files {', '.join(dataset.expected_files)} in {root / dataset.folder}, or run"
            if not dataset.stored
            else "Run"
        )
        raise DeepstabError(
            f"Dataset {dataset.name!r}: no local copy in {root / dataset.folder} and tensorflow-datasets could not "
            f"provide {dataset.tfds_name!r} ({type(exc).__name__}: {str(exc)[:200]}). {local} once on a machine "
            f"with internet access (tensorflow-datasets keeps its copy in {root / 'tfds'})."
        ) from exc


def load_tfds(dataset, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Build ``dataset`` with tensorflow-datasets (downloads into ``root/tfds``), in memory."""

    def build():
        n, items = tfds_source(dataset.tfds_name, dataset.tfds_splits, dataset.tfds_label, root / "tfds")
        pairs = list(items())
        return np.stack([image for image, _ in pairs]), np.array([label for _, label in pairs], dtype=np.int64)

    x, y = tfds_call(dataset, root, build)
    return as_unit_images(x, dataset.name), y
