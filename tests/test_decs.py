import keras
import numpy as np
import pytest
import torch
from keras import ops

from deepstab import DECS, ConvAutoencoder, load_model, save_model
from deepstab.callbacks import CollapseGuard
from deepstab.errors import DeepstabError

TINY = {"filters": (4, 8, 8, 8), "embedding_dim": 3}


def blobs(n=90, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.1, size=(n, 8, 8, 1)).astype(np.float32)
    y = np.arange(n) % 3
    for i, label in enumerate(y):
        r, c = [(0, 0), (4, 4), (0, 4)][label]
        x[i, r : r + 4, c : c + 4] += 0.8
    return np.clip(x, 0, 1), y


def test_autoencoder_reconstructs_every_input_size():
    for shape in [(8, 8, 1), (16, 16, 1), (28, 28, 1), (32, 32, 3), (20, 36, 1)]:
        ae = ConvAutoencoder(shape, **TINY)
        x = np.random.rand(2, *shape).astype(np.float32)
        assert tuple(ae(x).shape) == (2, *shape)
        assert tuple(ae.encoder(x).shape) == (2, 3)


def test_gradients_reach_encoder_and_centroids_only():
    x, _ = blobs()
    model = DECS(3, (8, 8, 1), **TINY)
    model.initialize_centroids(x, n_init=2, seed=0)
    q = model(torch.tensor(x[:32]), training=True)
    from deepstab.losses import decs_loss
    from deepstab.thresholds import otsu_threshold

    loss = decs_loss(q, otsu_threshold(q, 1000, (0.0, 1.0)))
    model.zero_grad()
    loss.backward()
    grads = {v.path: v.value.grad for v in model.trainable_weights}
    centroid = [g for p, g in grads.items() if "centroids" in p][0]
    assert centroid is not None and float(centroid.abs().sum()) > 0
    encoder = [g for p, g in grads.items() if p.startswith("encoder") or "/encoder/" in p or "conv2d" in p]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in encoder)
    decoder = [g for p, g in grads.items() if "conv2d_transpose" in p]
    assert decoder and all(g is None for g in decoder)


def test_fit_initialises_centroids_and_clusters_blobs():
    keras.utils.set_random_seed(0)
    x, y = blobs()
    model = DECS(3, (8, 8, 1), **TINY)
    model.pretrain(x, epochs=30, batch_size=16, verbose=0)
    before = ops.convert_to_numpy(model.clustering.centroids).copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, epochs=3, batch_size=30, verbose=0)
    assert not np.allclose(before, ops.convert_to_numpy(model.clustering.centroids))
    assert {"loss", "threshold", "clusters_alive", "min_cluster_share"} <= set(history.history)
    assert np.isfinite(history.history["loss"]).all()
    from deepstab.metrics import cluster_accuracy

    assert cluster_accuracy(y, model.predict_labels(x)) > 0.9
    q = model.predict(x, verbose=0)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)


def test_fit_with_a_generator_needs_initialised_centroids():
    model = DECS(3, (8, 8, 1), **TINY)
    model.compile(optimizer="adam")
    with pytest.raises(DeepstabError, match="initialize_centroids"):
        model.fit(iter([np.zeros((4, 8, 8, 1), np.float32)]), epochs=1)


@pytest.mark.parametrize("variant,recon", [("paper", 0.0), ("reference", 0.5)])
def test_save_and_load_give_identical_predictions(tmp_path, variant, recon):
    x, _ = blobs(30)
    model = DECS(3, (8, 8, 1), variant=variant, recon_weight=recon, alpha=0.5, **TINY)
    model.initialize_centroids(x, n_init=1)
    model.compile(optimizer="adam")
    model.fit(x, epochs=1, batch_size=10, verbose=0)
    path = save_model(model, tmp_path / "m.keras")
    loaded = load_model(path, expect=DECS)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.get_config()["variant"] == variant and loaded.clustering.alpha == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]  # no temporary left behind


def test_load_model_errors(tmp_path):
    with pytest.raises(DeepstabError, match="does not exist"):
        load_model(tmp_path / "absent.keras")
    (tmp_path / "junk.keras").write_bytes(b"garbage")
    with pytest.raises(DeepstabError, match="not a Keras model file"):
        load_model(tmp_path / "junk.keras")
    ae = save_model(ConvAutoencoder((8, 8, 1), **TINY), tmp_path / "ae.keras")
    with pytest.raises(DeepstabError, match="holds a ConvAutoencoder model, but a DECS model"):
        load_model(ae, expect=DECS)
    data = ae.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeepstabError, match="corrupted|not a Keras model"):
        load_model(tmp_path / "cut.keras")
    with pytest.raises(DeepstabError, match=r"end in \.keras"):
        save_model(ae, tmp_path / "model.h5")


def test_bad_constructor_arguments():
    with pytest.raises(DeepstabError, match="variant"):
        DECS(3, (8, 8, 1), variant="nope")
    with pytest.raises(DeepstabError, match="n_clusters"):
        DECS(1, (8, 8, 1))


def test_n_clusters_larger_than_samples():
    model = DECS(5, (8, 8, 1), **TINY)
    with pytest.raises(DeepstabError, match="larger than the number of samples"):
        model.initialize_centroids(np.zeros((3, 8, 8, 1), np.float32))


class _Fixed(keras.callbacks.Callback):
    """Fakes the balance logs: healthy for `healthy` epochs, then one cluster dies."""

    def __init__(self, healthy):
        super().__init__()
        self.healthy = healthy

    def on_epoch_end(self, epoch, logs=None):
        dead = epoch >= self.healthy
        logs["clusters_alive"] = 2.0 if dead else 3.0
        logs["min_cluster_share"] = 0.0 if dead else 0.3


def test_collapse_guard_restores_last_healthy_weights():
    x, _ = blobs(30)
    model = DECS(3, (8, 8, 1), **TINY)
    model.initialize_centroids(x, n_init=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    snapshots = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: snapshots.append(model.get_weights()))
    guard = CollapseGuard(3, action="restore")
    with pytest.warns(UserWarning, match="collapsing at epoch 3"):
        history = model.fit(x, epochs=6, batch_size=10, verbose=0, callbacks=[_Fixed(2), record, guard])
    assert history.history["collapsed"] == [0.0, 0.0, 1.0]  # stopped at the collapse
    assert guard.collapsed_epoch == 2 and guard.restored_epoch == 1
    for now, then in zip(model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(now, then)


def test_collapse_guard_flags_a_shrinking_cluster():
    guard = CollapseGuard(4, min_share=0.25)
    assert guard.is_collapsed({"clusters_alive": 4.0, "min_cluster_share": 0.05})  # 0.05 * 4 < 0.25
    assert not guard.is_collapsed({"clusters_alive": 4.0, "min_cluster_share": 0.2})
    assert guard.is_collapsed({"clusters_alive": 3.0, "min_cluster_share": 0.0})


def test_balance_metric_reports_a_collapsed_model():
    x, _ = blobs(30)
    model = DECS(3, (8, 8, 1), **TINY)
    model.initialize_centroids(x, n_init=1)
    far = np.array([[0, 0, 0], [1e3, 1e3, 1e3], [-1e3, -1e3, -1e3]], np.float32)
    z = model.embed(x)
    model.clustering.centroids.assign(far + z.mean(0))  # every sample nearest to centroid 0
    model.compile(optimizer="adam")
    logs = model.evaluate(x, verbose=0, return_dict=True)
    assert logs["clusters_alive"] == 1.0 and logs["min_cluster_share"] == 0.0
    assert CollapseGuard(3).is_collapsed(logs)
