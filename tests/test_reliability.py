"""Work is never lost and never resumed into the wrong run; inputs are scaled by a stated rule;
bad input gets one paragraph and exit status 2. Each case was reproduced before it was fixed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deepstab import datasets
from deepstab.checkpoint import Checkpoint
from deepstab.cli import cli
from deepstab.datasets.streaming import IndexedImages
from deepstab.errors import DeepstabError, DeepstabNote
from deepstab.io import output_lock
from deepstab.methods.collapse import CollapseGuard
from deepstab.methods.decs import DECS
from deepstab.runs.common import checkpoint_folder

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--pretrain-epochs", "2", "--pretrain-batch-size", "32", "--cluster-epochs", "2", "--batch-size", "40"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, pattern):
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert pattern in result.output.replace("\n", " "), result.output


def decs(npz, out, *extra):
    return invoke("decs", "--dataset", f"npz:{npz}", *QUICK, "--output", out, "--models-dir", out.parent, *extra)


# ------------------------------------------------------------------------------ input scaling


@pytest.mark.parametrize(
    ("array", "expected", "note"),
    [
        (np.array([[0, 500, 1000]], np.int32), [0.0, 0.5, 1.0], True),  # was divided by 2^31
        (np.array([[True, False, True]]), [1.0, 0.0, 1.0], False),  # True was 1/255
        (np.array([[-100, 0, 100]], np.int16), [0.0, 0.5, 1.0], True),  # was in [-0.5, 0.5]
        (np.array([[0, 65535, 32768]], np.uint16), [0.0, 1.0, 32768 / 65535], False),
        (np.array([[0, 255, 51]], np.int64), [0.0, 1.0, 0.2], False),
        (np.array([[0.0, 0.25, 1.0]], np.float32), [0.0, 0.25, 1.0], False),
    ],
)
def test_npz_pixels_are_scaled_by_the_dtype_rule(tmp_path, array, expected, note):
    np.savez(tmp_path / "d.npz", x=np.repeat(array[:, None, :], 3, axis=0))  # (3, 1, 3)
    with_note = pytest.warns(DeepstabNote, match="scaling them to") if note else _no_note()
    with with_note:
        x, _ = datasets.load(f"npz:{tmp_path / 'd.npz'}")
    np.testing.assert_allclose(x[0, 0, :, 0], expected, rtol=1e-6)


class _no_note:
    def __enter__(self):
        import warnings

        self.catcher = warnings.catch_warnings()
        self.catcher.__enter__()
        warnings.simplefilter("error", DeepstabNote)

    def __exit__(self, *exc):
        self.catcher.__exit__(*exc)


def test_constant_images_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((4, 3, 3), 7, np.int32))
    with pytest.raises(DeepstabError, match="every pixel has the value 7"):
        datasets.load(f"npz:{tmp_path / 'd.npz'}")


def test_a_16_bit_png_among_8_bit_ones_is_scaled_by_its_own_depth(tmp_path):
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "b.png")
    x, _ = datasets.load(f"folder:{tmp_path}")
    np.testing.assert_allclose(x.reshape(2, -1).max(axis=1), [1.0, 1.0])  # the 8-bit one was 1/257


def test_folder_reports_skipped_images_and_finds_nested_ones(tmp_path):
    for label in ("a", "b"):
        Image.fromarray(np.full((4, 4), 50, np.uint8)).save(_made(tmp_path / label / "deeper" / "1.png"))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "top.png")
    with pytest.warns(DeepstabNote, match="1 images at the top level are left out"):
        x, y = datasets.load(f"folder:{tmp_path}")
    assert x.shape == (2, 4, 4, 1) and y.tolist() == [0, 1]  # two levels down was "no images"


def _made(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_folder_is_converted_once_into_the_uint8_store_and_resized_on_request(tmp_path):
    rng = np.random.default_rng(0)
    for i, side in enumerate((6, 8, 10)):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DeepstabError, match="--image-size"):
        datasets.load(f"folder:{tmp_path}")
    x, y = datasets.load(f"folder:{tmp_path}", stream=True, image_size=8)
    assert isinstance(x, np.memmap) and x.dtype == np.uint8 and x.shape == (3, 8, 8, 3) and y is None
    caches = list((tmp_path / ".deepstab-cache").glob("folder-*-x.npy"))
    assert len(caches) == 1
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "3.png")  # an edited folder converts again
    assert len(datasets.load(f"folder:{tmp_path}", image_size=8)[0]) == 4
    assert len(list((tmp_path / ".deepstab-cache").glob("folder-*-x.npy"))) == 2


# ---------------------------------------------------------------------- raw tracebacks before


def test_damaged_and_foreign_npz_files(tmp_path, blobs_npz):
    data = blobs_npz.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert_clean_error(decs(tmp_path / "cut.npz", tmp_path / "m.keras"), "truncated, damaged")
    np.save(tmp_path / "images.npy", np.random.default_rng(0).random((30, 8, 8)).astype(np.float32))
    x, y = datasets.load(f"npz:{tmp_path / 'images.npy'}")  # a .npy holds the images alone
    assert x.shape == (30, 8, 8, 1) and y is None


def test_outputs_are_checked_before_any_training(tmp_path, blobs_npz):
    assert_clean_error(decs(blobs_npz, tmp_path / "m.h5"), "must end in .keras")
    (tmp_path / "file").write_text("")
    through_a_file = ["--output", tmp_path / "file" / "m.keras", "--models-dir", tmp_path]
    result = invoke("decs", "--dataset", f"npz:{blobs_npz}", *QUICK, *through_a_file)
    assert_clean_error(result, "a file stands where a folder")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions
        pytest.skip("this user can write to read-only folders")
    assert_clean_error(decs(blobs_npz, locked / "m.keras"), "not writable")
    assert not list(tmp_path.rglob("*-ae-*.keras"))  # nothing was pretrained


def test_a_second_run_on_the_same_output_is_refused_and_a_stale_lock_taken_over(tmp_path, blobs_npz):
    out = tmp_path / "m.keras"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".m.keras.lock").write_text(str(sleeper.pid))
        assert_clean_error(decs(blobs_npz, out), f"Another run (process {sleeper.pid}) is using")
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / ".m.keras.part-x.keras").write_text("left by a killed save")
    with output_lock(out):  # the holder is gone: its lock and partial files are cleaned up
        assert (tmp_path / ".m.keras.lock").read_text() == str(os.getpid())
    assert not list(tmp_path.glob(".m.keras*"))


# ------------------------------------------------------------------ checkpoints and resuming


def test_a_checkpoint_of_other_settings_is_refused_with_the_setting_named(tmp_path, blobs_npz):
    out = tmp_path / "m.keras"
    Checkpoint(checkpoint_folder(out), {"variant": "paper"}).folder.mkdir(parents=True)
    Checkpoint(checkpoint_folder(out), {"variant": "paper"}).save(DECS(3, (8, 8, 1), filters=(4, 4, 4, 4)), 1)
    result = decs(blobs_npz, out, "--variant", "reference")
    assert_clean_error(result, "belongs to a run with other settings")
    assert "--fresh" in result.output
    assert decs(blobs_npz, out, "--variant", "reference", "--fresh").exit_code == 0


def test_a_damaged_checkpoint_names_its_folder_and_the_way_out(tmp_path, blobs_npz):
    out = tmp_path / "m.keras"
    folder = checkpoint_folder(out)
    folder.mkdir(parents=True)
    (folder / "weights.weights.h5").write_bytes(b"truncated")
    (folder / "checkpoint.json").write_text('{"epoch": 1, "sett')
    result = decs(blobs_npz, out)
    assert_clean_error(result, f"The checkpoint in {folder} cannot be used")
    assert "--fresh" in result.output


def test_the_collapse_guard_and_size_prior_go_into_the_checkpoint(tmp_path):
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    model = DECS(3, (8, 8, 1), filters=(4, 4, 4, 4))
    model.compile(optimizer="adam")
    model.initialize_centroids(x, seed=0)
    guard = CollapseGuard(x, 3)
    model.training_callbacks(IndexedImages(x, 32), [guard])
    guard.collapsed_epoch, guard.fallback_epoch, guard._healthy_epoch = 0, 0, 3
    guard._healthy = model.get_weights()
    model.size_prior_weight = 1.0
    checkpoint = Checkpoint(tmp_path / "ckpt", {})
    checkpoint.save(model, 5)
    fresh = DECS(3, (8, 8, 1), filters=(4, 4, 4, 4))
    fresh.compile(optimizer="adam")
    assert checkpoint.restore(fresh) == 5 and fresh.size_prior_weight == 1.0
    fresh.training_callbacks(IndexedImages(x, 32), [])
    resumed = fresh.collapse_guard
    assert (resumed.collapsed_epoch, resumed.fallback_epoch, resumed._healthy_epoch) == (0, 0, 3)
    assert all(np.array_equal(a, b) for a, b in zip(resumed._healthy, guard._healthy))


def test_the_autoencoder_cache_is_keyed_by_the_data_and_its_settings(tmp_path, blobs_npz):
    other = tmp_path / "other" / "blobs.npz"  # another file of the same name
    other.parent.mkdir()
    np.savez(other, x=np.random.default_rng(1).random((120, 8, 8)).astype(np.float32))
    for npz in (blobs_npz, other):
        assert decs(npz, tmp_path / "m.keras", "--n-clusters", "3").exit_code == 0
    assert len(list(tmp_path.glob("decs-ae-blobs-*.keras"))) == 2
    assert decs(blobs_npz, tmp_path / "m.keras", "--n-clusters", "3", "--lr", "0.002").exit_code == 0
    assert len(list(tmp_path.glob("decs-ae-blobs-*.keras"))) == 3


def _run_until_killed(args, marker: str, tmp_path, timeout=120):
    """Start the CLI in a subprocess and SIGKILL it once ``marker`` appears in its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    seen, start = "", time.time()
    for line in process.stdout:
        seen += line
        if marker in line:
            process.send_signal(signal.SIGKILL)
            break
        assert time.time() - start < timeout, seen
    process.wait()
    return seen


def test_a_killed_clustering_stage_resumes_to_the_uninterrupted_run(tmp_path, blobs_npz):
    def args(folder):
        options = ["decs", "--dataset", f"npz:{blobs_npz}", "--pretrain-epochs", "2", "--pretrain-batch-size", "32"]
        options += ["--cluster-epochs", "6", "--batch-size", "40", "--on-collapse", "warn"]
        return options + ["--output", folder / "m.keras", "--models-dir", folder]

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert invoke(*args(whole)).exit_code == 0
    parts.mkdir()
    out = parts / "m.keras"
    seen = _run_until_killed(args(parts), "Epoch 4/6", parts)
    assert "Epoch 4/6" in seen and not out.exists()
    result = invoke(*args(parts))
    assert result.exit_code == 0, result.output
    assert "Epoch 1/6" not in result.output and "Iterations run: 18" in result.output  # 6 epochs of 3 steps
    lines = out.with_suffix(".csv").read_text().splitlines()
    assert len(lines) == 121 and not checkpoint_folder(out).exists()
    assert lines == (whole / "m.csv").read_text().splitlines()  # labels and confidences, bit for bit
    assert not list(parts.glob(".*part-*")) and not list(parts.glob(".*.lock"))


# ----------------------------------------------------------------------------- command line


def test_version_and_python_dash_m():
    assert invoke("--version").output.strip().endswith(__import__("deepstab").__version__)
    result = subprocess.run([sys.executable, "-m", "deepstab", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "decs" in result.stdout and "python -m deepstab" in result.stdout


def test_notes_are_one_plain_line_and_library_warnings_stay_quiet(tmp_path, blobs_npz):
    out = tmp_path / "m.keras"
    result = invoke("decs", "--dataset", f"npz:{blobs_npz}", *QUICK, "--output", out, "--models-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "Warning:" not in result.output and ".py:" not in result.output
    assert "Estimated time for pretraining" in result.output and "Estimated time for clustering" in result.output
