"""deepstab: deep clustering of images driven by sample stability (Keras 3, torch backend).

Importing deepstab selects the torch backend for Keras (``KERAS_BACKEND=torch``)
when no backend was chosen; it refuses to run beside a Keras that was already
imported with another backend.
"""

import os
import sys

from deepstab.errors import DeepstabError

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

from deepstab.brb import BRB  # noqa: E402
from deepstab.datasets import load  # noqa: E402
from deepstab.dec import DCN, DEC, IDEC  # noqa: E402
from deepstab.decs import DECS, ConvAutoencoder  # noqa: E402
from deepstab.layers import ClusteringLayer  # noqa: E402
from deepstab.lfss import LFSSModel  # noqa: E402
from deepstab.metrics import cluster_accuracy, evaluate  # noqa: E402
from deepstab.saving import load_model, save_model  # noqa: E402
from deepstab.stability import SampleStabilityTracker  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BRB",
    "DCN",
    "DEC",
    "DECS",
    "IDEC",
    "ClusteringLayer",
    "ConvAutoencoder",
    "DeepstabError",
    "LFSSModel",
    "SampleStabilityTracker",
    "cluster_accuracy",
    "evaluate",
    "load",
    "load_model",
    "save_model",
]
