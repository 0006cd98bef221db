"""The package as a user meets it: backend selection and the examples in its docstrings."""

import doctest
import importlib
import os
import subprocess
import sys

import pytest

MODULES = ["deepstab.constants", "deepstab.datasets", "deepstab.metrics", "deepstab.thresholds", "deepstab.layers", "deepstab.augment", "deepstab.decs", "deepstab.stability", "deepstab.dec", "deepstab.networks", "deepstab.lfss"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    failures, tried = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def _import(env_backend):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if env_backend:
        env["KERAS_BACKEND"] = env_backend
    code = "import deepstab, keras; print(keras.backend.backend())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_import_selects_the_torch_backend():
    result = _import(None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch"


def test_import_refuses_another_backend():
    result = _import("jax")
    assert result.returncode != 0
    assert "deepstab needs Keras on the torch backend" in result.stderr and "KERAS_BACKEND=torch" in result.stderr


def test_constants_are_made_once_per_dtype_and_serve_autograd():
    import torch

    from deepstab.constants import like

    x = torch.ones(3, requires_grad=True)
    with torch.inference_mode():
        made_in_inference = like(2.5, x)
    assert like(2.5, x) is made_in_inference and like(2.5, x.double()).dtype == torch.float64
    (x * made_in_inference).sum().backward()  # an inference tensor could not be saved for backward
    assert x.grad.tolist() == [2.5, 2.5, 2.5]
