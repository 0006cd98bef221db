import numpy as np
import pytest
from keras import ops
from skimage.filters import threshold_otsu

from deepstab.nn.otsu import otsu_threshold


@pytest.mark.parametrize("seed", range(5))
def test_matches_scikit_image_on_the_data_range(seed):
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.full(10, 0.3), size=256).astype(np.float32)
    ours = float(ops.convert_to_numpy(otsu_threshold(q, nbins=1000)))
    assert ours == pytest.approx(threshold_otsu(q, nbins=1000), abs=1e-6)


@pytest.mark.parametrize("nbins", [10, 256, 1000])
def test_matches_scikit_image_on_a_fixed_range(nbins):
    rng = np.random.default_rng(nbins)
    q = np.concatenate([rng.beta(2, 30, 500), rng.beta(30, 3, 100)]).astype(np.float32)
    counts, edges = np.histogram(q, bins=nbins, range=(0.0, 1.0))
    expected = threshold_otsu(hist=(counts, (edges[:-1] + edges[1:]) / 2))
    ours = float(ops.convert_to_numpy(otsu_threshold(q, nbins=nbins, value_range=(0.0, 1.0))))
    assert ours == pytest.approx(expected, abs=1e-6)
    assert 0.2 < ours < 0.8


def test_threshold_carries_no_gradient():
    import torch

    q = torch.rand(8, 3, requires_grad=True)
    assert not otsu_threshold(q, nbins=16).requires_grad
