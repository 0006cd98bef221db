"""Mixed precision (``--precision bf16|fp16``, Keras's ``mixed_bfloat16`` / ``mixed_float16``
policies): every method trains with its networks in the reduced type, the exact parts stay
float32, and a tiny run's loss stays within a stated tolerance of the float32 run.

The tolerance, per epoch's mean loss: ``|L_bf16 - L_32| <= 0.03 + 0.05 |L_32|``. bfloat16 keeps
8 significant bits (a relative rounding of 0.4% per operation); three epochs of a tiny run
drift further, DEC's small KL loss the most (0.164 against 0.139 after one epoch)."""

import keras
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_reproducibility import assert_same_run, run

import cli
from deepstab.io import load_model
from deepstab.nn.layers import ClusteringLayer, TorchConv2D
from deepstab.nn.optimizers import SGD
from deepstab.nn.steps import apply_gradients
from deepstab.precision import PRECISIONS, precision_of, precision_scope
from deepstab.runs.decs import DECSRun

RTOL, ATOL = 0.05, 0.03

METHODS = [("decs", "decs", {}), ("dec", "dec", {}), ("idec", "idec", {}), ("dcn", "dcn", {})]
METHODS += [("idec-brb", "idec", {"brb": True}), ("lfss", "lfss", {})]


def network_layers(model) -> list:
    """The convolution and dense layers of a model's networks."""
    kinds = (TorchConv2D, keras.layers.Dense, keras.layers.Conv2DTranspose)
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, kinds)]


@pytest.mark.parametrize("name,method,settings", METHODS, ids=[m[0] for m in METHODS])
def test_every_method_trains_in_bf16_near_its_float32_run(tmp_path, name, method, settings):
    exact = run(method, tmp_path / "32", labelled=False, watched=False, **settings)
    reduced = run(method, tmp_path / "bf16", labelled=False, watched=False, precision="bf16", **settings)
    assert keras.config.dtype_policy().name == "float32"  # the run put the global policy back
    assert precision_of(reduced.model) == "bf16" and precision_of(exact.model) == "32"
    layers = network_layers(reduced.model)
    assert layers and {layer.compute_dtype for layer in layers} == {"bfloat16"}
    assert {w.dtype for w in reduced.model.weights if w.dtype.startswith("float")} == {"float32"}
    clustering = [layer for layer in reduced.model._flatten_layers() if isinstance(layer, ClusteringLayer)]
    assert all(layer.compute_dtype == "float32" for layer in clustering)  # the Student-t assignments
    x = np.random.default_rng(0).random((4, *reduced.model.image_shape), dtype=np.float32)
    assert reduced.model.embed(x).dtype == np.float32
    assert np.all((reduced.labels >= 0) & (reduced.labels < reduced.model.n_clusters))
    loss_32, loss_bf16 = np.array(exact.history["loss"]), np.array(reduced.history["loss"])
    assert np.all(np.isfinite(loss_bf16)) and not np.array_equal(loss_32, loss_bf16)  # it did round
    np.testing.assert_allclose(loss_bf16, loss_32, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("method", ["decs", "lfss"])
def test_a_bf16_run_is_a_function_of_its_seed(tmp_path, method):
    """Mixed precision changes the arithmetic, not the draws: labels and watchers still change nothing."""
    plain = run(method, tmp_path / "plain", labelled=False, watched=False, precision="bf16")
    watched = run(method, tmp_path / "watched", labelled=True, watched=True, precision="bf16")
    assert_same_run(plain, watched)


def test_fp16_scales_the_loss_and_trains_near_float32(tmp_path):
    exact = run("dec", tmp_path / "32", labelled=False, watched=False)
    half = run("dec", tmp_path / "fp16", labelled=False, watched=False, precision="fp16")
    assert isinstance(half.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert {layer.compute_dtype for layer in network_layers(half.model)} == {"float16"}
    np.testing.assert_allclose(half.history["loss"], exact.history["loss"], rtol=RTOL, atol=ATOL)


def test_gradients_under_loss_scaling_reach_the_transform_and_the_update_unscaled():
    """With a LossScaleOptimizer the backward pass sees the loss times the scale; a gradient
    transform (LFSS's weight decay, the DEC family's clipping) must see the true gradients, and
    the update must be the plain optimizer's."""

    def model_and_loss(optimizer):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=optimizer)
        x = torch.tensor(np.arange(12, dtype=np.float32).reshape(4, 3))
        return model, torch.mean(model(x) ** 2)

    plain, loss = model_and_loss(SGD(0.1))
    seen = {}
    apply_gradients(plain, loss, plain.trainable_weights, lambda g, v: seen.setdefault("plain", [t.clone() for t in g]))
    scaled, loss = model_and_loss(keras.optimizers.LossScaleOptimizer(SGD(0.1), initial_scale=1024.0))
    apply_gradients(
        scaled, loss, scaled.trainable_weights, lambda g, v: seen.setdefault("scaled", [t.clone() for t in g])
    )
    for g_plain, g_scaled in zip(seen["plain"], seen["scaled"]):
        torch.testing.assert_close(g_scaled, g_plain)
    for w_plain, w_scaled in zip(plain.get_weights(), scaled.get_weights()):
        np.testing.assert_allclose(w_scaled, w_plain, rtol=1e-6)


def test_a_bf16_model_loads_in_bf16_and_predicts_as_saved(tmp_path):
    result = run("decs", tmp_path, labelled=False, watched=False, precision="bf16")
    loaded = load_model(str(tmp_path / "m.keras"))
    assert precision_of(loaded) == "bf16"
    assert {layer.compute_dtype for layer in network_layers(loaded)} == {"bfloat16"}
    x = np.random.default_rng(1).random((16, *loaded.image_shape), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict_labels(x), result.model.predict_labels(x))


def test_precision_is_a_training_setting_recorded_only_away_from_its_default():
    assert "precision" not in DECSRun().training_settings()  # checkpoints of earlier versions match
    assert DECSRun(precision="bf16").training_settings()["precision"] == "bf16"
    with precision_scope("fp16"):
        assert keras.config.dtype_policy().name == PRECISIONS["fp16"]
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("command", ["decs", "dec", "idec", "dcn", "lfss", "stability"])
def test_every_training_command_offers_precision(command):
    result = CliRunner().invoke(cli.cli, [command, "--help"])
    assert result.exit_code == 0 and "--precision [32|bf16|fp16]" in result.output
    refused = CliRunner().invoke(cli.cli, [command, "--precision", "fp8"])
    assert refused.exit_code == 2 and "'fp8' is not one of" in refused.output
