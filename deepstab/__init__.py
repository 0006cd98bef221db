"""deepstab: deep clustering of images driven by sample stability (Keras 3, torch backend).

Importing deepstab selects the torch backend for Keras (``KERAS_BACKEND=torch``) when no
backend was chosen; it refuses to run beside a Keras that was already imported with another
backend.

Layout (each layer imports only from the layers below it)::

    runs/                 one module per command: settings, the run, its summary
    methods/  analysis/   DECS, DEC/IDEC/DCN, BRB, LFSS; stability measures, tracker, report
    nn/       datasets/   layers, networks, autoencoders, augmentations; data sources and stores
    io  checkpoint  metrics  checks  errors
"""

import os
import sys

__version__ = "0.2.0"

if "keras" in sys.modules:
    _backend = sys.modules["keras"].backend.backend()
    if _backend != "torch":
        raise ImportError(
            f"deepstab needs Keras on the torch backend, but keras was already imported "
            f"with the {_backend!r} backend. Import deepstab before keras, or set the "
            f"environment variable KERAS_BACKEND=torch before starting Python."
        )
elif os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
    raise ImportError(
        f"deepstab needs Keras on the torch backend, but KERAS_BACKEND is set to "
        f"{os.environ['KERAS_BACKEND']!r}. Unset it or set KERAS_BACKEND=torch."
    )

from deepstab import datasets
from deepstab.analysis.progress import LabelMetrics
from deepstab.analysis.tracker import SampleStabilityTracker
from deepstab.errors import DeepstabError
from deepstab.io import load_model, save_model
from deepstab.methods import brb, dec, decs, lfss
from deepstab.methods.brb import BRB
from deepstab.methods.dec import DCN, DEC, IDEC
from deepstab.methods.decs import DECS
from deepstab.methods.lfss import LFSSModel
from deepstab.metrics import cluster_accuracy, evaluate
from deepstab.nn.autoencoders import ConvAutoencoder, DenseAutoencoder
from deepstab.nn.layers import ClusteringLayer

load = datasets.load

# The method modules are also importable by their short names (``from deepstab.brb import BRB``).
for _module in (brb, dec, decs, lfss):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module

__all__ = [
    "BRB",
    "DCN",
    "DEC",
    "DECS",
    "IDEC",
    "ClusteringLayer",
    "ConvAutoencoder",
    "DeepstabError",
    "DenseAutoencoder",
    "LabelMetrics",
    "LFSSModel",
    "SampleStabilityTracker",
    "cluster_accuracy",
    "datasets",
    "evaluate",
    "load",
    "load_model",
    "save_model",
]
