"""LFSS: its losses against hand computations, the train step's bookkeeping, saving."""

import math

import keras
import numpy as np
import pytest

from deepstab.datasets.streaming import IndexedImages
from deepstab.errors import DeepstabError
from deepstab.io import load_model, save_model
from deepstab.methods.lfss import LFSSModel
from deepstab.methods.losses import byol_loss, cluster_centres, cluster_loss, info_nce, nt_xent
from deepstab.nn.networks import build_resnet

TINY = dict(width=0.0625, hidden=16, dim=8)


def np_(t):
    return keras.ops.convert_to_numpy(t)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def images():
    return np.random.default_rng(0).random((32, 16, 16, 3), dtype=np.float32)


def weights(model):
    return [np.array(np_(w.value)) for w in model.weights]


# ------------------------------------------------------------------ losses


def test_byol_loss_by_hand():
    p, t = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 3.0], [2.0, 2.0]])
    # cosines 0 and 1 -> (2 - 0 + 2 - 2) / 2
    assert float(np_(byol_loss(p, t))) == pytest.approx(1.0)


def test_nt_xent_by_hand():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    z = unit(np.concatenate([a, b]))
    sim = z @ z.T / 0.5
    expected = np.mean(
        [-sim[i, (i + 3) % 6] + np.log(sum(np.exp(sim[i, j]) for j in range(6) if j != i)) for i in range(6)]
    )
    assert float(np_(nt_xent(a, b, 0.5))) == pytest.approx(expected, rel=1e-5)
    # an invalid row is neither anchor nor negative: the same as dropping it
    valid = np.array([True, False, True])
    dropped = nt_xent(a[[0, 2]], b[[0, 2]], 0.5)
    assert float(np_(nt_xent(a, b, 0.5, valid=valid))) == pytest.approx(float(np_(dropped)), rel=1e-5)


def test_cluster_centres_and_loss_by_hand():
    z = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, -1.0]])
    labels, keep = np.array([0, 0, 1, 1]), np.array([True, True, True, False])
    centres, present = cluster_centres(z, labels, keep, 3)
    expected0 = unit(np.array([[0.5, 0.5]]))[0]  # mean of the unit rows (1, 0) and (0, 1)
    np.testing.assert_allclose(np_(centres)[0], expected0, atol=1e-6)
    np.testing.assert_allclose(np_(centres)[1], [0.6, 0.8], atol=1e-6)  # sample 3 is left out
    assert np_(present).tolist() == [True, True, False]
    zt = z[::-1].copy()
    ct, _ = cluster_centres(zt, labels, keep, 3)
    by_hand = nt_xent(np_(centres)[:2], np_(ct)[:2], 0.5)
    assert float(np_(cluster_loss(z, zt, labels, keep, 3, 0.5))) == pytest.approx(float(np_(by_hand)), rel=1e-5)


def test_info_nce_by_hand():
    q, k, queue = np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]), np.array([[0.0, 1.0], [-1.0, 0.0]])
    logits = np.array([1 / math.sqrt(2), 0.0, -1.0]) / 0.2
    expected = -logits[0] + np.log(np.exp(logits).sum())
    assert float(np_(info_nce(q, k, queue, 0.2))) == pytest.approx(expected, rel=1e-5)


# -------------------------------------------------------------- networks


def test_resnet_stems_follow_the_input_size():
    small = build_resnet((32, 32, 3), 18, width=0.125)
    large = build_resnet((96, 96, 3), 18, width=0.125)
    assert not any("MaxPooling" in type(layer).__name__ for layer in small.layers)
    assert any("MaxPooling" in type(layer).__name__ for layer in large.layers)
    assert build_resnet((32, 32, 3), 50, width=0.125).output_shape == (None, 256)  # bottleneck: 4x


# ------------------------------------------------------------ train step


def _step(model, x):
    model.train_step((keras.ops.convert_to_tensor(x), np.arange(len(x))))


def test_gradients_reach_only_online_and_predictor(images):
    model = LFSSModel((16, 16, 3), 2, momentum=1.0, eta=0, **TINY)
    model.compile()
    online, predictor = weights(model.online), weights(model.predictor)
    target, predecessor = weights(model.target), weights(model.predecessor)
    _step(model, images[:16])
    assert all(np.allclose(a, b) for a, b in zip(target, weights(model.target)))  # momentum 1: untouched
    assert all(np.allclose(a, b) for a, b in zip(predecessor, weights(model.predecessor)))
    assert all(w.value.grad is None for w in model.target.weights + model.predecessor.weights)
    assert not all(np.allclose(a, b) for a, b in zip(online, weights(model.online)))
    assert not all(np.allclose(a, b) for a, b in zip(predictor, weights(model.predictor)))


def test_ema_update_matches_its_formula(images):
    model = LFSSModel((16, 16, 3), 2, momentum=0.9, **TINY)
    model.compile()
    _step(model, images[:16])  # the target now differs from the online network
    before = weights(model.target)
    _step(model, images[16:])
    online = weights(model.online)
    for b, o, after, w in zip(before, online, weights(model.target), model.target.weights):
        if w.dtype.startswith("float"):
            np.testing.assert_allclose(after, 0.9 * b + 0.1 * o, rtol=1e-5, atol=1e-6)


def test_predecessor_is_last_epochs_target_and_cluster_loss_starts_after_eta(images):
    model = LFSSModel((16, 16, 3), 2, eta=2, **TINY)
    model.compile()
    target_at_end, predecessor_during = {}, {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            predecessor_during[epoch] = weights(model.predecessor)

        def on_epoch_end(self, epoch, logs=None):
            target_at_end[epoch] = weights(model.target)

    history = model.fit(images, epochs=3, batch_size=16, verbose=0, callbacks=[Probe()])
    for epoch in (0, 1):
        pairs = zip(predecessor_during[epoch + 1], target_at_end[epoch])
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert not all(np.array_equal(a, b) for a, b in zip(target_at_end[0], target_at_end[1]))
    l_c = history.history["l_c"]
    assert l_c[0] == 0.0 and l_c[1] == 0.0 and l_c[2] > 0.0  # L_C only after η = 2 epochs
    assert "mean_stability" in history.history


def test_delta_drops_exactly_the_least_stable_share(images):
    model = LFSSModel((16, 16, 3), 2, delta=0.25, **TINY)
    model.compile()
    _step(model, images[:16])  # the target moves away from the predecessor
    stability = model.refresh_pseudo_labels(images)
    keep = np_(model.keep).astype(bool)
    assert keep.sum() == 32 - 8
    assert stability[~keep].max() <= stability[keep].min()
    assert set(np_(model.pseudo_labels).tolist()) <= {0, 1}


@pytest.mark.parametrize("base", ["simclr", "moco"])
def test_other_bases_train(images, base):
    model = LFSSModel((16, 16, 3), 2, base=base, eta=1, queue_size=32, **TINY)
    model.compile()
    history = model.fit(images, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and history.history["l_c"][1] > 0
    assert model.predictor is None


def test_no_stability_switches_the_extra_losses_off(images):
    model = LFSSModel((16, 16, 3), 2, stability=False, eta=0, **TINY)
    model.compile()
    history = model.fit(images, epochs=1, batch_size=16, verbose=0)
    assert history.history["l_i"] == [0.0] and history.history["l_c"] == [0.0]


def test_save_load_round_trip(images, tmp_path):
    model = LFSSModel((16, 16, 3), 2, eta=1, **TINY)
    model.compile()
    model.fit(images, epochs=1, batch_size=16, verbose=0)
    path = save_model(model, tmp_path / "lfss.keras")
    loaded = load_model(path, expect=LFSSModel)
    np.testing.assert_allclose(loaded.embed(images), model.embed(images), rtol=1e-5, atol=1e-6)
    assert loaded.get_config()["eta"] == 1 and loaded.base == "byol"


def test_trains_on_uint8_images_memory_mapped_from_disk(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    on_disk = np.load(tmp_path / "x.npy", mmap_mode="r")
    batches = IndexedImages(on_disk, 8, seed=0)
    batch, index = batches[0]
    assert batch.dtype == np.float32 and len(index) == 8
    np.testing.assert_allclose(batch, pixels[index] / 255.0, rtol=1e-6)
    model = LFSSModel((16, 16, 3), 2, eta=1, **TINY)
    model.compile()
    history = model.fit(batches, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and model.cluster_active
    np.testing.assert_allclose(model.embed(on_disk), model.embed(pixels / np.float32(255)), rtol=1e-5, atol=1e-6)


def test_bad_arguments_and_inputs(images):
    with pytest.raises(DeepstabError, match="base must be one of"):
        LFSSModel((16, 16, 3), 2, base="swav", **TINY)
    with pytest.raises(DeepstabError, match="delta"):
        LFSSModel((16, 16, 3), 2, delta=1.5, **TINY)
    model = LFSSModel((16, 16, 3), 2, **TINY)
    model.compile()
    with pytest.raises(DeepstabError, match="needs images"):
        model.fit(images[..., :1], epochs=1)
