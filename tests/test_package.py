"""The package as a user meets it: backend selection and the examples in its docstrings."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import deepstab

PUBLIC = {
    "deepstab": [
        "DECS",
        "DEC",
        "IDEC",
        "DCN",
        "BRB",
        "LFSSModel",
        "SampleStabilityTracker",
        "ConvAutoencoder",
        "load",
        "evaluate",
    ],
    "deepstab.datasets": ["load", "describe", "REGISTRY"],
    "deepstab.brb": ["BRB", "soft_reset"],
    "deepstab.dec": ["DEC", "IDEC", "DCN"],
    "deepstab.decs": ["DECS"],
    "deepstab.lfss": ["LFSSModel"],
}
# Each layer may import only from the layers after it (and from its own package).
LAYERS = [
    ("__main__",),
    ("cli",),
    ("runs",),
    ("methods",),
    ("analysis",),
    ("nn", "datasets"),
    ("checkpoint",),
    ("io", "metrics", "checks", "distributed", "allocator", "seeding"),
    ("precision",),
    ("errors",),
]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    imported = importlib.import_module(module)
    assert all(hasattr(imported, name) for name in PUBLIC[module])


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepstab"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("deepstab"))
    return names


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def test_imports_are_layered_without_cycles():
    package = Path(deepstab.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == package:
            continue  # the package root re-exports the public API
        module = "deepstab." + ".".join(path.relative_to(package).with_suffix("").parts)
        own = _layer(module)
        assert own is not None, f"{module} belongs to no layer"
        for imported in _imports_of(path):
            layer = _layer(imported)
            if layer is None or imported.split(".")[1] == module.split(".")[1]:
                continue
            assert layer > own, f"{module} (layer {own}) imports {imported} (layer {layer})"


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

    from deepstab.nn.constants import like

    x = torch.ones(3, requires_grad=True)
    with torch.inference_mode():
        made_in_inference = like(2.5, x)
    assert like(2.5, x) is made_in_inference and like(2.5, x.double()).dtype == torch.float64
    (x * made_in_inference).sum().backward()  # an inference tensor could not be saved for backward
    assert x.grad.tolist() == [2.5, 2.5, 2.5]
