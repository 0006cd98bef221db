"""Choosing K without labels (--n-clusters auto): the rule on blobs of known K, its refusals, its
reproducibility, and runs that choose K end to end (DECS, DEC, LFSS; a folder of unlabelled images)."""

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from deepstab import checks
from deepstab.analysis.k_choice import KChoice, choose_k, parse_k_range
from deepstab.errors import DeepstabError
from deepstab.methods.lfss import LFSSModel


def blobs(k: int, n_per: int = 60, dim: int = 8, seed: int = 0) -> np.ndarray:
    """``k`` Gaussian blobs of unit spread whose centres lie 8 apart or more."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 8
    return np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres])


@pytest.mark.parametrize("k", [3, 6])
def test_rule_finds_the_number_of_blobs(k):
    choice = choose_k(blobs(k), (2, 10), seed=0, resamples=3)
    assert choice.k == k, choice.table()
    assert choice.ks == list(range(2, 11)) and len(choice.score) == 9
    assert choice.agreement[choice.ks.index(k)] > 0.9  # the true partition is found again in every resample


def test_choice_is_reproducible_and_seeded():
    z = blobs(4, n_per=40, seed=1)
    first, again = choose_k(z, (2, 8), seed=3, resamples=3), choose_k(z, (2, 8), seed=3, resamples=3)
    assert first.to_config() == again.to_config()
    other = choose_k(z, (2, 8), seed=4, resamples=3)
    assert other.score != first.score  # the seed drives the resamples and maps
    assert KChoice.from_config(first.to_config()) == first


def test_one_standard_error_rule_prefers_the_smaller_k():
    choice = KChoice([2, 3, 4], [0.5, 0.795, 0.8], [0.01, 0.01, 0.01], [0.9, 0.9, 0.9], k=3, resamples=4, subsample=9)
    assert choice.best == 4 and choice.runner_up == 4
    assert "within one standard error of the best, K=4" in choice.describe()


def test_range_the_data_cannot_score_is_refused():
    with pytest.raises(DeepstabError, match=r"needs at least 150 images in each resample.*--k-range 2:9"):
        choose_k(blobs(3, n_per=20), (2, 30))
    with pytest.raises(DeepstabError, match="LOW:HIGH"):
        parse_k_range("2-30")
    with pytest.raises(DeepstabError, match="at least 2 to a larger number"):
        parse_k_range("5:5")
    assert parse_k_range("3..12") == (3, 12) and parse_k_range(None) == (2, 30)
    assert checks.n_clusters_or_auto("n_clusters", " Auto ") == "auto"
    assert checks.n_clusters_or_auto("n_clusters", "7") == 7
    with pytest.raises(DeepstabError, match="or 'auto'"):
        checks.n_clusters_or_auto("n_clusters", "many")


def invoke(*args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def unlabelled_folder(root: Path, per_kind: int = 20) -> Path:
    """A flat folder (no class folders, so no labels) of 16x16 colour images of three kinds: a
    bright block in one of three corners, each in its own channel."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for kind, (r, c) in enumerate([(0, 0), (8, 8), (0, 8)]):
        for i in range(per_kind):
            image = rng.integers(0, 40, size=(16, 16, 3)).astype(np.uint8)
            image[r : r + 8, c : c + 8, kind] = 230
            Image.fromarray(image).save(root / f"img-{kind}{i:02d}.png")
    return root


QUICK = ["--pretrain-epochs", "3", "--pretrain-batch-size", "16", "--batch-size", "16"]


def test_decs_without_labels_chooses_k_by_default(tmp_path):
    data = unlabelled_folder(tmp_path / "images")
    model = tmp_path / "models" / "decs.keras"
    args = ["--dataset", f"folder:{data}", *QUICK, "--iterations", "4", "--models-dir", tmp_path / "models"]
    result = invoke("decs", *args, "--k-range", "2:6", "--output", model)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "models" / "decs-report" / "index.html").read_text()
    assert "id='choose-k'" in page and (tmp_path / "models" / "decs-report" / "choose-k.png").exists()
    assert "no labels and no --n-clusters was given: choosing K" in result.output
    chose = re.search(r"Chose K=(\d+) of 2\.\.6", result.output)
    assert chose, result.output
    k = int(chose.group(1))
    assert re.search(rf"DECS on folder:\S+: 60 samples, {k} clusters", result.output)
    assert (tmp_path / "models" / "decs-k.png").stat().st_size > 1000
    # The saved model keeps the choice; the same choice and clustering come from choose-k and a rerun.
    from deepstab.io import load_model

    saved = load_model(model)
    assert saved.n_clusters == k and saved.k_choice["k"] == k
    again = invoke("choose-k", model, "--dataset", f"folder:{data}", "--k-range", "2:6", "--output", tmp_path / "c.png")
    assert again.exit_code == 0 and "Chose K=" in again.output, again.output
    rerun = invoke(
        "decs", *args, "--n-clusters", "auto", "--k-range", "2:6", "--output", tmp_path / "again.keras", "--no-report"
    )
    assert rerun.exit_code == 0, rerun.output
    assert load_model(tmp_path / "again.keras").k_choice == saved.k_choice
    labels = np.loadtxt(tmp_path / "models" / "decs.csv", delimiter=",", skiprows=1, usecols=1)
    assert np.array_equal(labels, np.loadtxt(tmp_path / "again.csv", delimiter=",", skiprows=1, usecols=1))


def test_auto_refuses_a_range_the_data_cannot_fill(tmp_path):
    data = unlabelled_folder(tmp_path / "images")
    result = invoke("dec", "--dataset", f"folder:{data}", "--n-clusters", "auto", "--output", tmp_path / "m.keras")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "Choosing K among 2..30 needs at least 150 images" in result.output.replace("\n", " ")


def test_k_range_without_auto_is_refused(tmp_path):
    result = invoke("decs", "--dataset", "digits", "--k-range", "2:5", "--output", tmp_path / "m.keras")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "add --n-clusters auto" in result.output.replace("\n", " ")


def test_dec_chooses_k_with_an_embedding_of_ten(tmp_path):
    data = unlabelled_folder(tmp_path / "images")
    result = invoke(
        "dec", "--dataset", f"folder:{data}", "--n-clusters", "auto", "--k-range", "2:5", *QUICK[:4],
        "--epochs", "2", "--output", tmp_path / "dec.keras", "--models-dir", tmp_path, "--no-report",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    k = int(re.search(r"Chose K=(\d+)", result.output).group(1))
    from deepstab.io import load_model

    saved = load_model(tmp_path / "dec.keras")
    assert saved.n_clusters == k and saved.autoencoder.embedding_dim == 10


def test_lfss_chooses_k_at_the_end_of_the_warm_up_and_resumes_with_it():
    x = np.random.default_rng(0).random((48, 16, 16, 3), dtype="float32")
    model = LFSSModel((16, 16, 3), None, width=0.0625, hidden=16, dim=8, eta=1, k_range="2:5", seed=0)
    model.compile()
    model.fit(x, epochs=2, batch_size=16, verbose=0)
    assert model.k_choice is not None and model.n_clusters == model.k_choice["k"]
    assert 2 <= model.n_clusters <= 5 and model.pseudo_labels.max() < model.n_clusters
    state = model.training_state()
    fresh = LFSSModel((16, 16, 3), None, width=0.0625, hidden=16, dim=8, eta=1, k_range="2:5", seed=0)
    fresh.restore_training_state(state)
    assert fresh.n_clusters == model.n_clusters and fresh.k_choice == model.k_choice
    assert model.get_config()["k_choice"] == model.k_choice and model.get_config()["k_range"] == "2:5"
