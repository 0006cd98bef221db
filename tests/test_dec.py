"""DEC, IDEC, DCN: losses by hand, the DCN centroid update, training, save/load."""

import keras
import numpy as np
import pytest

from deepstab.errors import DeepstabError
from deepstab.io import load_model, save_model
from deepstab.methods.dec import DCN, DEC, IDEC, DenseAutoencoder
from deepstab.methods.losses import dcn_centroid_update, dcn_cluster_loss, kl_divergence, target_distribution

SMALL = dict(hidden=(16, 8))


def np_(t):
    return keras.ops.convert_to_numpy(t)


@pytest.fixture
def blobs():
    """Three separable groups of 8x8 'images' (a bright square in a different corner)."""
    rng = np.random.default_rng(0)
    x = rng.random((96, 8, 8, 1), dtype=np.float32) * 0.2
    y = np.repeat(np.arange(3), 32)
    for label, (r, c) in enumerate(((0, 0), (0, 4), (4, 2))):
        x[y == label, r : r + 4, c : c + 4] += 0.8
    return x, y


def test_target_distribution_and_kl_by_hand():
    q = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], dtype=np.float32)
    f = q.sum(0)  # 1.7, 1.3
    w = q**2 / f
    p = w / w.sum(1, keepdims=True)
    # row 0: (0.81/1.7, 0.01/1.3) = (0.476471, 0.007692) -> (0.984112, 0.015888)
    np.testing.assert_allclose(p[0], [0.984112, 0.015888], rtol=1e-4)
    np.testing.assert_allclose(np_(target_distribution(q)), p, rtol=1e-6)
    kl = np.mean(np.sum(p * np.log(p / q), axis=1))
    np.testing.assert_allclose(float(np_(kl_divergence(p, q))), kl, rtol=1e-5)
    assert float(np_(kl_divergence(q, q))) == pytest.approx(0.0, abs=1e-6)


def test_dcn_cluster_loss_by_hand():
    z = np.array([[1.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    m = np.array([[0.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # sample 0 to m0: 1; sample 1 to m1: 4 -> 0.5 * mean(1, 4) = 1.25
    assert float(np_(dcn_cluster_loss(z, m, np.array([0, 1])))) == pytest.approx(1.25)


def test_dcn_centroid_update_equals_the_sequential_rule():
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(3, 2)).astype(np.float32)
    counts = np.array([2.0, 5.0, 1.0], dtype=np.float32)
    z = rng.normal(size=(6, 2)).astype(np.float32)
    s = np.array([0, 1, 0, 0, 1, 0])  # cluster 2 gets nothing
    m, c = centroids.copy(), counts.copy()
    for zi, k in zip(z, s):  # DCN Eq. 8, one sample at a time
        c[k] += 1
        m[k] = m[k] - (1.0 / c[k]) * (m[k] - zi)
    new_m, new_c = dcn_centroid_update(centroids, counts, z, s)
    np.testing.assert_allclose(np_(new_m), m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(new_c), [6.0, 7.0, 1.0])
    np.testing.assert_array_equal(np_(new_m)[2], centroids[2])


def test_dense_autoencoder_standardises_and_learns(blobs):
    x, _ = blobs
    ae = DenseAutoencoder((8, 8, 1), 3, **SMALL)
    ae.prepare(x)
    standardised = np_(ae.standardise(x.reshape(len(x), -1)))
    np.testing.assert_allclose(standardised.mean(0), 0.0, atol=1e-4)
    std = x.reshape(len(x), -1).std(0)
    np.testing.assert_allclose(standardised.std(0), std / np.maximum(std, std.mean()), rtol=1e-3)
    # A constant (always blank) pixel is scaled like an average one, not divided by ~0.
    blank = np.zeros((4, 8, 8, 1), np.float32)
    blank[:, 0, 0] = 1.0
    ae.prepare(np.concatenate([x * np.pad(np.ones((7, 7, 1)), ((1, 0), (1, 0), (0, 0)))[None], blank[:1] * 0]))
    assert np.abs(np_(ae.standardise(blank.reshape(4, -1)))).max() < 10
    ae.compile(optimizer=keras.optimizers.Adam(1e-2))
    losses = ae.fit(x, epochs=15, batch_size=32, verbose=0).history["loss"]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("cls", [DEC, IDEC, DCN])
def test_each_method_clusters_separable_data(blobs, cls):
    from deepstab.metrics import evaluate

    x, y = blobs
    keras.utils.set_random_seed(0)
    model = cls(3, (8, 8, 1), augment=False, **SMALL)
    model.pretrain(x, epochs=20, batch_size=32, optimizer=keras.optimizers.Adam(1e-2), verbose=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, epochs=3, batch_size=32, verbose=0, seed=0).history
    assert np.isfinite(history["loss"]).all()
    assert evaluate(y, model.predict_labels(x))["acc"] > 0.9


def test_only_the_right_variables_learn(blobs):
    x, _ = blobs
    dec, idec, dcn = (cls(3, (8, 8, 1), **SMALL) for cls in (DEC, IDEC, DCN))
    decoder_ids = lambda m: {id(v) for v in m.autoencoder.decoder.trainable_weights}  # noqa: E731
    assert not decoder_ids(dec) & {id(v) for v in dec.trainable_variables_of_step()}
    assert decoder_ids(idec) <= {id(v) for v in idec.trainable_variables_of_step()}
    ids = lambda variables: {id(v) for v in variables}  # noqa: E731
    assert id(dec.clustering.centroids) in ids(dec.trainable_variables_of_step())
    assert id(dcn.clustering.centroids) not in ids(dcn.trainable_variables_of_step())  # DCN: Eq. 8, not gradients
    # DCN moves its centroids and counts by Eq. 8 during a step.
    dcn.autoencoder.prepare(x)
    dcn.compile(optimizer="adam")
    dcn.initialize_centroids(x, seed=0)
    before = np_(dcn.clustering.centroids).copy()
    np.testing.assert_array_equal(np_(dcn.counts), 100.0)
    dcn.fit(x, epochs=1, batch_size=32, verbose=0, seed=0)
    assert np_(dcn.counts).sum() == pytest.approx(300.0 + 96)
    assert not np.allclose(np_(dcn.clustering.centroids), before)


def test_dec_target_refreshes_on_its_interval(blobs):
    x, _ = blobs
    model = DEC(3, (8, 8, 1), target_interval=2, **SMALL)
    model.autoencoder.prepare(x)
    model.compile(optimizer="adam")
    refreshed = []
    original = model.refresh_target
    model.refresh_target = lambda data: (refreshed.append(len(data)), original(data))
    model.fit(x, epochs=5, batch_size=32, verbose=0, seed=0)
    assert len(refreshed) == 3  # epochs 0, 2, 4
    np.testing.assert_allclose(np_(model.target).sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("cls", [DEC, IDEC, DCN])
def test_save_load_round_trip(blobs, tmp_path, cls):
    x, _ = blobs
    model = cls(3, (8, 8, 1), **SMALL)
    model.autoencoder.prepare(x)
    model.compile(optimizer="adam")
    model.fit(x, epochs=1, batch_size=32, verbose=0, seed=0)
    loaded = load_model(save_model(model, tmp_path / "m.keras"), expect=cls)
    np.testing.assert_allclose(loaded.embed(x), model.embed(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(loaded.predict_labels(x), model.predict_labels(x))
    assert type(loaded) is cls and loaded.get_config() == model.get_config()


def test_bad_arguments_and_inputs(blobs):
    x, _ = blobs
    with pytest.raises(DeepstabError, match="n_clusters must be at least 2"):
        DEC(1, (8, 8, 1), **SMALL)
    with pytest.raises(DeepstabError, match="gamma"):
        IDEC(3, (8, 8, 1), gamma=-1, **SMALL)
    with pytest.raises(DeepstabError, match="target_interval"):
        DEC(3, (8, 8, 1), target_interval=0, **SMALL)
    model = DCN(3, (8, 8, 1), **SMALL)
    model.compile(optimizer="adam")
    with pytest.raises(DeepstabError, match="needs images"):
        model.fit(x[..., 0], epochs=1)
    with pytest.raises(DeepstabError, match="too few"):
        model.fit(x[:2], epochs=1)


def test_dcn_reseeds_a_cluster_that_got_no_sample(blobs):
    x, _ = blobs
    model = DCN(3, (8, 8, 1), augment=False, **SMALL)
    model.autoencoder.prepare(x)
    model.compile(optimizer="adam")
    model.initialize_centroids(x, seed=0)
    far = np_(model.clustering.centroids).copy()
    far[2] = 1e6  # nobody's nearest centroid
    model.clustering.centroids.assign(far)
    history = model.fit(x, epochs=2, batch_size=32, verbose=0, seed=0).history
    assert history["reseeded"][0] == 1.0 and model.reseeded >= 1
    assert np.abs(np_(model.clustering.centroids)[2]).max() < 1e3
    assert len(np.unique(model.predict_labels(x))) == 3


def test_label_check_and_target_refresh_share_one_embedding_pass(blobs):
    from deepstab.analysis.progress import LabelMetrics

    x, _ = blobs
    model = DEC(3, x.shape[1:], **SMALL)
    model.autoencoder.prepare(x)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.initialize_centroids(x, seed=0)
    passes, fresh, refresh = [], [], model.refresh_target
    predict = model.encoder.predict
    model.encoder.predict = lambda *a, **k: passes.append(1) or predict(*a, **k)

    def checked_refresh(data):
        refresh(data)
        fresh.append(
            np.allclose(
                np_(model.target), np_(target_distribution(model.clustering(predict(data, verbose=0)))), atol=1e-6
            )
        )

    model.refresh_target = checked_refresh
    model.fit(x, epochs=3, batch_size=32, verbose=0, seed=0, callbacks=[LabelMetrics(x, every=1)])
    # Before training and after each epoch: 4 passes, the 3 target refreshes reuse them.
    assert len(passes) == 4 and fresh == [True, True, True]
    model.embed(x)
    assert len(passes) == 5  # outside fit nothing is reused
