"""Sample-stability tracking, the three analyses, the report files and the CLI command."""

import json

import keras
import numpy as np
import pytest
from scipy import stats

from deepstab.analysis.measures import (
    accuracy_by_stability,
    correct_under_mapping,
    extreme_samples,
    recurrence,
    stability_bins,
)
from deepstab.analysis.report import PICTURES, read_stability_csv, write_report
from deepstab.analysis.tracker import SampleStabilityTracker
from deepstab.errors import DeepstabError
from deepstab.metrics import cluster_accuracy


def _fit_with(tracker, epochs=4, n=50):
    """Train a tiny Keras model for ``epochs`` with ``tracker`` attached."""
    x = np.random.default_rng(0).normal(size=(n, 6)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(x, x[:, :4], epochs=epochs, batch_size=25, verbose=0, callbacks=[tracker])
    return x


def test_unchanged_encoder_is_perfectly_stable():
    x = np.random.default_rng(1).normal(size=(50, 6)).astype("float32")
    tracker = SampleStabilityTracker(x)  # the model's own predict, with a learning rate of zero
    _fit_with(tracker, epochs=3)
    assert tracker.epochs == [1, 2, 3]
    np.testing.assert_allclose(tracker.stability, 1.0, atol=1e-6)


def test_perturbed_samples_rank_least_stable(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 8))
    moved = np.array([3, 17, 29, 41])
    calls = []

    def embed(x):  # each call perturbs the same four samples a lot and the rest a little
        calls.append(1)
        z = base + 0.01 * rng.normal(size=base.shape)
        z[moved] = rng.normal(size=(len(moved), 8))
        return z

    tracker = SampleStabilityTracker(base, every=2, embed=embed, directory=tmp_path)
    _fit_with(tracker, epochs=6)
    assert tracker.epochs == [2, 4, 6] and len(calls) == 4  # one pass at the start, one per tracked epoch
    assert (tmp_path / "instability.npy").is_file()  # kept on disk when a directory is given
    for row in tracker.stability:
        assert set(np.argsort(row)[: len(moved)]) == set(moved)
    ext = extreme_samples(tracker.stability, share=0.08, n=4)
    assert set(ext["atypical"]) == set(moved) and ext["atypical_times"] == [3, 3, 3, 3]
    assert ext["atypical_majority"] == 4


@pytest.mark.parametrize("bins", [5, 10, 20])
def test_bins_have_equal_counts(bins):
    values = np.random.default_rng(3).normal(size=200)
    index = stability_bins(values, bins)
    assert np.bincount(index).tolist() == [200 // bins] * bins
    # bin 0 holds the least stable samples
    assert values[index == 0].max() < values[index == bins - 1].min()


def test_accuracy_by_stability_uses_the_hungarian_mapping():
    y = np.repeat([0, 1], 10)
    clusters = 1 - y  # every cluster renamed: all correct under the mapping
    clusters[:2] = 1 - clusters[:2]  # two samples wrong, and they are the least stable
    stability = np.linspace(0, 1, 20)
    correct = correct_under_mapping(y, clusters)
    assert correct.mean() == pytest.approx(cluster_accuracy(y, clusters)) == 0.9
    table = accuracy_by_stability(stability, clusters, y, bins=5)
    assert table["measure"] == "accuracy"
    assert [b["accuracy"] for b in table["bins"]] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert [b["count"] for b in table["bins"]] == [4] * 5
    unlabelled = accuracy_by_stability(stability, confidence=np.linspace(0.5, 1, 20), bins=5)
    assert (
        unlabelled["measure"] == "confidence"
        and unlabelled["bins"][0]["confidence"] < unlabelled["bins"][-1]["confidence"]
    )
    with pytest.raises(DeepstabError, match="needs labels"):
        accuracy_by_stability(stability)


def test_recurrence_matches_a_hand_count_and_the_binomial():
    # 10 samples, 3 epochs, share 0.2 -> the 2 least stable each epoch
    s = np.ones((3, 10))
    s[0, [0, 1]] = 0.1
    s[1, [0, 2]] = 0.1
    s[2, [0, 1]] = 0.1
    table = recurrence(s, share=0.2)
    # sample 0: 3 times; sample 1: 2 times; sample 2: once; the other 7: never
    assert [r["observed"] for r in table["rows"]] == [7, 1, 1, 1]
    expected = 10 * stats.binom.pmf(np.arange(4), 3, 0.2)
    np.testing.assert_allclose([r["random"] for r in table["rows"]], expected)


def test_report_round_trips_and_writes_every_file(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(40, 8, 8, 1)).astype("float32")
    stability = rng.uniform(0.5, 1, size=(3, 40)).astype(np.float16)
    y, clusters = np.repeat([0, 1], 20), np.repeat([1, 0], 20)
    summary = write_report(tmp_path, x, stability, [5, 10, 15], y=y, clusters=clusters, bins=5)
    back = read_stability_csv(tmp_path / "stability.csv")
    assert back["epochs"] == [5, 10, 15]
    np.testing.assert_allclose(back["stability"], stability.astype(np.float32), atol=1e-6)
    np.testing.assert_array_equal(back["label"], y)
    np.testing.assert_array_equal(back["cluster"], clusters)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["accuracy_by_stability"]["bins"][0]["accuracy"] == 1.0
    for name in PICTURES:
        assert (tmp_path / name).stat().st_size > 1000
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere


def test_tracker_rejects_bad_settings():
    with pytest.raises(DeepstabError, match="every must be a positive"):
        SampleStabilityTracker(np.zeros((4, 2)), every=0)
    with pytest.raises(DeepstabError, match="No stability recorded"):
        _ = SampleStabilityTracker(np.zeros((4, 2))).stability
    with pytest.raises(DeepstabError, match="bins must be an integer"):
        stability_bins(np.arange(10.0), bins=1)


def test_close_stabilities_stay_distinct():
    # float16 of the stability itself would round all of these to 1.0 or 0.9995
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 8))
    steps = iter([base, base + 1e-3 * np.arange(40)[:, None] * rng.normal(size=(40, 8))])
    tracker = SampleStabilityTracker(base, embed=lambda x: next(steps))
    _fit_with(tracker, epochs=1, n=40)
    s = tracker.stability[0]
    assert len(np.unique(s)) > 30 and s.min() < s.max() < 1.0 + 1e-6
    assert np.argmin(s) > 20  # the samples moved most are the least stable
