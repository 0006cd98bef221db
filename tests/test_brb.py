"""BRB: the soft reset formula, re-clustering with the moment reset, the schedule."""

import keras
import numpy as np
import pytest

from deepstab.errors import DeepstabError
from deepstab.methods.brb import BRB, soft_reset, zero_optimizer_moments
from deepstab.methods.dec import DCN, DEC, IDEC
from deepstab.methods.decs import DECS

SMALL = dict(hidden=(16, 8), image_size=8)


def np_(t):
    return keras.ops.convert_to_numpy(t)


def snapshot(model):
    return {w.path: np.array(np_(w.value)) for w in model.weights}


@pytest.fixture
def x():
    return np.random.default_rng(0).random((96, 8, 8, 1), dtype=np.float32)


def _trained(cls, x, epochs=1, **kwargs):
    model = cls(3, (8, 8, 1), **SMALL, **kwargs)
    model.autoencoder.prepare(x)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.mark.parametrize("draws", ["kaiming", "layer"])
def test_soft_reset_formula(x, draws):
    model = _trained(DEC, x)
    encoder = model.encoder
    before = snapshot(encoder)
    assert soft_reset(encoder, alpha=1.0, seed=3, draws=draws)
    assert all(np.allclose(v, before[k], rtol=1e-6, atol=1e-7) for k, v in snapshot(encoder).items())
    soft_reset(encoder, alpha=0.0, seed=3, draws=draws)
    fresh = snapshot(encoder)
    encoder.set_weights([before[w.path] for w in encoder.weights])
    reset = soft_reset(encoder, alpha=0.8, seed=3, draws=draws)
    after = snapshot(encoder)
    dense = [layer for layer in encoder._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert reset == [layer.name for layer in dense[:-1]]  # every hidden Dense, not the embedding
    for layer in dense[:-1]:
        k, b = layer.kernel.path, layer.bias.path
        fan_in, fan_out = before[k].shape
        limit = np.sqrt(6.0 / fan_in) if draws == "kaiming" else np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(fresh[k]).max() <= limit and not np.allclose(fresh[k], before[k])
        np.testing.assert_allclose(after[k], 0.8 * before[k] + 0.2 * fresh[k], rtol=1e-5, atol=1e-6)
        if draws == "kaiming":  # U(±1/sqrt(fan_in)), as the BRB authors' code
            assert fresh[b].std() > 0 and np.abs(fresh[b]).max() <= 1 / np.sqrt(fan_in)
        else:  # the layer's own initializer: torch-style uniform bias
            assert np.abs(fresh[b]).max() <= 1 / np.sqrt(fan_in)
        np.testing.assert_allclose(after[b], 0.8 * before[b] + 0.2 * fresh[b], rtol=1e-5, atol=1e-6)
    embedding = encoder.get_layer("embedding")
    np.testing.assert_array_equal(after[embedding.kernel.path], before[embedding.kernel.path])
    untouched = [path for path in before if "standardise" in path or "batch_normalization" in path]
    assert untouched and all(np.array_equal(after[path], before[path]) for path in untouched)
    assert "embedding" in soft_reset(encoder, alpha=0.5, reset_embedding=True, seed=1)


def test_soft_reset_of_batch_norm_only_when_asked():
    model = DECS(3, (8, 8, 1), filters=(4, 4, 4, 4))
    bn = [w for w in model.encoder.weights if "batch_normalization" in w.path and w.path.endswith("gamma")]
    for w in bn:
        w.assign(np.full(w.shape, 3.0, dtype=np.float32))
    soft_reset(model.encoder, alpha=0.5, seed=0)
    assert all(np.allclose(np_(w.value), 3.0) for w in bn)
    soft_reset(model.encoder, alpha=0.5, reset_batchnorm=True, seed=0)
    assert all(np.allclose(np_(w.value), 2.0) for w in bn)  # 0.5 * 3 + 0.5 * 1


def test_reclustering_replaces_centroids_and_zeroes_their_moments(x):
    model = _trained(IDEC, x, epochs=2)
    optimizer = model.optimizer
    centroid_slots = [v for v in optimizer.variables if v.path.split("/")[-1].startswith("clustering_centroids")]
    assert len(centroid_slots) == 2 and all(np.abs(np_(v.value)).max() > 0 for v in centroid_slots)
    slot_ids = {id(v) for v in centroid_slots}
    other = [v for v in optimizer.variables if v.shape != () and id(v) not in slot_ids]
    other_before = [np.array(np_(v.value)) for v in other]
    before = np.array(np_(model.clustering.centroids))
    callback = BRB(x, interval=1, reset=False, subsample=50, seed=0)
    callback.set_model(model)
    callback.on_epoch_begin(1)
    assert callback.reset_epochs == [1] and model.target_stale
    assert not np.allclose(np_(model.clustering.centroids), before)
    assert all(np.abs(np_(v.value)).max() == 0 for v in centroid_slots)
    assert all(np.array_equal(np_(v.value), b) for v, b in zip(other, other_before))
    assert zero_optimizer_moments(optimizer, []) == 0


def test_callback_fires_exactly_every_interval(x):
    model = _trained(DCN, x)
    callback = BRB(x, interval=3, subsample=40, seed=0)
    counts_after_reset = []
    original = model.set_centroids
    model.set_centroids = lambda c: (original(c), counts_after_reset.append(np_(model.counts).copy()))
    history = model.fit(x, epochs=7, batch_size=32, verbose=0, callbacks=[callback]).history
    assert callback.reset_epochs == [3, 6] and callback.seconds > 0
    assert history["brb"] == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert all(np.allclose(c, 100.0) for c in counts_after_reset)  # DCN's counts restart


def test_a_resumed_run_draws_what_an_uninterrupted_run_draws(x):
    def run(first_epoch):
        model = _trained(DCN, x)
        callback = BRB(x, interval=2, subsample=40, seed=3)
        draws, original = [], callback._draws
        callback._draws = lambda: draws.append(original()) or draws[-1]
        applied = []
        set_centroids = model.set_centroids
        model.set_centroids = lambda c: (set_centroids(c), applied.append(True))
        callback.set_model(model)
        callback.on_train_begin()
        for epoch in range(first_epoch, 7):
            callback.on_epoch_begin(epoch)
        return callback.reset_epochs, draws, len(applied)

    whole, resumed = run(0), run(5)  # resumed: epochs 0-4 ran before an interruption
    assert whole[0] == resumed[0] == [2, 4, 6]
    assert whole[2] == 3 and resumed[2] == 1  # only epoch 6's intervention acts after the resume
    for (seed_a, index_a, kmeans_a), (seed_b, index_b, kmeans_b) in zip(whole[1], resumed[1], strict=True):
        assert seed_a == seed_b and kmeans_a == kmeans_b and np.array_equal(index_a, index_b)


def test_bad_brb_arguments(x):
    with pytest.raises(DeepstabError, match="interval"):
        BRB(x, interval=0)
    with pytest.raises(DeepstabError, match="neither"):
        BRB(x, reset=False, recluster=False)
    with pytest.raises(DeepstabError, match="alpha"):
        BRB(x, alpha=-0.1)


def test_dec_target_follows_the_reclustered_centroids(x):
    model = _trained(DEC, x, target="dataset")
    callback = BRB(x, interval=2, subsample=60, seed=0)
    seen, reclustered = [], []
    original, set_centroids = model.refresh_target, model.set_centroids
    model.refresh_target = lambda data: (original(data), seen.append(np.array(np_(model.clustering.centroids))))
    model.set_centroids = lambda c: (set_centroids(c), reclustered.append(np.array(c)))
    model.fit(x, epochs=3, batch_size=32, verbose=0, callbacks=[callback])
    assert callback.reset_epochs == [2] and len(seen) == 3 and len(reclustered) == 1
    # The target of epoch 2 was computed from the centroids of the re-clustering, not the old ones.
    np.testing.assert_allclose(seen[2], reclustered[0], rtol=1e-6)


def test_brb_works_with_decs(x):
    model = DECS(3, (8, 8, 1), filters=(4, 4, 4, 4))
    model.pretrain(x, epochs=1, batch_size=32, verbose=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    callback = BRB(x, interval=1, subsample=60, seed=0)
    history = model.fit(x, epochs=3, batch_size=32, verbose=0, callbacks=[callback]).history
    assert callback.reset_epochs == [1, 2] and history["brb"] == [0.0, 1.0, 1.0]
