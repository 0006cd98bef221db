"""Saving and loading models: atomic writes and clear errors."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

from deepstab.errors import DeepstabError
from deepstab.files import atomic_path


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save ``model`` to ``path`` (``.keras``) through a temporary file and a rename,
    so an interrupted save never leaves a half-written model behind."""
    path = Path(path)
    if path.suffix != ".keras":
        raise DeepstabError(f"Model files must end in .keras, got {path}. Choose a name like models/decs-usps.keras.")
    with atomic_path(path) as partial:
        model.save(partial)
    return path


def load_model(path: str | os.PathLike, expect: type | tuple[type, ...] | None = None) -> keras.Model:
    """Load a model saved by deepstab; ``expect`` names the class(es) it must be."""
    path = Path(path)
    if not path.is_file():
        raise DeepstabError(f"Model file {path} does not exist. Train one first (e.g. `python cli.py decs`) or fix the path.")
    if not zipfile.is_zipfile(path):
        raise DeepstabError(
            f"{path} is not a Keras model file (.keras files are zip archives); it is corrupted or "
            f"of another format. Retrain the model or restore the file from a backup."
        )
    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # Keras raises many types for damaged or foreign archives
        raise DeepstabError(
            f"Cannot load the model in {path} ({type(exc).__name__}: {str(exc)[:300]}). The file is "
            f"corrupted or was not saved by deepstab; retrain the model or restore the file."
        ) from exc
    if expect is not None and not isinstance(model, expect):
        wanted = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise DeepstabError(f"{path} holds a {type(model).__name__} model, but a {wanted} model is needed here.")
    return model
