"""DEC, IDEC, DCN: each loss and update against the same computation written out from the BRB
authors' code (src/deep/dec_module.py, dcn_module.py, soft_reset.py) on fixed tensors; training,
options, save/load."""

import keras
import numpy as np
import pytest
import torch
from scipy import stats

from deepstab.errors import DeepstabError
from deepstab.io import load_model, save_model
from deepstab.methods.brb import BRB, soft_reset
from deepstab.methods.dec import DCN, DEC, IDEC
from deepstab.methods.losses import dcn_centroid_update, dcn_cluster_loss, dec_cross_entropy, target_distribution
from deepstab.nn.autoencoders import DenseAutoencoder
from deepstab.nn.steps import clip_by_global_norm

SMALL = dict(hidden=(16, 8), image_size=8)


def np_(t):
    return keras.ops.convert_to_numpy(t)


# ------------------------------------------------- the authors' computations, in NumPy (float64)


def sqdist(z, c):
    return ((np.asarray(z, np.float64)[:, None, :] - np.asarray(c, np.float64)[None]) ** 2).sum(-1)


def student_t(z, c):  # _dec_predict with alpha = 1
    q = 1.0 / (1.0 + sqdist(z, c))
    return q / q.sum(1, keepdims=True)


def authors_target(q):  # _dec_compression_value: one mini-batch
    w = q**2 / q.sum(0, keepdims=True)
    return w / w.sum(1, keepdims=True)


def authors_dec_loss(z_clean, z_aug, c):  # dec_augmentation_invariance_loss + _dec_compression_loss_fn
    p = authors_target(student_t(z_clean, c))

    def ce(q):
        return -np.mean(np.sum(p * np.log(q + 1e-8), axis=1))

    return 0.5 * (ce(student_t(z_clean, c)) + ce(student_t(z_aug, c)))


def authors_dcn_k_term(z_clean, z_aug, c):  # _BRB_DCN_Module._loss: cluster_loss of both views
    a = np.eye(len(c))[np.argmin(sqdist(z_clean, c), axis=1)]
    return 0.5 * (np.mean(sqdist(z_clean, c) * a) + np.mean(sqdist(z_aug, c) * a))


def authors_centroid_pass(c, batches, count=100):  # update_centroids -> _compute_centroids_mb, center_lr=0
    c = np.array(c, np.float64)
    for z in batches:
        labels = np.argmin(sqdist(z, c), axis=1)
        for k in np.unique(labels):
            c[k] = (1 - 1 / (count + 1)) * c[k] + (1 / (count + 1)) * z[labels == k].mean(0)
    return c


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture
def blobs():
    """Three separable groups of 8x8 'images' (a bright square in a different corner)."""
    rng = np.random.default_rng(0)
    x = rng.random((96, 8, 8, 1), dtype=np.float32) * 0.2
    y = np.repeat(np.arange(3), 32)
    for label, (r, c) in enumerate(((0, 0), (0, 4), (4, 2))):
        x[y == label, r : r + 4, c : c + 4] += 0.8
    return x, y


@pytest.fixture
def fixed():
    rng = np.random.default_rng(3)
    return [rng.normal(size=shape).astype(np.float32) for shape in ((12, 4), (12, 4), (3, 4))]


# ------------------------------------------------------------------------ losses and updates


def test_dec_loss_equals_the_authors(fixed):
    z_clean, z_aug, c = fixed
    model = DEC(3, (8, 8, 1), embedding_dim=4, **SMALL)
    model.clustering.centroids.assign(c)
    ours = np_(model.clustering_loss(keras.ops.convert_to_tensor(z_aug), keras.ops.convert_to_tensor(z_clean), None))
    assert float(ours) == pytest.approx(authors_dec_loss(z_clean, z_aug, c), rel=1e-5)
    np.testing.assert_allclose(np_(target_distribution(student_t(z_clean, c))), authors_target(student_t(z_clean, c)))


def test_dec_cross_entropy_is_kl_plus_the_targets_entropy():
    q = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    p = authors_target(q)
    kl = np.mean(np.sum(p * np.log(p / q), axis=1))
    entropy = -np.mean(np.sum(p * np.log(p), axis=1))
    assert float(np_(dec_cross_entropy(p, q))) == pytest.approx(kl + entropy, rel=1e-6)


def test_idec_step_loss_equals_the_authors(blobs):
    x, _ = blobs
    keras.utils.set_random_seed(1)
    model = IDEC(3, (8, 8, 1), **SMALL)
    model.autoencoder.prepare(x)
    model.initialize_centroids(x, seed=0)
    clean = model.autoencoder.inputs(x[:8])
    augmented = model.autoencoder.augmented(clean)
    inputs, z, z_aug, z_clean = model.joint_embeddings(augmented, clean)
    ours = model.autoencoder.reconstruction_loss(inputs, z) + 0.1 * model.clustering_loss(z_aug, z_clean, None)
    target = np_(model.autoencoder.reconstruction_target(inputs))  # z-scored flat [aug; clean]
    decoded = np_(model.autoencoder.decoder(z, training=True))
    c = np_(model.clustering.centroids)
    expected = np.mean((decoded - target) ** 2) + 0.1 * authors_dec_loss(np_(z_clean), np_(z_aug), c)
    assert float(np_(ours)) == pytest.approx(expected, rel=1e-4)


def test_dec_step_passes_both_views_in_one_call_as_two(blobs):
    x, _ = blobs
    keras.utils.set_random_seed(4)
    model = DEC(3, (8, 8, 1), **SMALL)
    model.autoencoder.prepare(x)
    model.initialize_centroids(x, seed=0)
    clean = model.autoencoder.inputs(x[:16])
    augmented = model.autoencoder.augmented(clean)
    twin = DEC(3, (8, 8, 1), **SMALL)
    twin.set_weights(model.get_weights())
    core, twin_core = model.autoencoder.core, twin.autoencoder.core
    separate = model.clustering_loss(core(augmented, training=True), core(clean, training=True), None)
    from deepstab.nn.layers import views

    with views(2):
        z = twin_core(keras.ops.concatenate([augmented, clean]), training=True)
    joint = twin.clustering_loss(z[:16], z[16:], None)
    assert float(np_(joint)) == pytest.approx(float(np_(separate)), rel=1e-5)
    for a, b in zip(model.weights, twin.weights):  # the moving statistics too
        np.testing.assert_allclose(np_(a), np_(b), rtol=1e-5, atol=1e-6)


def test_dcn_k_term_equals_the_authors(fixed):
    z_clean, z_aug, c = fixed
    a = np.argmin(sqdist(z_clean, c), axis=1)
    ours = (np_(dcn_cluster_loss(z_clean, c, a)) + np_(dcn_cluster_loss(z_aug, c, a))) / 2
    assert float(ours) == pytest.approx(authors_dcn_k_term(z_clean, z_aug, c), rel=1e-5)
    assert DCN(3, (8, 8, 1), **SMALL).lam == 0.025  # the authors' DCN weight


def test_dcn_epoch_pass_equals_the_authors_with_frozen_counts(blobs):
    x, _ = blobs
    keras.utils.set_random_seed(2)
    model = DCN(3, (8, 8, 1), **SMALL)
    model.autoencoder.prepare(x)
    model.initialize_centroids(x, seed=0)
    start = np_(model.clustering.centroids).copy()
    model.centroid_pass(x, 32, np.random.default_rng(5))
    order = np.random.default_rng(5).permutation(len(x))
    batches = [model.embed(x[np.sort(order[s : s + 32])]) for s in range(0, 96, 32)]
    np.testing.assert_allclose(
        np_(model.clustering.centroids), authors_centroid_pass(start, batches), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(np_(model.counts), 100.0)  # the authors' counts never change


def test_dcn_eq8_equals_the_sequential_rule():
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(3, 2)).astype(np.float32)
    counts = np.array([2.0, 5.0, 1.0], dtype=np.float32)
    z = rng.normal(size=(6, 2)).astype(np.float32)
    s = np.array([0, 1, 0, 0, 1, 0])  # cluster 2 gets nothing
    m, c = centroids.copy(), counts.copy()
    for zi, k in zip(z, s):  # DCN Eq. 8, one sample at a time
        c[k] += 1
        m[k] = m[k] - (1.0 / c[k]) * (m[k] - zi)
    new_m, new_c = dcn_centroid_update(centroids, counts, z, s, "eq8")
    np.testing.assert_allclose(np_(new_m), m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(new_c), [6.0, 7.0, 1.0])
    np.testing.assert_array_equal(np_(new_m)[2], centroids[2])


def authors_mini_batch_update(centers, count, z, labels, center_lr=0.5):
    """The BRB authors' ``_compute_centroids_mb`` (src/deep/dcn_module.py) written out in torch,
    with ``center_lr`` given (their DCN call passes ``False`` in its place)."""
    centers, count, z = torch.tensor(centers), torch.tensor(count, dtype=torch.int32), torch.tensor(z)
    one_hot = torch.nn.functional.one_hot(torch.tensor(labels), len(centers)).float()
    copy_count = count.clone().unsqueeze(1).float()
    sums = (z.unsqueeze(1) * one_hot.unsqueeze(2)).sum(0)
    mask_sum = one_hot.sum(0).unsqueeze(1)
    nonzero = mask_sum.squeeze(1) != 0
    copy_count[nonzero] = (1 - center_lr) * copy_count[nonzero]
    copy_count[nonzero] += center_lr * mask_sum[nonzero]
    lr = 1.0 / (copy_count[nonzero] + 1)
    centers[nonzero] = (1.0 - lr) * centers[nonzero] + lr * (sums[nonzero] / mask_sum[nonzero])
    return centers.numpy(), copy_count.squeeze(1).int().numpy()


def test_dcn_mini_batch_counts_equal_the_authors_update_with_its_default_rate():
    rng = np.random.default_rng(3)
    centroids = rng.normal(size=(4, 3)).astype(np.float32)
    counts = np.full(4, 100.0, dtype=np.float32)
    m, c = centroids.copy(), counts.astype(np.int32)
    for _ in range(5):  # counts fall from 100 toward the batch's sizes; cluster 3 gets nothing
        z = rng.normal(size=(20, 3)).astype(np.float32)
        s = rng.integers(0, 3, size=20)
        m, c = authors_mini_batch_update(m, c, z, s)
        centroids, counts = (np_(t) for t in dcn_centroid_update(centroids, counts, z, s, "mini-batch"))
        np.testing.assert_allclose(centroids, m, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(counts, c)
    assert counts[3] == 100 and counts[:3].max() < 20
    model = DCN(3, (8, 8, 1), counts="mini-batch", **SMALL)
    dim = model.autoencoder.embedding_dim
    model.set_centroids(np.zeros((3, dim), np.float32))
    model.counts.assign(np.array([7.0, 8.0, 9.0], np.float32))
    model.set_centroids(np.ones((3, dim), np.float32))  # BRB's re-clustering keeps the counts, as theirs
    np.testing.assert_array_equal(np_(model.counts), [7.0, 8.0, 9.0])


def test_soft_reset_draws_as_the_authors_kaiming_uniform():
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(400)
    model = keras.Sequential([keras.Input((300,)), layer])
    soft_reset(model, alpha=0.0, seed=0)  # θ = φ
    kernel, bias = np_(layer.kernel).ravel(), np_(layer.bias)
    bound = np.sqrt(6.0 / 300)  # torch.nn.init.kaiming_uniform_ with its defaults
    assert stats.kstest(kernel, stats.uniform(-bound, 2 * bound).cdf).pvalue > 0.01
    assert bias.std() > 0 and np.abs(bias).max() <= 1 / np.sqrt(300)
    assert stats.kstest(bias, stats.uniform(-1 / np.sqrt(300), 2 / np.sqrt(300)).cdf).pvalue > 0.01


def test_gradient_clipping_equals_torch():
    rng = np.random.default_rng(0)
    grads = [torch.tensor(rng.normal(size=s) * 300, dtype=torch.float32) for s in ((5, 4), (4,), (3, 3))]
    params = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, 500.0)
    for ours, p in zip(clip_by_global_norm(grads, 500.0), params):
        torch.testing.assert_close(ours, p.grad)
    small = [g / 1000 for g in grads]
    assert all(torch.equal(a, b) for a, b in zip(clip_by_global_norm(small, 500.0), small))


def test_channel_standardisation_is_the_authors_z_score(blobs):
    x, _ = blobs
    ae = DenseAutoencoder((8, 8, 1), 3, hidden=(16, 8))  # resized to 28x28, as the authors
    ae.prepare(x)
    layer = ae.standardise_layer
    assert float(np_(layer.mean)[0]) == pytest.approx(x.mean(), rel=1e-5)
    assert float(np_(layer.std)[0]) == pytest.approx(x.std(ddof=1), rel=1e-5)
    assert ae.inner_shape == (28, 28, 1) and ae.encoder.input_shape == (None, 8, 8, 1)
    pixel = DenseAutoencoder((8, 8, 1), 3, hidden=(16, 8), image_size=8, standardise="pixel")
    blank = np.zeros((4, 8, 8, 1), np.float32)
    blank[:, 0, 0] = 1.0  # ink on a pixel that is blank in the training images
    pixel.prepare(np.concatenate([x * np.pad(np.ones((7, 7, 1)), ((1, 0), (1, 0), (0, 0)))[None], blank[:1] * 0]))
    assert np.abs(np_(pixel.standardise_layer(blank))).max() < 10  # floored std: not divided by ~0


def test_brb_reclusters_on_the_first_images_by_default(blobs):
    x, _ = blobs
    assert (BRB(x, subsample=50, seed=0)._draws()[1] == np.arange(50)).all()
    random = BRB(x, subsample=50, subsample_order="random", seed=0)._draws()[1]
    assert len(random) == 50 and not (random == np.arange(50)).all()


# ------------------------------------------------------------------------------- training


@pytest.mark.parametrize("cls", [DEC, IDEC, DCN])
def test_each_method_clusters_separable_data(blobs, cls):
    from deepstab.metrics import evaluate

    x, y = blobs
    keras.utils.set_random_seed(0)
    model = cls(3, (8, 8, 1), **SMALL)
    model.pretrain(x, epochs=20, batch_size=32, optimizer=keras.optimizers.Adam(1e-2), verbose=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, epochs=3, batch_size=32, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert evaluate(y, model.predict_labels(x))["acc"] > 0.9


def test_only_the_right_variables_learn(blobs):
    x, _ = blobs
    dec, idec, dcn = (cls(3, (8, 8, 1), **SMALL) for cls in (DEC, IDEC, DCN))

    def ids(variables):
        return {id(v) for v in variables}

    assert not ids(dec.autoencoder.decoder.trainable_weights) & ids(dec.trainable_variables_of_step())
    assert ids(idec.autoencoder.decoder.trainable_weights) <= ids(idec.trainable_variables_of_step())
    assert id(dec.clustering.centroids) in ids(dec.trainable_variables_of_step())
    assert id(dcn.clustering.centroids) not in ids(dcn.trainable_variables_of_step())  # DCN: Eq. 8, not gradients
    dcn.autoencoder.prepare(x)
    dcn.compile(optimizer="adam")
    dcn.initialize_centroids(x, seed=0)
    before = np_(dcn.clustering.centroids).copy()
    dcn.fit(x, epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(np_(dcn.clustering.centroids), before)  # moved by the epoch-end pass


def test_deepstab_options_of_earlier_versions(blobs):
    x, _ = blobs
    model = DCN(3, (8, 8, 1), views="augmented", centroid_update="batch", counts="eq8", **SMALL)
    model.autoencoder.prepare(x)
    model.compile(optimizer="adam")
    model.initialize_centroids(x, seed=0)
    model.fit(x, epochs=1, batch_size=32, verbose=0)
    assert np_(model.counts).sum() == pytest.approx(300.0 + 96)  # every sample of every step counted
    dec = DEC(3, (8, 8, 1), target="dataset", target_interval=2, **SMALL)
    dec.autoencoder.prepare(x)
    dec.compile(optimizer="adam")
    refreshed = []
    original = dec.refresh_target
    dec.refresh_target = lambda data: (refreshed.append(len(data)), original(data))
    dec.fit(x, epochs=5, batch_size=32, verbose=0)
    assert len(refreshed) == 3  # epochs 0, 2, 4
    np.testing.assert_allclose(np_(dec.target).sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("cls", [DEC, IDEC, DCN])
def test_save_load_round_trip(blobs, tmp_path, cls):
    x, _ = blobs
    model = cls(3, (8, 8, 1), hidden=(16, 8))  # with resizing to 28x28 inside
    model.autoencoder.prepare(x)
    model.compile(optimizer="adam")
    model.fit(x, epochs=1, batch_size=32, verbose=0)
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
    with pytest.raises(DeepstabError, match="views must be one of"):
        DEC(3, (8, 8, 1), views="clean", **SMALL)
    model = DCN(3, (8, 8, 1), **SMALL)
    model.compile(optimizer="adam")
    with pytest.raises(DeepstabError, match="needs images"):
        model.fit(x[..., 0], epochs=1)
    with pytest.raises(DeepstabError, match="too few"):
        model.fit(x[:2], epochs=1)


def test_dcn_reseeds_a_cluster_that_got_no_sample_when_asked(blobs):
    x, _ = blobs
    model = DCN(3, (8, 8, 1), reseed_lost=True, augmentation="none", **SMALL)
    model.autoencoder.prepare(x)
    model.compile(optimizer="adam")
    model.initialize_centroids(x, seed=0)
    far = np_(model.clustering.centroids).copy()
    far[2] = 1e6  # nobody's nearest centroid
    model.clustering.centroids.assign(far)
    history = model.fit(x, epochs=2, batch_size=32, verbose=0).history
    assert history["reseeded"][0] == 1.0 and model.reseeded >= 1
    assert np.abs(np_(model.clustering.centroids)[2]).max() < 1e3


def test_label_check_and_dataset_target_share_one_embedding_pass(blobs):
    from deepstab.analysis.progress import LabelMetrics

    x, _ = blobs
    model = DEC(3, x.shape[1:], target="dataset", **SMALL)
    model.autoencoder.prepare(x)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.initialize_centroids(x, seed=0)
    passes, fresh, refresh = [], [], model.refresh_target
    predict = model.encoder.predict
    model.encoder.predict = lambda *a, **k: passes.append(1) or predict(*a, **k)

    def checked_refresh(data):
        refresh(data)
        q = model.clustering(predict(data, verbose=0))
        fresh.append(np.allclose(np_(model.target), np_(target_distribution(q)), atol=1e-6))

    model.refresh_target = checked_refresh
    model.fit(x, epochs=3, batch_size=32, verbose=0, callbacks=[LabelMetrics(x, every=1)])
    # Before training and after each epoch: 4 passes, the 3 target refreshes reuse them.
    assert len(passes) == 4 and fresh == [True, True, True]
    model.embed(x)
    assert len(passes) == 5  # outside fit nothing is reused
