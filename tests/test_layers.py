import keras
import numpy as np
import pytest
import torch
from keras import ops

from deepstab.errors import DeepstabError
from deepstab.nn.layers import ClusteringLayer, FusedBatchNormalization


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_student_t_matches_equation_5(alpha):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4)).astype(np.float32)
    m = rng.normal(size=(3, 4)).astype(np.float32)
    layer = ClusteringLayer(3, alpha=alpha)
    layer.build((None, 4))
    layer.centroids.assign(m)
    kernel = (1 + ((z[:, None] - m[None]) ** 2).sum(-1) / alpha) ** (-(alpha + 1) / 2)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(z)), kernel / kernel.sum(1, keepdims=True), rtol=1e-5)


def test_clustering_layer_rejects_bad_arguments():
    with pytest.raises(DeepstabError, match="alpha"):
        ClusteringLayer(3, alpha=0)
    with pytest.raises(DeepstabError, match="alpha"):
        ClusteringLayer(3, alpha=float("inf"))
    with pytest.raises(DeepstabError, match="n_clusters"):
        ClusteringLayer(0)


@pytest.mark.parametrize("training", [False, True])
def test_fused_batch_norm_matches_keras(training):
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(16, 5, 4, 4)).astype(np.float32)
    ours, theirs = FusedBatchNormalization(), keras.layers.BatchNormalization(axis=1)
    ours.build(x.shape), theirs.build(x.shape)
    weights = [rng.normal(size=5).astype(np.float32) for _ in range(2)] + [
        rng.normal(size=5).astype(np.float32),
        np.abs(rng.normal(size=5)).astype(np.float32) + 0.5,
    ]
    ours.set_weights(weights), theirs.set_weights(weights)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x, training=training)), ops.convert_to_numpy(theirs(x, training=training)), atol=1e-4
    )
    # moving mean moves the same way; the moving variance differs only by n / (n - 1)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours.moving_mean), ops.convert_to_numpy(theirs.moving_mean), atol=1e-5
    )
    if training:
        assert not np.allclose(ops.convert_to_numpy(ours.moving_mean), weights[2])


def test_frozen_batch_norm_can_use_batch_statistics_without_updating_them():
    x = np.random.default_rng(0).normal(3.0, 2.0, (64, 4)).astype("float32")
    layer = FusedBatchNormalization()
    layer.build(x.shape)
    layer.trainable = False
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x, training=True)), x / np.sqrt(1 + 1e-3), rtol=1e-5
    )  # inference
    layer.frozen_mode = "batch"  # batch statistics, the moving ones untouched
    out = ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(0), 1.0, rtol=1e-3)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.moving_mean), np.zeros(4))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.moving_variance), np.ones(4))
    layer.frozen_mode = "track"  # batch statistics, and the moving ones updated (PyTorch's train mode)
    tracked = ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(tracked, out, rtol=1e-5, atol=1e-6)
    expected = (1 - layer.momentum) * ops.convert_to_numpy(x).mean(0)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), expected, rtol=1e-5, atol=1e-6)


def _residual_model(width: int, seed: int) -> keras.Model:
    """A functional model with a branch, a merge, batch normalisation and a nested model."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(width, kernel_initializer=keras.initializers.GlorotUniform(seed))(inputs)
    branch = FusedBatchNormalization()(keras.layers.Dense(width)(h))
    h = keras.layers.ReLU()(keras.layers.Add()([h, branch]))
    head_in = keras.Input((width,))
    head = keras.Model(head_in, keras.layers.Dense(3 + width)(head_in))
    return keras.Model(inputs, head(h))


@pytest.mark.parametrize("training", [False, True])
def test_graph_call_computes_what_keras_call_computes(training):
    from deepstab.nn.steps import _plan, graph_call

    x = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    keras_side, fast_side = _residual_model(4, 0), _residual_model(4, 0)
    fast_side.set_weights(keras_side.get_weights())
    assert _plan(fast_side) is not None, "the fast path must cover branches, merges and nested models"
    expected = ops.convert_to_numpy(keras_side(x, training=training))
    got = ops.convert_to_numpy(graph_call(fast_side, x, training=training))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    for a, b in zip(keras_side.weights, fast_side.weights):  # moving statistics updated alike
        np.testing.assert_allclose(ops.convert_to_numpy(b), ops.convert_to_numpy(a), rtol=1e-6)
    moved = not np.allclose(ops.convert_to_numpy(fast_side.layers[3].moving_mean), 0.0)
    assert moved == training
    assert _plan(keras.Sequential([keras.layers.Dense(2)])) is None  # not functional: called as usual


@pytest.mark.parametrize("training", [False, True])
def test_graph_call_computes_what_keras_call_computes_in_mixed_precision(training):
    """Under mixed bfloat16 each layer's inputs are cast and its weights read as Keras's
    ``__call__`` does, so the fast path gives the same tensors bit for bit; a float32 layer in
    the graph (the embedding's ``Standardize``, say) gets float32 inputs."""
    from deepstab.nn.layers import Standardize
    from deepstab.nn.steps import _plan, graph_call
    from deepstab.precision import precision_scope

    x = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    with precision_scope("bf16"):
        keras_side, fast_side = _residual_model(4, 0), _residual_model(4, 0)
        inputs = keras.Input((6,))
        exact_inside = keras.Model(inputs, keras.layers.Dense(2)(Standardize((6,))(keras.layers.Dense(6)(inputs))))
    fast_side.set_weights(keras_side.get_weights())
    assert _plan(fast_side) is not None and _plan(exact_inside) is not None
    expected = ops.convert_to_numpy(keras_side(x, training=training))
    got = graph_call(fast_side, x, training=training)
    assert got.dtype == torch.bfloat16
    np.testing.assert_array_equal(ops.convert_to_numpy(got), expected)
    for a, b in zip(keras_side.weights, fast_side.weights):
        assert b.dtype == "float32"
        np.testing.assert_array_equal(ops.convert_to_numpy(b), ops.convert_to_numpy(a))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(graph_call(exact_inside, x)), ops.convert_to_numpy(exact_inside(x))
    )


def test_graph_call_plans_belong_to_their_models():
    """Models come and go (one per run, per test); each one's plan is its own and goes with it,
    so a new model at a collected one's address can never borrow its plan."""
    import gc
    import weakref

    from deepstab.nn.steps import graph_call

    x = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    for i in range(8):  # every model differs in shape, so a borrowed plan cannot pass
        model = _residual_model(2 + i, i)
        got = ops.convert_to_numpy(graph_call(model, x))
        np.testing.assert_allclose(got, ops.convert_to_numpy(model(x)), rtol=1e-6)
        layer = weakref.ref(model.layers[1])
        del model
        gc.collect()
        assert layer() is None, "graph_call keeps a collected model's layers alive"
