"""Shared fixtures: offline mode, the shared benchmark data, tiny generated files."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ["DEEPSTAB_OFFLINE"] = "1"
os.environ["DEEPSTAB_CHECKPOINT_SECONDS"] = "0"  # checkpoint every epoch: the resume tests kill after one
os.environ.setdefault("KERAS_BACKEND", "torch")

SHARED = Path(os.environ.get("DEEPSTAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")).resolve()


@pytest.fixture
def shared_data() -> Path:
    """The real benchmark data (../shared/data or $DEEPSTAB_DATA)."""
    if not (SHARED / "usps" / "usps_train.jf.gz").is_file():
        pytest.skip(f"shared benchmark data not found at {SHARED}")
    return SHARED


def write_usps(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write a USPS-format file: '10 256' header, 'label v1..v256' rows in [0, 2], '-1'."""
    rows = [" ".join([str(int(label))] + [f"{v:.3f}" for v in image.reshape(-1) * 2]) for image, label in zip(x, y)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as out:
        out.write("10 256\n" + "\n".join(rows) + "\n-1\n")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a gzip-compressed IDX file of unsigned bytes."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as out:
        out.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def blobs_npz(tmp_path) -> Path:
    """120 tiny 8x8 images in 3 well separated groups (bright blocks in different corners)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.1, size=(120, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(3), 40)
    for i, label in enumerate(y):
        r, c = [(0, 0), (4, 4), (0, 4)][label]
        x[i, r : r + 4, c : c + 4] += 0.8
    path = tmp_path / "blobs.npz"
    np.savez(path, x=np.clip(x, 0, 1), y=y)
    return path
