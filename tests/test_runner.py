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
    # One rule for every dataset: 30,000 steps at batch 32, at most 100 epochs.
    default = DECSRun()
    assert (default.pretrain_steps, default.pretrain_epochs, default.pretrain_batch_size) == (30000, 100, 32)
    assert (default.cluster_epochs, default.iterations) == (80, None)
    assert DECSRun(dataset="mnist-test").pretrain_steps == 30000
    # 30,000 steps of 32 images: 96 epochs of MNIST-test's 10,000 images; the cap binds on USPS and digits
    assert default.pretraining_epochs(10000) == 96 and default.pretraining_epochs(9298) == 100
    assert default.pretraining_epochs(1797) == 100
    epochs = DECSRun(pretrain_epochs=7)  # an explicit epoch count drops the preset's steps
    assert epochs.pretrain_steps is None and epochs.pretraining_epochs(9298) == 7
    steps = DECSRun(dataset="usps", pretrain_steps=100)  # and explicit steps the preset's epochs
    assert steps.pretrain_epochs is None and steps.pretraining_epochs(1000) == 4  # 32 steps an epoch at batch 32
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


def test_cosine_pretraining_schedule_decays_to_zero_over_the_pretraining_steps(tmp_path):
    import numpy as np
    from keras import ops

    run = DECSRun(dataset="usps", pretrain_steps=1000, lr=2e-3, pretrain_schedule="cosine", models_dir=str(tmp_path))
    optimizer = run.pretrain_optimizer(3200)  # 100 steps an epoch at batch 32: 10 epochs, 1,000 steps
    rate = optimizer._learning_rate
    values = [float(ops.convert_to_numpy(rate(step))) for step in (0, 500, 1000, 1200)]
    assert np.allclose(values, [2e-3, 1e-3, 0.0, 0.0], atol=1e-9)
    constant = DECSRun(dataset="usps", pretrain_steps=1000, lr=2e-3)  # the default preset's constant rate
    assert float(ops.convert_to_numpy(constant.pretrain_optimizer(3200).learning_rate)) == pytest.approx(2e-3)
    assert constant.pretrain_schedule == DECSRun(preset="paper").pretrain_schedule == "constant"
    # the cached autoencoders of the two schedules are kept apart
    x = np.zeros((3200, 8, 8, 1), "float32")
    model = DECS(3, (8, 8, 1), filters=(4, 4, 4, 4))
    constant.models_dir = run.models_dir
    assert run.autoencoder_path(x, model) != constant.autoencoder_path(x, model)
