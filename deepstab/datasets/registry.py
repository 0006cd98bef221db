"""The registry of named datasets: where each is found, how it is read, its shape and classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepstab.datasets import readers
from deepstab.datasets.downloads import DataFile
from deepstab.datasets.store import Source
from deepstab.datasets.tfds import tfds_call, tfds_source


@dataclass(frozen=True)
class Dataset:
    """A registry entry: how a named dataset is found and read."""

    name: str
    shape: tuple[int, int, int]
    n_classes: int | None
    source: str
    folder: str = ""
    files: tuple[DataFile, ...] = field(default_factory=tuple)
    reader: Callable[[Path], tuple[np.ndarray, np.ndarray | None]] | None = None
    tfds_name: str | None = None
    tfds_splits: tuple[str, ...] = ()
    tfds_label: str = "label"
    # Large datasets: a function of the dataset folder giving the images one by one, kept as a
    # uint8 cache on disk and read batch by batch (``deepstab.datasets.store``).
    stored: Callable[[Path], Source] | None = None

    @property
    def expected_files(self) -> list[str]:
        """The names of the files looked for in the dataset's folder (the IDX files of MNIST's
        format for the sets without a file list)."""
        return [f.name for f in self.files] or list(readers.idx_names(("train", "t10k")))


# sha256 of the decompressed IDX content (../shared/data/README.md), so a recompressed copy passes.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

USPS_URL = "http://www-i6.informatik.rwth-aachen.de/~keysers/"

# ImageNet subsets: ImageNet-10 and the 15 dog classes of ImageNet-Dogs (Chang et
# al. 2017, as used by the LFSS and Contrastive Clustering code), read from a local ImageNet-style
# folder and resized to 96x96.
IMAGENET10_WNIDS = (
    "n02056570",
    "n02085936",
    "n02128757",
    "n02690373",
    "n02692877",
    "n03095699",
    "n04254680",
    "n04285008",
    "n04467665",
    "n07747607",
)

IMAGENET_DOGS_WNIDS = (
    "n02085936",
    "n02086646",
    "n02088238",
    "n02091467",
    "n02097130",
    "n02099601",
    "n02101388",
    "n02101556",
    "n02102177",
    "n02105056",
    "n02105412",
    "n02105855",
    "n02107142",
    "n02110958",
    "n02112137",
)


def _mnist_files(prefixes: tuple[str, ...]) -> tuple[DataFile, ...]:
    return tuple(DataFile(name, MNIST_SHA256[name], verify_content=True) for name in readers.idx_names(prefixes))


def _imagenet_subset(name: str, title: str, wnids: tuple[str, ...]) -> Dataset:
    return Dataset(
        name,
        (readers.IMAGENET_SIDE, readers.IMAGENET_SIDE, 3),
        len(wnids),
        f"{title} ({len(wnids)} WNIDs, {1300 * len(wnids):,} images) from a local ImageNet folder "
        f"imagenet/train/<wnid>/, resized to {readers.IMAGENET_SIDE}x{readers.IMAGENET_SIDE}",
        folder="imagenet",
        stored=lambda folder: readers.wnid_source(folder, wnids),
    )


def _tfds_stored(
    name: str,
    shape: tuple[int, int, int],
    n_classes: int,
    source: str,
    tfds_name: str,
    splits: tuple[str, ...],
    label: str = "label",
) -> Dataset:
    return Dataset(
        name,
        shape,
        n_classes,
        source,
        folder=name,
        tfds_name=tfds_name,
        tfds_splits=splits,
        tfds_label=label,
        stored=lambda folder: tfds_call(
            REGISTRY[name], folder.parent, lambda: tfds_source(tfds_name, splits, label, folder.parent / "tfds")
        ),
    )


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "digits",
            (8, 8, 1),
            10,
            "scikit-learn's bundled digits (1,797 images), no download",
            reader=readers.read_digits,
        ),
        Dataset(
            "usps",
            (16, 16, 1),
            10,
            "USPS train+test (9,298), usps_{train,test}.jf.gz from RWTH Aachen, sha256-checked",
            folder="usps",
            files=(
                DataFile(
                    "usps_train.jf.gz",
                    "5b73274db884db90c888291f9d58d777ec5d9487f84ff9039ccb0f4d6d766125",
                    USPS_URL + "usps_train.jf.gz",
                ),
                DataFile(
                    "usps_test.jf.gz",
                    "29e95113f390aeb4a8327c3e0ff0b49a7f0dfd1a3fb44aba6377d64df223ed20",
                    USPS_URL + "usps_test.jf.gz",
                ),
            ),
            reader=readers.read_usps,
        ),
        Dataset(
            "mnist",
            (28, 28, 1),
            10,
            "MNIST train+test (70,000): IDX files in mnist/, else tensorflow-datasets 'mnist'",
            folder="mnist",
            files=_mnist_files(("train", "t10k")),
            reader=lambda folder: readers.idx_pairs(folder, ("train", "t10k")),
            tfds_name="mnist",
            tfds_splits=("train", "test"),
        ),
        Dataset(
            "mnist-test",
            (28, 28, 1),
            10,
            "MNIST test split (10,000): IDX files in mnist/, else tensorflow-datasets 'mnist'",
            folder="mnist",
            files=_mnist_files(("t10k",)),
            reader=lambda folder: readers.idx_pairs(folder, ("t10k",)),
            tfds_name="mnist",
            tfds_splits=("test",),
        ),
        Dataset(
            "fmnist",
            (28, 28, 1),
            10,
            "Fashion-MNIST train+test (70,000): IDX files in fmnist/, else tensorflow-datasets 'fashion_mnist'",
            folder="fmnist",
            reader=lambda folder: readers.idx_pairs(folder, ("train", "t10k")),
            tfds_name="fashion_mnist",
            tfds_splits=("train", "test"),
        ),
        Dataset(
            "kmnist",
            (28, 28, 1),
            10,
            "Kuzushiji-MNIST train+test (70,000): IDX files in kmnist/, else tensorflow-datasets 'kmnist'",
            folder="kmnist",
            reader=lambda folder: readers.idx_pairs(folder, ("train", "t10k")),
            tfds_name="kmnist",
            tfds_splits=("train", "test"),
        ),
        Dataset(
            "optdigits",
            (8, 8, 1),
            10,
            "UCI optical digits (5,620): optdigits/optdigits.tra and optdigits.tes from "
            "https://archive.ics.uci.edu/ml/machine-learning-databases/optdigits/",
            folder="optdigits",
            reader=lambda folder: readers.read_optdigits(folder),
        ),
        Dataset(
            "gtsrb",
            (readers.GTSRB_SIDE, readers.GTSRB_SIDE, 3),
            43,
            f"German traffic signs, training set (39,209, 43 classes) from a local folder "
            f"gtsrb/GTSRB/Final_Training/Images/<class>/*.ppm, resized to {readers.GTSRB_SIDE}x{readers.GTSRB_SIDE}",
            folder="gtsrb",
            stored=lambda folder: readers.gtsrb_source(folder),
        ),
        Dataset(
            "gtsrb-5",
            (readers.GTSRB_SIDE, readers.GTSRB_SIDE, 3),
            5,
            "The BRB authors' 5-class GTSRB (classes 2, 12, 17, 18, 35 of the training set: 7,860 images), "
            "resized to 32x32 and histogram-equalised per image, from the same folder as gtsrb",
            folder="gtsrb",
            stored=lambda folder: readers.gtsrb_source(folder, readers.GTSRB_5_CLASSES, equalize=True),
        ),
        Dataset(
            "cifar10-jpg",
            (32, 32, 3),
            10,
            "CIFAR-10 test split as JPEGs (10,000): cifar10-jpg/test/<class>/*.jpg",
            folder="cifar10-jpg",
            reader=lambda folder: readers.read_cifar10_jpg(folder),
        ),
        _tfds_stored(
            "cifar10",
            (32, 32, 3),
            10,
            "CIFAR-10 train+test (60,000) from tensorflow-datasets 'cifar10'",
            "cifar10",
            ("train", "test"),
        ),
        _tfds_stored(
            "cifar20",
            (32, 32, 3),
            20,
            "CIFAR-100 train+test (60,000) with its 20 coarse labels, from tensorflow-datasets 'cifar100'",
            "cifar100",
            ("train", "test"),
            label="coarse_label",
        ),
        _tfds_stored(
            "stl10",
            (96, 96, 3),
            10,
            "STL-10 train+test (13,000 labelled) + unlabelled (100,000, label -1, trained on, not scored), "
            "from tensorflow-datasets 'stl10'",
            "stl10",
            ("train", "test", "unlabelled"),
        ),
        Dataset(
            "tiny-imagenet",
            (readers.TINY_IMAGENET_SIDE, readers.TINY_IMAGENET_SIDE, 3),
            200,
            "Tiny-ImageNet train split (100,000, 200 classes) from a local folder "
            "tiny-imagenet/tiny-imagenet-200/train/<wnid>/images/ (the extracted tiny-imagenet-200.zip)",
            folder="tiny-imagenet",
            stored=lambda folder: readers.tiny_imagenet_source(folder),
        ),
        _imagenet_subset("imagenet10", "ImageNet-10", IMAGENET10_WNIDS),
        _imagenet_subset("imagenet-dogs", "ImageNet-Dogs", IMAGENET_DOGS_WNIDS),
    )
}


def slug(name: str) -> str:
    """A short file-name-safe form of a dataset name (``npz:/a/b.npz`` -> ``b``)."""
    base = Path(name.split(":", 1)[1]).stem if name.startswith(("npz:", "folder:")) else name
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in base) or "data"


def names() -> list[str]:
    """Every registered dataset name (``npz:PATH`` and ``folder:PATH`` come on top)."""
    return list(REGISTRY)
