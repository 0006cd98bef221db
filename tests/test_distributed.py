"""Data-parallel LFSS (deepstab.distributed): two gloo processes started by torchrun on the CPU,
each test's work in tests/distributed_worker.py, compared here with one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

from deepstab import distributed
from deepstab.methods.losses import nt_xent

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = WORKER.parent.parent

sys.path.insert(0, str(WORKER.parent))
import distributed_worker as worker  # noqa: E402


def torchrun(out: Path, *args: str, processes: int = 2, timeout: float = 240) -> list[dict[str, np.ndarray]]:
    """Run the worker on ``processes`` processes (1: without torchrun); return what each rank wrote."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    process = subprocess.Popen(
        [*command, str(WORKER), args[0], str(out), *args[1:]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so that a hung run's workers can be killed with it
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    ranks = []
    for r in range(processes):
        with np.load(out / f"rank{r}.npz") as archive:
            ranks.append({k: archive[k] for k in archive.files})
    return ranks


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    return torchrun(tmp_path_factory.mktemp("core"), "core")


def _weights(rank: dict, prefix: str) -> list[np.ndarray]:
    return [
        rank[k]
        for k in sorted((k for k in rank if k.startswith(prefix + "w")), key=lambda k: int(k[len(prefix) + 1 :]))
    ]


def test_one_process_is_a_world_of_one():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    x = torch.ones(3, 2)
    assert distributed.gather(x) is x and distributed.row_counts(3) == [3]
    assert distributed.shard(10) == slice(0, 10)


def test_weights_are_equal_on_every_rank_after_two_epochs(core):
    a, b = (_weights(r, "straight_") for r in core)
    assert len(a) > 50 and all(r["world"] == 2 for r in core)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    first = worker.lfss(eta=1)
    assert any(not np.allclose(w, np.asarray(keras.ops.convert_to_numpy(v))) for w, v in zip(a, first.weights))


def test_each_rank_draws_its_own_views(core):
    a, b = (r["views"] for r in core)
    assert a.shape == (4, *worker.SHAPE) and not np.allclose(a, b)


def test_the_gathered_nt_xent_has_the_full_batch_gradient(core):
    z1, z2 = (worker.rows(13, 8, seed).requires_grad_() for seed in (1, 2))
    loss = nt_xent(z1, z2, 0.5)
    loss.backward()
    for rank, part in zip(core, (distributed.shard(13, 2, 0), distributed.shard(13, 2, 1))):
        assert part.stop - part.start in (6, 7)
        np.testing.assert_allclose(rank["nt_xent"], loss.item(), rtol=1e-6)
        np.testing.assert_allclose(rank["grad_z1"], z1.grad[part].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rank["grad_z2"], z2.grad[part].numpy(), rtol=1e-5, atol=1e-7)


def test_sharded_kmeans_equals_one_process(core):
    from deepstab.nn.kmeans import cosine_kmeans

    expected = cosine_kmeans(worker.clustered_rows(301), 5, seed=3)
    assert len(np.unique(expected)) == 5
    for rank in core:
        np.testing.assert_array_equal(rank["kmeans"], expected)


def test_pseudo_labels_from_all_ranks_equal_one_process(core):
    model = worker.lfss(eta=1)
    stability = model.refresh_pseudo_labels(worker.images(41))
    for rank in core:
        np.testing.assert_allclose(rank["stability"], stability, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(rank["labels"], keras.ops.convert_to_numpy(model.pseudo_labels))
        np.testing.assert_array_equal(rank["keep"], keras.ops.convert_to_numpy(model.keep))
    assert len(np.unique(core[0]["labels"])) == 3 and (~core[0]["keep"]).sum() == 4  # δ = 0.1 of 41


def test_a_resume_continues_identically_on_one_process_and_on_two(tmp_path):
    (result,) = torchrun(tmp_path, "core", processes=1)
    assert result["epoch_of_resume"] == 1 and result["world"] == 1
    pairs = list(zip(_weights(result, "straight_"), _weights(result, "resumed_"), strict=True))
    assert len(pairs) > 50
    for x, y in pairs:
        np.testing.assert_array_equal(x, y)
    # The one-process checkpoint (after epoch 1) resumed on two processes: one model on both ranks.
    ranks = torchrun(tmp_path / "two", "resume", str(tmp_path / "checkpoint"))
    assert all(r["epoch_of_resume"] == 1 for r in ranks)
    for a, b in zip(_weights(ranks[0], "resumed_"), _weights(ranks[1], "resumed_"), strict=True):
        np.testing.assert_array_equal(a, b)
    moved = [not np.allclose(a, b) for a, b in zip(_weights(ranks[0], "resumed_"), _weights(result, "straight_"))]
    assert any(moved)  # another global batch: another second epoch


def test_a_resume_after_one_epoch_continues_identically(core):
    for rank in core:
        assert rank["epoch_of_resume"] == 1
        for x, y in zip(_weights(rank, "straight_"), _weights(rank, "resumed_"), strict=True):
            np.testing.assert_array_equal(x, y)


def test_two_ranks_of_batch_b_step_as_one_process_of_batch_2b(tmp_path):
    """With synchronised batch statistics: the same update of every weight (the gradients of
    the global batch, averaged), for L_S, L_I and L_C together."""
    ranks = torchrun(tmp_path, "step", "6")
    model = worker.lfss(sigma=0.0, sync_batch_norm=True, eta=0)
    before = [np.array(keras.ops.convert_to_numpy(w.value)) for w in model.weights]
    worker.one_step(model, worker.images(12), np.arange(12))
    after = [np.array(keras.ops.convert_to_numpy(w.value)) for w in model.weights]
    moved = 0
    for i, (b, a) in enumerate(zip(before, after)):
        update = np.abs(a - b).max()
        for rank in ranks:  # float32 sums in another order: the same update to 0.2% (and float noise)
            assert np.abs(rank[f"w{i}"] - a).max() <= 2e-3 * update + 2e-5, (i, model.weights[i].path)
        moved += update > 0
    assert moved > 50  # the step changed the online network, the predictor, the target and the statistics


def test_torchrun_cli_trains_one_model_and_only_rank_0_writes(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(48) % 3)
    model_path = tmp_path / "m.keras"
    args = ["lfss", "--dataset", f"npz:{tmp_path / 'data.npz'}", "--preset", "cpu", "--epochs", "2"]
    args += ["--eta", "1", "--width", "0.0625", "--hidden", "16", "--dim", "8", "--batch-size", "8"]
    args += ["--output", str(model_path), "--eval-runs", "2"]
    ranks = torchrun(tmp_path / "out", "command", *args)
    assert not [p for p in ranks[1]["written"] if str(tmp_path) in p], ranks[1]["written"]
    from deepstab.io import load_model

    model = load_model(model_path)
    assert model.embed(x[:4]).shape == (4, 8)
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("index,cluster") and len(lines) == 49
    assert not (tmp_path / ".checkpoint-m.keras").exists()


def test_the_other_commands_refuse_torchrun(monkeypatch):
    from deepstab.errors import DeepstabError
    from deepstab.runs.centroid import CentroidRun, run_centroid
    from deepstab.runs.decs import DECSRun, run_decs

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DeepstabError, match="only lfss trains on several"):
        run_decs(DECSRun(dataset="digits"))
    with pytest.raises(DeepstabError, match="IDEC trains on one process"):
        run_centroid(CentroidRun(dataset="digits", method="idec"))
