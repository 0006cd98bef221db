"""The command line on tiny data: exit codes, outputs, files, and one-paragraph errors."""

import csv

import numpy as np
import pytest
from click.testing import CliRunner

import cli

QUICK = ["--pretrain-epochs", "2", "--pretrain-batch-size", "32", "--iterations", "4", "--batch-size", "40"]


def invoke(*args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def assert_clean_error(result, pattern):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ")
    import re

    assert re.search(pattern, result.output.replace("\n", " ")), result.output


@pytest.fixture
def trained(tmp_path, blobs_npz):
    out = tmp_path / "models" / "decs-blobs.keras"
    result = invoke(
        "decs", "--dataset", f"npz:{blobs_npz}", *QUICK, "--output", out, "--models-dir", tmp_path / "models"
    )
    assert result.exit_code == 0, result.output
    return out, result


def test_decs_trains_saves_model_and_labels(trained, tmp_path):
    out, result = trained
    assert "Final model: ACC" in result.output and "Cluster sizes:" in result.output
    assert "Clustering start: the " in result.output and "k-means partitions" in result.output
    assert out.is_file() and len(list((tmp_path / "models").glob("decs-ae-blobs-*.keras"))) == 1
    with open(out.with_suffix(".csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120 and set(rows[0]) == {"index", "cluster", "confidence", "label"}
    assert all(0 <= int(r["cluster"]) < 3 for r in rows)


def test_decs_reuses_the_pretrained_autoencoder_and_goes_on_as_the_run_that_pretrained_it(trained, tmp_path, blobs_npz):
    out, _ = trained
    other = tmp_path / "other.keras"
    again = invoke(
        "decs", "--dataset", f"npz:{blobs_npz}", *QUICK, "--output", other, "--models-dir", tmp_path / "models"
    )
    assert again.exit_code == 0, again.output
    assert "Reusing the pretrained autoencoder" in again.output
    # The same batches and augmentations as the first run: the same labels and confidences.
    assert other.with_suffix(".csv").read_text() == out.with_suffix(".csv").read_text()


def test_predict_writes_labels_and_metrics(trained, tmp_path, blobs_npz):
    out, _ = trained
    labels = tmp_path / "labels.csv"
    result = invoke("predict", out, "--dataset", f"npz:{blobs_npz}", "--output", labels)
    assert result.exit_code == 0, result.output
    assert "ACC" in result.output and labels.is_file()
    trained_rows = list(csv.DictReader(out.with_suffix(".csv").read_text().splitlines()))
    predicted_rows = list(csv.DictReader(labels.read_text().splitlines()))
    assert [r["cluster"] for r in trained_rows] == [r["cluster"] for r in predicted_rows]


def test_predict_rejects_data_of_another_shape(trained, tmp_path):
    out, _ = trained
    np.savez(tmp_path / "big.npz", x=np.random.default_rng(0).random((4, 16, 16)).astype(np.float32))
    assert_clean_error(invoke("predict", out, "--dataset", f"npz:{tmp_path / 'big.npz'}"), r"shape \(8, 8, 1\)")


def test_predict_bad_model_files(tmp_path, blobs_npz, trained):
    assert_clean_error(invoke("predict", tmp_path / "absent.keras", "--dataset", f"npz:{blobs_npz}"), "does not exist")
    (tmp_path / "junk.keras").write_bytes(b"junk")
    assert_clean_error(
        invoke("predict", tmp_path / "junk.keras", "--dataset", f"npz:{blobs_npz}"), "not a Keras model file"
    )
    (ae,) = (tmp_path / "models").glob("decs-ae-blobs-*.keras")
    assert_clean_error(invoke("predict", ae, "--dataset", f"npz:{blobs_npz}"), "holds a ConvAutoencoder model")


@pytest.mark.parametrize("command", ["decs", "dec", "idec", "dcn"])
def test_bad_inputs_give_one_paragraph_errors(tmp_path, command):
    quick = QUICK if command == "decs" else ["--pretrain-epochs", "1", "--epochs", "1"]
    assert_clean_error(invoke(command, "--dataset", "nope", *quick), "Unknown dataset 'nope'")
    assert_clean_error(
        invoke(command, "--dataset", "usps", "--data-dir", tmp_path, *quick), "usps_train.jf.gz.*not found"
    )
    x = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "few.npz", x=x)
    assert_clean_error(
        invoke(command, "--dataset", f"npz:{tmp_path / 'few.npz'}", "--n-clusters", 9, *quick),
        "larger than the number of samples",
    )
    x[0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    assert_clean_error(
        invoke(command, "--dataset", f"npz:{tmp_path / 'nan.npz'}", "--n-clusters", 2, *quick), "NaN or infinite"
    )
    assert_clean_error(invoke(command, "--dataset", f"npz:{tmp_path / 'few.npz'}", *quick), "no labels.*--n-clusters")


def test_datasets_lists_names_and_availability(tmp_path):
    result = invoke("datasets", "--data-dir", tmp_path)
    assert result.exit_code == 0
    for name in ("digits", "usps", "mnist", "mnist-test", "fmnist", "npz:PATH", "folder:PATH"):
        assert name in result.output
    assert "no: put files in" in result.output


@pytest.mark.parametrize("command", ["decs", "lfss", "dec", "idec", "dcn", "predict", "datasets"])
def test_help_documents_defaults(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "--data-dir" in result.output
    if command == "decs":
        for option in (
            "--pretrain-epochs",
            "--pretrain-steps",
            "--iterations",
            "--batch-size",
            "--variant",
            "--alpha",
            "--lam",
            "--seed",
            "--output",
            "--preset",
        ):
            assert option in result.output
        assert "[default: paper]" in result.output and "[default: 256]" in result.output


def test_stability_writes_every_promised_file(tmp_path, blobs_npz):
    out = tmp_path / "report"
    result = invoke(
        "stability",
        "--dataset",
        f"npz:{blobs_npz}",
        "--epochs",
        "3",
        "--pretrain-epochs",
        "1",
        "--bins",
        "5",
        "--output",
        out,
        "--models-dir",
        tmp_path / "models",
    )
    assert result.exit_code == 0, result.output
    assert "observed / random" in result.output and "Accuracy by stability bin" in result.output
    for name in (
        "stability.csv",
        "summary.json",
        "report.html",
        "accuracy_by_stability.png",
        "recurrence.png",
        "unstable_samples.png",
        "stable_samples.png",
        "model.keras",
        "model-report/index.html",
    ):
        assert (out / name).is_file(), name
    assert "Least stable (tracked over training)" in (out / "model-report" / "index.html").read_text()
    with open(out / "stability.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120 and list(rows[0]) == ["index", "label", "epoch_1", "epoch_2", "epoch_3", "cluster"]
    # continuing the saved model tracks it further
    again = invoke(
        "stability",
        "--dataset",
        f"npz:{blobs_npz}",
        "--epochs",
        "2",
        "--model",
        out / "model.keras",
        "--output",
        tmp_path / "more",
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "more" / "report.html").is_file()


def test_stability_bad_settings(blobs_npz):
    assert_clean_error(
        invoke("stability", "--dataset", f"npz:{blobs_npz}", "--epochs", "2", "--track-every", "3"),
        "track_every must lie between",
    )


CENTROID_QUICK = ["--pretrain-epochs", "3", "--pretrain-batch-size", "32", "--epochs", "4", "--batch-size", "40"]


@pytest.mark.parametrize("method", ["dec", "idec", "dcn"])
def test_centroid_methods_with_brb_share_one_autoencoder(tmp_path, blobs_npz, method):
    models = tmp_path / "models"
    out = models / f"{method}.keras"
    result = invoke(
        method,
        "--dataset",
        f"npz:{blobs_npz}",
        *CENTROID_QUICK,
        "--brb",
        "--brb-interval",
        "2",
        "--brb-subsample",
        "50",
        "--output",
        out,
        "--models-dir",
        models,
    )
    assert result.exit_code == 0, result.output
    assert "Final model: ACC" in result.output and "BRB interventions at the start of epochs: 3" in result.output
    assert out.is_file() and out.with_suffix(".csv").is_file() and out.with_suffix(".png").is_file()
    assert len(list(models.glob("dense-ae-blobs-*.keras"))) == 1
    predicted = invoke("predict", out, "--dataset", f"npz:{blobs_npz}", "--output", tmp_path / "labels.csv")
    assert predicted.exit_code == 0 and "ACC" in predicted.output, predicted.output
    again = invoke(
        "dcn",
        "--dataset",
        f"npz:{blobs_npz}",
        *CENTROID_QUICK,
        "--output",
        models / "other.keras",
        "--models-dir",
        models,
    )
    assert "Reusing the pretrained autoencoder" in again.output


def test_centroid_bad_settings(blobs_npz):
    assert_clean_error(
        invoke("dec", "--dataset", f"npz:{blobs_npz}", "--brb", "--brb-alpha", "2"), "brb_alpha must lie in"
    )
    assert_clean_error(
        invoke("idec", "--dataset", f"npz:{blobs_npz}", "--epochs", "-1"), "epochs must be zero or positive"
    )
    assert_clean_error(
        invoke("dcn", "--dataset", f"npz:{blobs_npz}", "--brb", "--no-brb-reset", "--no-brb-recluster"), "does nothing"
    )
    assert_clean_error(invoke("dec", "--dataset", "nope"), "Unknown dataset 'nope'")
