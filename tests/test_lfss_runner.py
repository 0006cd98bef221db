"""The LFSS run and command line on tiny data: checkpoints, resuming, predict, errors."""

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from deepstab.methods.lfss import LFSSModel
from deepstab.runs.common import checkpoint_folder
from deepstab.runs.lfss import LFSSRun, run_lfss, summary

TINY = dict(width=0.0625, hidden=16, dim=8, batch_size=16, eta=1, eval_runs=2, verbose=0)
TINY_CLI = ["--width", "0.0625", "--hidden", "16", "--dim", "8", "--batch-size", "16", "--eta", "1", "--eval-runs", "2"]


@pytest.fixture
def colour_npz(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 24)
    x = rng.uniform(0, 0.3, size=(48, 16, 16, 3)).astype(np.float32)
    x[y == 1, :, :, 0] += 0.6  # one class red
    path = tmp_path / "colour.npz"
    np.savez(path, x=np.clip(x, 0, 1), y=y)
    return path


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, log, stop_at=None):
        super().__init__()
        self.log, self.stop_at = log, stop_at

    def on_train_begin(self, logs=None):
        self.log.append({"start_iterations": int(self.model.optimizer.iterations.numpy()), "epochs": []})

    def on_epoch_end(self, epoch, logs=None):
        self.log[-1]["epochs"].append(epoch)
        if epoch == self.stop_at:
            self.log[-1]["momentums"] = [np.array(v.numpy()) for v in self.model.optimizer.variables[2:]]
            self.log[-1]["labels"] = keras.ops.convert_to_numpy(self.model.pseudo_labels).copy()
            raise KeyboardInterrupt


def test_resume_continues_with_the_same_optimizer_state(tmp_path, colour_npz, monkeypatch):
    original = LFSSModel.fit
    log: list[dict] = []

    def fit(self, x, callbacks=(), **kwargs):
        stop_at = 1 if not log else None
        return original(self, x, callbacks=list(callbacks) + [_Interrupt(log, stop_at)], **kwargs)

    monkeypatch.setattr(LFSSModel, "fit", fit)
    run = LFSSRun(dataset=f"npz:{colour_npz}", preset="cpu", epochs=4, output=str(tmp_path / "lfss.keras"), **TINY)
    with pytest.raises(KeyboardInterrupt):
        run_lfss(run)
    assert checkpoint_folder(run.model_path).is_dir() and not run.model_path.exists()
    with pytest.raises(Exception, match="--resume"):
        run_lfss(run)  # an unfinished run is never silently restarted
    run.resume = True
    captured = {}
    original_begin = _Interrupt.on_train_begin

    def on_train_begin(self, logs=None):
        original_begin(self, logs)
        captured["momentums"] = [np.array(v.numpy()) for v in self.model.optimizer.variables[2:]]
        captured["labels"] = keras.ops.convert_to_numpy(self.model.pseudo_labels).copy()

    monkeypatch.setattr(_Interrupt, "on_train_begin", on_train_begin)
    result = run_lfss(run)
    first, second = log
    assert first["epochs"] == [0, 1] and second["epochs"] == [2, 3]
    assert second["start_iterations"] == 2 * 3  # 48 images in batches of 16: 3 steps per epoch
    assert all(np.array_equal(a, b) for a, b in zip(first["momentums"], captured["momentums"]))
    np.testing.assert_array_equal(first["labels"], captured["labels"])
    assert not checkpoint_folder(run.model_path).exists() and result.model_path.is_file()
    assert "mean of 2 runs" in summary(run, result)


def test_cli_lfss_trains_saves_and_predicts(tmp_path, colour_npz):
    out = tmp_path / "lfss.keras"
    runner = CliRunner()
    result = runner.invoke(
        cli.cli, ["lfss", "--dataset", f"npz:{colour_npz}", "--epochs", "2", *TINY_CLI, "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "k-means on the target embeddings" in result.output and out.is_file() and out.with_suffix(".csv").is_file()
    predicted = runner.invoke(
        cli.cli, ["predict", str(out), "--dataset", f"npz:{colour_npz}", "--output", str(tmp_path / "p.csv")]
    )
    assert predicted.exit_code == 0, predicted.output
    assert "ACC" in predicted.output and (tmp_path / "p.csv").is_file()


def test_cli_lfss_bad_input(tmp_path, colour_npz):
    result = CliRunner().invoke(cli.cli, ["lfss", "--dataset", f"npz:{colour_npz}", "--epochs", "0"])
    assert result.exit_code == 2 and result.output.startswith("Error: epochs must be a positive")
    result = CliRunner().invoke(cli.cli, ["lfss", "--dataset", f"npz:{colour_npz}", "--n-clusters", "100", *TINY_CLI])
    assert result.exit_code == 2 and "larger than the number of samples" in result.output


def test_stability_tracks_lfss(tmp_path, colour_npz):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli.cli,
        [
            "stability",
            "--method",
            "lfss",
            "--dataset",
            f"npz:{colour_npz}",
            "--epochs",
            "2",
            "--bins",
            "5",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and (out / "model.keras").is_file()
    with open(out / "stability.csv") as handle:
        assert handle.readline().strip() == "index,label,epoch_1,epoch_2,cluster"


def test_cli_lfss_on_an_imagenet10_folder_streams_from_the_disk_cache(tmp_path):
    from PIL import Image

    from deepstab.datasets import IMAGENET10_WNIDS

    rng = np.random.default_rng(0)
    for wnid in IMAGENET10_WNIDS:
        folder = tmp_path / "data" / "imagenet" / "train" / wnid
        folder.mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(folder / f"{wnid}_{j}.JPEG")
    out = tmp_path / "lfss-in10.keras"
    result = CliRunner().invoke(
        cli.cli,
        [
            "lfss",
            "--dataset",
            "imagenet10",
            "--data-dir",
            str(tmp_path / "data"),
            "--preset",
            "cpu",
            "--epochs",
            "2",
            *TINY_CLI,
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ResNet-18" in result.output and "k-means on the target embeddings" in result.output
    assert (tmp_path / "data" / "imagenet" / ".deepstab-cache" / "imagenet10-x.npy").is_file()
    predicted = CliRunner().invoke(
        cli.cli, ["predict", str(out), "--dataset", "imagenet10", "--data-dir", str(tmp_path / "data")]
    )
    assert predicted.exit_code == 0 and "Wrote 20 labels" in predicted.output, predicted.output
