import numpy as np
import pytest
from keras import ops

from deepstab.methods.losses import decs_loss, determinacy, size_floor, size_prior, stability

Q = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]], dtype=np.float32)
T = 0.3


def by_hand(variant, lam):
    f = np.empty_like(Q, dtype=np.float64)
    for i in range(2):
        for j in range(3):
            gap = abs(Q[i, j] - T) / (T if Q[i, j] < T else 1 - T)
            f[i, j] = gap**2 if variant == "paper" else gap
    s = f.mean(1) - lam * f.var(1)
    return f, s, (1 - s.mean()) if variant == "paper" else 1 - (s.mean() + s.var())


def test_paper_determinacy_by_hand():
    f = ops.convert_to_numpy(determinacy(Q, T, "paper"))
    # q = 0.7 >= t: (0.4 / 0.7)^2; q = 0.2 < t: (0.1 / 0.3)^2
    assert f[0, 0] == pytest.approx((0.4 / 0.7) ** 2, rel=1e-5)
    assert f[0, 1] == pytest.approx((0.1 / 0.3) ** 2, rel=1e-5)
    np.testing.assert_allclose(f, by_hand("paper", 0.8)[0], rtol=1e-5)


@pytest.mark.parametrize("variant,lam", [("paper", 0.8), ("reference", 0.4), ("paper", 0.0)])
def test_loss_matches_hand_computation(variant, lam):
    f, s, loss = by_hand(variant, lam)
    np.testing.assert_allclose(ops.convert_to_numpy(stability(ops.convert_to_tensor(f), lam)), s, rtol=1e-5)
    assert float(decs_loss(Q, T, variant, lam)) == pytest.approx(loss, rel=1e-5)


def test_default_lambda_depends_on_variant():
    assert float(decs_loss(Q, T, "paper")) == pytest.approx(by_hand("paper", 0.8)[2], rel=1e-5)
    assert float(decs_loss(Q, T, "reference")) == pytest.approx(by_hand("reference", 0.4)[2], rel=1e-5)


def test_one_hot_assignments_minimise_the_paper_loss():
    one_hot = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    assert float(decs_loss(one_hot, 0.5, "paper")) < float(decs_loss(Q, 0.5, "paper"))


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        decs_loss(Q, T, "other")


def test_size_prior_is_zero_when_even_and_positive_when_skewed():
    even = np.full((4, 4), 0.25, dtype=np.float32)
    skewed = np.tile(np.array([[0.97, 0.01, 0.01, 0.01]], dtype=np.float32), (4, 1))
    assert float(size_prior(even)) == pytest.approx(0.0, abs=1e-6)
    p = skewed.mean(0)
    assert float(size_prior(skewed)) == pytest.approx(float(np.sum(p * np.log(p * 4))), rel=1e-4)


def test_size_prior_toward_a_target_is_the_kl_to_it():
    q = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
    target = np.array([0.6, 0.3, 0.1], dtype=np.float32)
    p = q.mean(0)
    assert float(size_prior(q, target)) == pytest.approx(float(np.sum(p * np.log(p / target))), rel=1e-4)
    assert float(size_prior(q, p)) == pytest.approx(0.0, abs=1e-6)


def test_size_floor_is_zero_above_the_floor_and_a_log_barrier_below():
    k = 4
    above = np.tile(np.array([[0.4, 0.3, 0.2, 0.1]], dtype=np.float32), (3, 1))  # smallest at 0.4 of an even share
    assert float(size_floor(above, 0.4)) == pytest.approx(0.0, abs=1e-6)
    below = np.tile(np.array([[0.5, 0.3, 0.19, 0.01]], dtype=np.float32), (3, 1))
    expected = (np.log(0.5) - np.log(0.01 * k)) / k
    assert float(size_floor(below, 0.5)) == pytest.approx(expected, rel=1e-4)
