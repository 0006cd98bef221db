import numpy as np
import pytest

from deepstab.errors import DeepstabError
from deepstab.metrics import cluster_accuracy, cluster_sizes, evaluate


def test_accuracy_is_invariant_to_cluster_names():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(y, np.array([2, 2, 0, 0, 1, 1])) == 1.0


def test_accuracy_known_case_with_hungarian_matching():
    y = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([1, 1, 0, 0, 0, 0])
    # best mapping: cluster 1 -> class 0 (2 right), cluster 0 -> class 1 (3 right)
    assert cluster_accuracy(y, pred) == pytest.approx(5 / 6)


def test_accuracy_with_more_clusters_than_classes():
    y = np.array([0, 0, 1, 1])
    assert cluster_accuracy(y, np.array([0, 1, 2, 3])) == pytest.approx(0.5)


def test_evaluate_perfect_and_random():
    y = np.repeat(np.arange(4), 50)
    perfect = evaluate(y, (y + 1) % 4)
    assert perfect == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})
    rng = np.random.default_rng(0)
    noise = evaluate(y, rng.integers(0, 4, size=len(y)))
    assert noise["acc"] < 0.45 and noise["nmi"] < 0.1 and abs(noise["ari"]) < 0.05


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(DeepstabError, match="differ in length"):
        evaluate(np.zeros(3), np.zeros(4))


def test_cluster_sizes_counts_empty_clusters():
    sizes = cluster_sizes(np.array([0, 0, 0, 2]), n_clusters=4)
    assert sizes["counts"] == [3, 0, 1, 0]
    assert sizes["n_nonempty"] == 2
    assert sizes["min_share"] == 0.0 and sizes["max_share"] == 0.75
