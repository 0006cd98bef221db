"""The end-to-end DECS run: resuming after an interruption, presets, summaries."""

import keras
import pytest

from deepstab.errors import DeepstabError
from deepstab.methods.decs import DECS
from deepstab.runs.decs import DECSRun, run_decs, summary


class _Count(keras.callbacks.Callback):
    def __init__(self, log, stop_at=None):
        super().__init__()
        self.log, self.stop_at = log, stop_at

    def on_epoch_end(self, epoch, logs=None):
        self.log.append(epoch)
        if epoch == self.stop_at:
            raise KeyboardInterrupt


def test_interrupted_pretraining_resumes_from_the_backup(tmp_path, blobs_npz, monkeypatch):
    original = DECS.pretrain
    epochs_seen: list[list[int]] = []

    def pretrain(self, x, callbacks=(), **kwargs):
        epochs_seen.append([])
        stop_at = 1 if len(epochs_seen) == 1 else None
        return original(self, x, callbacks=list(callbacks) + [_Count(epochs_seen[-1], stop_at)], **kwargs)

    monkeypatch.setattr(DECS, "pretrain", pretrain)
    run = DECSRun(
        dataset=f"npz:{blobs_npz}",
        pretrain_epochs=4,
        pretrain_batch_size=32,
        iterations=3,
        batch_size=40,
        models_dir=str(tmp_path),
        verbose=0,
    )
    with pytest.raises(KeyboardInterrupt):
        run_decs(run)
    assert not list(tmp_path.glob("decs-ae-*.keras"))
    result = run_decs(run)
    assert epochs_seen == [[0, 1], [2, 3]]  # the second run picked up after epoch 2
    assert len(list(tmp_path.glob("decs-ae-*.keras"))) == 1 and result.model_path.exists()
    assert not any(p.name.startswith(".checkpoint") for p in tmp_path.iterdir())  # cleaned up after success
    assert "Final model: ACC" in summary(run, result)


def test_presets_and_explicit_overrides():
    digits = DECSRun()
    assert (digits.pretrain_epochs, digits.pretrain_batch_size, digits.cluster_epochs) == (30, 32, 60)
    usps = DECSRun(dataset="usps")
    assert (usps.pretrain_epochs, usps.pretrain_batch_size, usps.iterations, usps.cluster_epochs) == (
        500,
        256,
        3000,
        None,
    )
    assert usps.pretrain_steps is None and usps.pretraining_epochs(9298) == 500
    fast = DECSRun(dataset="usps", preset="fast")
    assert (fast.pretrain_steps, fast.pretrain_epochs, fast.pretrain_batch_size) == (15000, 200, 64)
    assert (fast.cluster_epochs, fast.iterations) == (80, None)
    # 15,000 steps of 64 images: 103 epochs of USPS's 9,298 images; the 200-epoch cap binds on digits
    assert fast.pretraining_epochs(9298) == 103 and fast.pretraining_epochs(1797) == 200
    epochs = DECSRun(preset="fast", pretrain_epochs=7)  # an explicit epoch count drops the preset's steps
    assert epochs.pretrain_steps is None and epochs.pretraining_epochs(9298) == 7
    steps = DECSRun(dataset="usps", pretrain_steps=100)  # and explicit steps the preset's epochs
    assert steps.pretrain_epochs is None and steps.pretraining_epochs(1000) == 25  # 4 steps an epoch at 256
    assert DECSRun(pretrain_steps=1000, pretrain_epochs=3).pretraining_epochs(1000) == 3  # the fewer
    assert DECSRun(dataset="usps", preset="quick").pretrain_epochs == 10
    paper = DECSRun(preset="paper")
    assert (paper.pretrain_epochs, paper.pretrain_batch_size, paper.iterations) == (500, 256, 10000)
    mixed = DECSRun(iterations=100, pretrain_epochs=3)
    assert mixed.iterations == 100 and mixed.cluster_epochs is None and mixed.pretrain_epochs == 3
    with pytest.raises(DeepstabError, match="preset must be one of"):
        DECSRun(preset="fastest")
    with pytest.raises(DeepstabError, match="batch_size must be a positive"):
        DECSRun(batch_size=0)
