"""A run is a function of its images, settings and seed: labels, label checks (``--eval-every``),
the stability tracker and interruptions never change what it learns. Every comparison here is
bit for bit: the saved labels, the confidences and every weight."""

import contextlib
from pathlib import Path

import keras
import numpy as np
import pytest

from deepstab import BRB, DECS, IDEC, LabelMetrics, SampleStabilityTracker, checkpoint
from deepstab.runs import decs as decs_runs
from deepstab.runs.centroid import CentroidRun, run_centroid
from deepstab.runs.decs import DECSRun, run_decs
from deepstab.runs.lfss import LFSSRun, run_lfss
from deepstab.runs.progress import TimeEstimate

DECS_TINY = dict(pretrain_epochs=3, pretrain_batch_size=32, cluster_epochs=3, batch_size=40, on_collapse="warn")
CENTROID_TINY = dict(pretrain_epochs=3, pretrain_batch_size=32, epochs=3, batch_size=32, brb_interval=1)
LFSS_TINY = dict(preset="cpu", epochs=3, width=0.0625, hidden=16, dim=8, batch_size=16, eta=1, eval_runs=2)


def grey_blobs(n=120):
    """``n`` 8x8 grey images in 3 groups (a bright block in a different corner each)."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.uniform(0, 0.3, size=(n, 8, 8, 1)).astype(np.float32)
    for label, (r, c) in enumerate([(0, 0), (4, 4), (0, 4)]):
        x[y == label, r : r + 4, c : c + 4] += 0.6
    return np.clip(x, 0, 1), y


def colour_blobs(n=48):
    rng = np.random.default_rng(1)
    y = np.arange(n) % 2
    x = rng.uniform(0, 0.3, size=(n, 16, 16, 3)).astype(np.float32)
    x[y == 1, :, :, 0] += 0.6
    return np.clip(x, 0, 1), y


def assert_same_run(a, b):
    """The same labels, confidences and weights, bit for bit."""
    np.testing.assert_array_equal(a.labels, b.labels)
    if getattr(a, "confidence", None) is not None:
        np.testing.assert_array_equal(a.confidence, b.confidence)
    weights_a, weights_b = a.model.get_weights(), b.model.get_weights()
    assert len(weights_a) == len(weights_b)
    for wa, wb in zip(weights_a, weights_b):
        np.testing.assert_array_equal(wa, wb)


def run(method: str, folder, labelled: bool, watched: bool, **settings):
    """One tiny run of ``method`` in its own folder (its own autoencoder cache), with the labels
    or without, and with every watcher (a label check each epoch, the stability tracker) or none."""
    x, y = colour_blobs() if method == "lfss" else grey_blobs()
    data = (x, y if labelled else None)
    callbacks = [SampleStabilityTracker(x, every=1)] if watched else []
    k = settings.pop("n_clusters", len(np.unique(y)))
    common = dict(dataset="npz:blobs", n_clusters=k, seed=3, output=str(folder / "m.keras"))
    if method == "lfss":
        return run_lfss(LFSSRun(**common, **{**LFSS_TINY, **settings}), callbacks=callbacks, data=data)
    common |= dict(models_dir=str(folder), eval_every=1 if watched else 1000, verbose=0)
    if method == "decs":
        return run_decs(DECSRun(**common, **{**DECS_TINY, **settings}), callbacks=callbacks, data=data)
    return run_centroid(CentroidRun(method=method, **common, **{**CENTROID_TINY, **settings}), data, callbacks)


@pytest.mark.parametrize(
    "method,settings",
    [("decs", {}), ("dec", {}), ("idec", {}), ("dcn", {}), ("idec", {"brb": True}), ("lfss", {})],
    ids=["decs", "dec", "idec", "dcn", "idec-brb", "lfss"],
)
def test_labels_label_checks_and_the_tracker_change_nothing(tmp_path, method, settings):
    plain = run(method, tmp_path / "plain", labelled=False, watched=False, **settings)
    watched = run(method, tmp_path / "watched", labelled=True, watched=True, **settings)
    assert watched.metrics is not None and plain.metrics is None  # the labels were there, and read
    assert_same_run(plain, watched)


def test_decs_with_brb_from_a_script_is_a_function_of_its_seed():
    """``model.fit`` from a user's script: twice with the same seed in one process, once with
    watchers (a label check every epoch, the tracker), gives the same weights; another seed does not."""
    x, y = grey_blobs()

    def fit(seed: int, watchers: list) -> list:
        keras.utils.set_random_seed(0)
        model = DECS(3, (8, 8, 1), filters=(4, 4, 4, 4), on_collapse="warn", seed=seed)
        model.pretrain(x, epochs=2, batch_size=32, verbose=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(x, epochs=3, batch_size=40, verbose=0, callbacks=[BRB(x, interval=1, subsample=60), *watchers])
        return model.get_weights()

    first, second = fit(1, []), fit(1, [LabelMetrics(x, y, every=1), SampleStabilityTracker(x)])
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, fit(2, [])))


def test_an_idec_model_remembers_its_seed_when_saved(tmp_path):
    model = IDEC(3, (8, 8, 1), hidden=(16, 8), seed=7)
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").seed == 7


class Interrupted(Exception):
    pass


def interrupt_at(monkeypatch, stage: str, epoch: int) -> None:
    """Make the run raise at the end of ``epoch`` of ``stage`` (before that epoch's checkpoint)."""

    def on_epoch_end(self, e, logs=None):
        if self.stage == stage and e == epoch:
            raise Interrupted(f"{stage} epoch {e}")

    monkeypatch.setattr(TimeEstimate, "on_epoch_end", on_epoch_end, raising=False)


@pytest.mark.parametrize(
    "method,settings,stage,epoch",
    [
        ("decs", {}, "pretraining", 1),
        ("decs", {}, "clustering", 1),
        ("idec", {"brb": True}, "pretraining", 1),
        ("idec", {"brb": True}, "clustering", 1),
        ("lfss", {"resume": True}, "training", 1),
        ("decs", {"on_collapse": "restart", "n_clusters": 5, "cluster_epochs": 5}, "clustering", 2),
    ],
    ids=["decs-pretraining", "decs-clustering", "idec-brb-pretraining", "idec-brb-clustering", "lfss", "decs-restart"],
)
def test_an_interrupted_run_resumes_to_the_same_model(tmp_path, monkeypatch, method, settings, stage, epoch):
    whole = run(method, tmp_path / "whole", labelled=True, watched=False, **settings)
    if settings.get("on_collapse") == "restart":  # the kill comes after a restart, and the resumed run restarts
        assert whole.model.collapse_guard.restart_epochs[0] < epoch <= whole.model.collapse_guard.restart_epochs[-1]
    with monkeypatch.context() as patch:
        interrupt_at(patch, stage, epoch)
        with pytest.raises(Interrupted):
            run(method, tmp_path / "parts", labelled=True, watched=False, **settings)
    assert list((tmp_path / "parts").glob(".checkpoint-*"))  # it stopped with a checkpoint to resume from
    assert_same_run(whole, run(method, tmp_path / "parts", labelled=True, watched=False, **settings))


def test_a_checkpoint_save_cut_short_before_its_commit_leaves_the_last_one_whole(tmp_path, monkeypatch):
    """A kill between a checkpoint's weights and its commit: the run resumes from the last
    committed epoch, as if the save had not begun, and ends as the uninterrupted run."""
    whole = run("decs", tmp_path / "whole", labelled=True, watched=False)
    original, commits = checkpoint.atomic_path, []

    @contextlib.contextmanager
    def cut_before_the_second_commit(target, *args, **kwargs):
        target = Path(target)
        if target.name == checkpoint.METADATA and target.parent.name == ".checkpoint-m.keras":
            commits.append(target)
            if len(commits) == 2:  # the clustering stage's weights and state of epoch 2 are written
                raise Interrupted("killed before the commit")
        with original(target, *args, **kwargs) as partial:
            yield partial

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "atomic_path", cut_before_the_second_commit)
        with pytest.raises(Interrupted):
            run("decs", tmp_path / "parts", labelled=True, watched=False)
    assert list((tmp_path / "parts" / ".checkpoint-m.keras").glob("weights-000002*"))  # written, not committed
    assert_same_run(whole, run("decs", tmp_path / "parts", labelled=True, watched=False))


def test_a_run_killed_after_its_last_checkpoint_ends_as_the_uninterrupted_one(tmp_path, monkeypatch):
    """Killed after the last epoch's checkpoint, before the model is saved: the rerun trains no
    epoch, and the end of training (the collapse guard's restore of a flagged last epoch) acts as
    in the uninterrupted run."""
    settings = dict(on_collapse="fallback", cluster_epochs=4)
    whole = run("decs", tmp_path / "whole", labelled=True, watched=False, **settings)
    assert whole.model.collapse_guard.fallback_epoch is not None  # the guard acted in this run
    with monkeypatch.context() as patch:
        patch.setattr(decs_runs, "save_model", lambda *args: (_ for _ in ()).throw(Interrupted("killed")))
        with pytest.raises(Interrupted):
            run("decs", tmp_path / "parts", labelled=True, watched=False, **settings)
    resumed = run("decs", tmp_path / "parts", labelled=True, watched=False, **settings)
    assert resumed.iterations_run == whole.iterations_run and not resumed.history
    assert_same_run(whole, resumed)
