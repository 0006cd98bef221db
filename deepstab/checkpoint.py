"""Checkpoints that let a killed training run go on where it stopped.

A checkpoint is a folder holding, for the epoch it was written after, the model's weights with
its optimizer state (``weights-<epoch>.weights.h5``), the state of its random generators and the
per-sample or Python-side state a method keeps outside its weights (``state-<epoch>.npz``, the
latter from ``model.training_state()``), and ``checkpoint.json``: the number of finished epochs,
the names of those two files and the settings of the run that wrote it. Each file is written
under a temporary name and renamed; ``checkpoint.json`` is written last, as the commit, and only
then are the files of earlier epochs deleted. So a save that fails or is killed at any moment
leaves the last committed checkpoint whole (never the weights of one epoch beside the state of
another), files without a commit count as no checkpoint, and a checkpoint whose files cannot be
read is refused with an error that names the folder.

Invariants:

- :meth:`Checkpoint.restore` loads a checkpoint only into a run with the same settings (the
  ``settings`` given to the constructor); a difference is named in the error.
- Nothing is deleted until the caller says the run's results are saved (:meth:`remove`).
- A resumed run continues from the saved weights, optimizer state, random-generator states and
  method state, and every other draw of training is a function of the seed and the epoch
  (:mod:`deepstab.seeding`), so it ends bit-identical to the uninterrupted run on the same
  machine and thread count (tested for every method, LFSS on one and on two processes).

Example:

>>> import numpy as np, keras, tempfile
>>> from deepstab.checkpoint import Checkpoint
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
>>> model.compile(optimizer="adam", loss="mse")
>>> folder = tempfile.mkdtemp()
>>> x, y = np.ones((8, 3)), np.ones((8, 1))
>>> _ = model.fit(x, y, epochs=2, verbose=0, callbacks=[Checkpoint(folder, {"lr": 1e-3})])
>>> Checkpoint(folder, {"lr": 1e-3}).restore(model)  # the next epoch to run
2
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np

from deepstab.errors import DeepstabError
from deepstab.io import atomic_path, save_weights
from deepstab.seeding import generator_states

METADATA = "checkpoint.json"
# The files of a checkpoint written before they were named by epoch (still read).
WEIGHTS, STATE = "weights.weights.h5", "state.npz"


class Checkpoint(keras.callbacks.Callback):
    """Save the training state into ``folder`` after every ``every``-th epoch (and after the
    last one); :meth:`restore` loads it into a model before ``fit`` resumes at the epoch it returns.

    Args:
        folder: where the checkpoint lives (created when first written).
        settings: the run's settings (JSON-ready); a checkpoint of other settings is refused.
        every: save every this many epochs.
        min_seconds: and not sooner than this many seconds after the last save (short epochs
            would otherwise spend a good share of their time writing checkpoints); the last
            epoch is always saved.
    """

    def __init__(
        self, folder: str | os.PathLike, settings: dict | None = None, every: int = 1, min_seconds: float = 0.0
    ):
        super().__init__()
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings or {}, default=str))
        self.every = max(int(every), 1)
        self.min_seconds = float(min_seconds)
        self._last_save = time.monotonic()

    @property
    def exists(self) -> bool:
        """Whether a checkpoint was committed (its metadata written, readable or not) in the folder."""
        return (self.folder / METADATA).exists()

    def on_train_begin(self, logs=None):
        self._last_save = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        due = (epoch + 1) % self.every == 0 and time.monotonic() - self._last_save >= self.min_seconds
        if due or last:
            self.save(self.model, epoch + 1)
            self._last_save = time.monotonic()

    def save(self, model: keras.Model, epochs_done: int) -> None:
        """Write the state after ``epochs_done`` epochs into files of that epoch, then the
        metadata that names them, as the commit; then delete the files of other epochs."""
        self.folder.mkdir(parents=True, exist_ok=True)
        files = {"weights": f"weights-{epochs_done:06d}.weights.h5", "state": f"state-{epochs_done:06d}.npz"}
        save_weights(model, self.folder / files["weights"])
        state = model.training_state() if hasattr(model, "training_state") else {}
        state |= _generator_states(model)
        with atomic_path(self.folder / files["state"]) as partial:
            np.savez(partial, **state)
        metadata = {"epoch": int(epochs_done), "settings": self.settings, **files}
        with atomic_path(self.folder / METADATA) as partial:
            partial.write_text(json.dumps(metadata, indent=1))
        for path in self.folder.iterdir():
            if path.name not in (METADATA, *files.values()) and not path.name.startswith("."):
                path.unlink(missing_ok=True)

    def _metadata(self) -> dict:
        try:
            metadata = json.loads((self.folder / METADATA).read_text())
            return {
                "epoch": int(metadata["epoch"]),
                "settings": dict(metadata["settings"]),
                "weights": str(metadata.get("weights", WEIGHTS)),
                "state": str(metadata.get("state", STATE)),
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._damaged(f"{METADATA} is missing or unreadable ({type(exc).__name__})") from exc

    def _damaged(self, what: str) -> DeepstabError:
        return DeepstabError(
            f"The checkpoint in {self.folder} cannot be used: {what}. It was probably left by a run killed "
            f"while writing it. Delete the folder (or pass --fresh) to start the run over."
        )

    def difference(self) -> str | None:
        """The first setting in which the saved checkpoint differs from this run, as text."""
        saved = self._metadata()["settings"]
        for key in sorted(set(saved) | set(self.settings)):
            if saved.get(key) != self.settings.get(key):
                return f"{key} is {saved.get(key)!r} there and {self.settings.get(key)!r} here"
        return None

    def check(self) -> None:
        """Refuse, before any work, a checkpoint that cannot be read or belongs to other settings."""
        if self.exists:
            self._metadata()
            changed = self.difference()
            if changed:
                raise self._other_settings(changed)

    def _other_settings(self, changed: str) -> DeepstabError:
        return DeepstabError(
            f"The checkpoint in {self.folder} belongs to a run with other settings ({changed}). Run the "
            f"original command to resume it, or pass --fresh (or delete the folder) to start this one over."
        )

    def restore(self, model: keras.Model) -> int:
        """Load the checkpoint into ``model`` (built and compiled) and return the number of
        finished epochs, the ``initial_epoch`` for ``fit``; 0 when there is no checkpoint."""
        if not self.exists:
            return 0
        metadata = self._metadata()
        changed = self.difference()
        if changed:
            raise self._other_settings(changed)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Keras warns about optimizer slots it fills itself
                model.load_weights(self.folder / metadata["weights"])
            with np.load(self.folder / metadata["state"], allow_pickle=False) as archive:
                state = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise self._damaged(f"its files are unreadable ({type(exc).__name__}: {str(exc)[:120]})") from exc
        _set_generator_states(model, state)
        if hasattr(model, "restore_training_state"):
            model.restore_training_state({k: v for k, v in state.items() if not k.startswith("rng_")})
        return metadata["epoch"]

    def remove(self) -> None:
        """Delete the checkpoint (once the run's results are saved)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _generator_states(model: keras.Model) -> dict[str, np.ndarray]:
    """The states of ``model``'s seed generators, as ``rng_<i>`` arrays."""
    return {f"rng_{i}": np.asarray(v.value.cpu()) for i, v in enumerate(generator_states(model))}


def _set_generator_states(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Put back the seed-generator states of :func:`_generator_states` (those ``state`` has)."""
    for i, variable in enumerate(generator_states(model)):
        if f"rng_{i}" in state:
            variable.assign(state[f"rng_{i}"])
