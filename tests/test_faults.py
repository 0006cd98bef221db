"""Faults of a real machine: each write of a run failing in turn (a full disk, no permission, a
read-only disk), a real full disk, outputs that cannot be written, conflicting options, and
runs that share files. Every faulted run ends with one paragraph and exit status 2, loses
nothing saved before, leaves no partial file, and finishes when run again."""

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deepstab import datasets, io
from deepstab.cli import cli
from deepstab.errors import DeepstabError, DeepstabNote
from deepstab.runs import common

ROOT = Path(__file__).resolve().parents[1]
CAUSES = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied", errno.EROFS: "read-only"}
CODES = tuple(CAUSES)
DECS = ["--pretrain-epochs", "1", "--pretrain-batch-size", "32", "--cluster-epochs", "1", "--batch-size", "40"]
IDEC_BRB = ["--pretrain-epochs", "1", "--pretrain-batch-size", "32", "--epochs", "2", "--batch-size", "40"]
IDEC_BRB += ["--brb", "--brb-interval", "1", "--brb-subsample", "50", "--no-report"]  # decs faults the page
LFSS = ["--preset", "cpu", "--epochs", "1", "--width", "0.0625", "--hidden", "16", "--dim", "8"]
LFSS += ["--batch-size", "16", "--eta", "1", "--eval-runs", "1", "--resume", "--no-report"]
STABILITY = ["--epochs", "2", "--pretrain-epochs", "1", "--pretrain-batch-size", "32", "--bins", "5", "--no-report"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, pattern):
    """Exit status 2 and one paragraph (one line) that says ``pattern``; no traceback."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and pattern in errors[0], result.output


def leftovers(folder: Path) -> list[Path]:
    """Partial files and locks under ``folder``: a run that ended leaves none."""
    return [p for p in folder.rglob("*") if ".part-" in p.name or ".lock" in p.name]


class WriteFaults:
    """Every write of deepstab first creates its file with ``tempfile.mkstemp`` (the temporary
    file of an atomic write, a lock, a write probe). This counts those under ``root`` and makes
    the ``at``-th fail with ``code``: EACCES and EROFS when the file is created, ENOSPC when the
    fully written file is moved into place (the disk filled at its last block). ``committed``
    lists the files moved into place."""

    def __init__(self, root: Path, monkeypatch):
        self.root, self.count, self.at, self.code = str(root), 0, None, errno.ENOSPC
        self.committed: list[Path] = []
        doomed = set()
        mkstemp, replace = tempfile.mkstemp, os.replace

        def faulty_mkstemp(*args, **kwargs):
            if not str(kwargs.get("dir", "")).startswith(self.root):
                return mkstemp(*args, **kwargs)
            self.count += 1
            if self.count != self.at:
                return mkstemp(*args, **kwargs)
            if self.code == errno.ENOSPC and ".part-" in kwargs.get("prefix", ""):
                handle, name = mkstemp(*args, **kwargs)
                doomed.add(name)
                return handle, name
            raise OSError(self.code, os.strerror(self.code), str(kwargs["dir"]))

        def faulty_replace(source, target, *args, **kwargs):
            if str(source) in doomed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(source))
            replace(source, target, *args, **kwargs)
            self.committed.append(Path(target))

        monkeypatch.setattr(tempfile, "mkstemp", faulty_mkstemp)
        monkeypatch.setattr(os, "replace", faulty_replace)

    def start(self, at: int | None, code: int = errno.ENOSPC) -> None:
        self.count, self.at, self.code, self.committed = 0, at, code, []


@pytest.fixture
def faults(tmp_path, monkeypatch) -> WriteFaults:
    return WriteFaults(tmp_path, monkeypatch)


def fault_each_write(tmp_path, faults, args, keep: tuple[str, ...]) -> None:
    """Run ``args(folder)`` once without faults to count its writes; then, for each of them,
    in a fresh folder holding the ``keep`` files of that run (the results of an earlier run),
    make that write fail (ENOSPC, EACCES, EROFS in turn), check the error, that the earlier
    files are intact unless the run replaced them whole before the fault, and that nothing
    partial is left; then run the same command again without the fault, which
    must finish with the labels of the uninterrupted run, byte for byte (the ``keep`` files
    ending in ``.csv``)."""
    reference = tmp_path / "reference"
    faults.start(None)
    result = invoke(*args(reference))
    assert result.exit_code == 0, result.output
    writes = faults.count
    for i, at in enumerate(range(1, writes + 1)):
        folder, code = tmp_path / f"write-{at}", CODES[i % len(CODES)]
        folder.mkdir()
        earlier = {}
        for name in keep:
            shutil.copy(reference / name, folder / name)
            earlier[folder / name] = (reference / name).read_bytes()
        faults.start(at, code)
        faulted = invoke(*args(folder))
        assert_clean_error(faulted, CAUSES[code])
        assert faults.count == at, f"the run went on after its write {at} failed"
        assert not leftovers(folder), leftovers(folder)
        for path, data in earlier.items():
            assert path in faults.committed or path.read_bytes() == data, path
        faults.start(None)
        rerun = invoke(*args(folder))
        assert rerun.exit_code == 0, rerun.output
        assert not leftovers(folder)
        assert all((folder / name).is_file() for name in keep)
        for name in (n for n in keep if n.endswith(".csv")):
            assert (folder / name).read_bytes() == (reference / name).read_bytes(), f"write {at}: {name} differs"


def test_each_write_of_decs_fails_cleanly_and_the_run_finishes_after(tmp_path, faults, blobs_npz):
    def args(folder):
        return ["decs", "--dataset", f"npz:{blobs_npz}", *DECS, "--output", folder / "m.keras", "--models-dir", folder]

    fault_each_write(tmp_path, faults, args, ("m.keras", "m.csv"))


def test_each_write_of_idec_with_brb_fails_cleanly(tmp_path, faults, blobs_npz):
    def args(folder):
        out = ["--output", folder / "i.keras", "--models-dir", folder]
        return ["idec", "--dataset", f"npz:{blobs_npz}", *IDEC_BRB, *out]

    fault_each_write(tmp_path, faults, args, ("i.keras", "i.csv", "i.png"))


def test_each_write_of_lfss_fails_cleanly(tmp_path, faults):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.3, size=(32, 16, 16, 3)).astype(np.float32)
    x[16:, :, :, 0] += 0.6
    np.savez(tmp_path / "colour.npz", x=x, y=np.repeat([0, 1], 16))

    def args(folder):
        return ["lfss", "--dataset", f"npz:{tmp_path / 'colour.npz'}", *LFSS, "--output", folder / "l.keras"]

    fault_each_write(tmp_path, faults, args, ("l.keras", "l.csv"))


def test_each_write_of_stability_fails_cleanly(tmp_path, faults, blobs_npz):
    def args(folder):
        return ["stability", "--dataset", f"npz:{blobs_npz}", *STABILITY, "--output", folder, "--models-dir", folder]

    # The tracking of an interrupted job is not checkpointed: the rerun trains the tracked epochs
    # again (it says so) and reuses the pretrained autoencoder.
    keep = ("stability.csv", "report.html", "model.keras")
    fault_each_write(tmp_path, faults, args, keep)


@pytest.fixture
def trained(tmp_path, blobs_npz) -> Path:
    """A DECS model of 8x8 images, trained before any fault is made."""
    out = tmp_path / "models" / "m.keras"
    result = invoke("decs", "--dataset", f"npz:{blobs_npz}", *DECS, "--output", out, "--models-dir", out.parent)
    assert result.exit_code == 0, result.output
    return out


def test_each_write_of_predict_fails_cleanly(tmp_path, trained, blobs_npz, faults):
    def args(folder):
        return ["predict", trained, "--dataset", f"npz:{blobs_npz}", "--output", folder / "labels.csv"]

    fault_each_write(tmp_path, faults, args, ("labels.csv",))
    for code in CODES:  # the labels themselves, every fault
        faults.start(2, code)
        assert_clean_error(invoke(*args(tmp_path / "reference")), CAUSES[code])


def test_a_write_that_fails_leaves_the_earlier_file_and_no_partial_one(tmp_path):
    target = tmp_path / "labels.csv"
    target.write_text("earlier")
    full = pytest.raises(DeepstabError, match=f"Cannot write {target}: the disk is full .*Free space on that disk")
    with full, io.atomic_path(target) as partial:
        partial.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial))
    assert target.read_text() == "earlier" and not leftovers(tmp_path)
    with pytest.raises(ConnectionResetError), io.atomic_path(target):  # not a fault of the disk: as it is
        raise ConnectionResetError(errno.ECONNRESET, "reset")
    (tmp_path / "folder.csv").mkdir()
    in_the_way = pytest.raises(DeepstabError, match="a folder stands where the file should be")
    with in_the_way, io.atomic_path(tmp_path / "folder.csv"):
        pass


def test_a_folder_dataset_whose_cache_cannot_be_written(tmp_path, faults):
    for label in ("a", "b"):
        for i in range(2):
            (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), 50 * i, np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
    faults.start(1, errno.EROFS)  # a read-only folder: converted in memory, with a note
    with pytest.warns(DeepstabNote, match="is read-only: its images are converted in memory"):
        x, y = datasets.load(f"folder:{tmp_path / 'images'}")
    assert x.shape == (4, 4, 4, 1) and y.tolist() == [0, 0, 1, 1]
    faults.start(1, errno.ENOSPC)  # a full disk: a clear error
    with pytest.raises(DeepstabError, match="the disk is full"):
        datasets.load(f"folder:{tmp_path / 'images'}")
    assert not leftovers(tmp_path)


def test_a_fault_of_a_write_outside_deepstab_io_is_still_one_paragraph(trained, blobs_npz, monkeypatch):
    def read_only(path, *args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr("deepstab.runs.predict.write_labels_csv", read_only)
    result = invoke("predict", trained, "--dataset", f"npz:{blobs_npz}")
    assert_clean_error(result, "its file system is read-only")


# ----------------------------------------------------------------------------- a real full disk


def mount_tmpfs(folder: Path, options: str) -> None:
    """Mount a tmpfs with ``options`` on the new folder ``folder``; skip the test where this user
    may not mount one."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {mounted.stderr.decode().strip() or 'mount failed'}")


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs at ``tmp_path/disk`` (skipped where this user may not mount one)."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=64m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    with open(filler, "wb") as out:
        out.write(b"\0" * (shutil.disk_usage(disk).free - leave))
    return filler


def test_a_real_full_disk_ends_decs_and_predict_with_one_paragraph(small_disk, blobs_npz):
    out, models = small_disk / "out" / "m.keras", small_disk / "models"
    decs = ["decs", "--dataset", f"npz:{blobs_npz}", *DECS, "--output", out, "--models-dir", models]
    assert invoke(*decs).exit_code == 0
    saved = {path: path.read_bytes() for path in (out, out.with_suffix(".csv"))}
    for leave in (300_000, 0):  # the checkpoint refused before it is written; nothing written at all
        filler = fill(small_disk, leave)
        assert_clean_error(invoke(*decs, "--fresh"), "the disk is full")
        assert {path: path.read_bytes() for path in saved} == saved
        assert not leftovers(small_disk)
    predict = ["predict", out, "--dataset", f"npz:{blobs_npz}", "--output", out.with_suffix(".csv")]
    assert_clean_error(invoke(*predict), "the disk is full")  # the CSV itself meets the full disk
    assert {path: path.read_bytes() for path in saved} == saved and not leftovers(small_disk)
    filler.unlink()
    assert invoke(*decs).exit_code == 0 and invoke(*predict).exit_code == 0


def test_the_dataset_cache_on_a_full_disk_is_a_clear_error_not_a_crash(small_disk, monkeypatch):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (small_disk / "images" / label).mkdir(parents=True)
        for i in range(8):
            image = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8))
            image.save(small_disk / "images" / label / f"{i}.png")
    fill(small_disk, 16_000)  # less than the cache's 64 KB
    with pytest.raises(DeepstabError, match="the disk is full .*: 0.0 MB free, about 0.1 MB needed"):
        datasets.load(f"folder:{small_disk / 'images'}")
    # The same when the disk fills after that check (another program writes): its memory map
    # would die of SIGBUS, so its blocks are taken first.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**40, 0, 2**40))
    with pytest.raises(DeepstabError, match="the disk is full \\(no space left on the device\\)\\. "):
        datasets.load(f"folder:{small_disk / 'images'}")
    assert not leftovers(small_disk)


def test_an_h5_file_is_refused_before_it_is_written_onto_a_disk_too_small(small_disk):
    """h5py raises on a disk that fills under it, but the process then dies at exit (exit
    status 139): so the free space is checked before the write."""
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8192)])  # 2 MB of weights
    fill(small_disk, 1_000_000)
    with pytest.raises(DeepstabError, match=r"the disk is full .*: 1\.0 MB free, about 3\.\d MB needed"):
        io.save_weights(model, small_disk / "w.weights.h5")
    assert not leftovers(small_disk)


# ------------------------------------------------------------------------- predict's checks


def test_predict_checks_its_output_before_any_work(tmp_path, faults):
    (tmp_path / "file").write_text("")
    (tmp_path / "junk.keras").write_bytes(b"junk")
    junk = [tmp_path / "junk.keras", "--dataset", "nope"]  # would fail if anything were loaded
    assert_clean_error(invoke("predict", *junk, "--output", tmp_path / "file" / "l.csv"), "a file stands where")
    (tmp_path / "ro").mkdir()
    faults.start(1, errno.EROFS)
    assert_clean_error(invoke("predict", *junk, "--output", tmp_path / "ro" / "l.csv"), "read-only")
    faults.start(1, errno.EACCES)
    assert_clean_error(invoke("predict", *junk, "--output", tmp_path / "ro" / "l.csv"), "not writable")


def test_predict_into_a_read_only_mount(tmp_path):
    ro = tmp_path / "ro"
    mount_tmpfs(ro, "ro,size=1m")
    try:
        (tmp_path / "junk.keras").write_bytes(b"junk")  # would fail if it were loaded
        result = invoke("predict", tmp_path / "junk.keras", "--dataset", "nope", "--output", ro / "l.csv")
        assert_clean_error(result, "read-only")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_predict_refuses_images_of_another_size_unless_told_to_resize(tmp_path, trained):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "big" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "big" / label / f"{i}.png")
    big = f"folder:{tmp_path / 'big'}"
    assert_clean_error(invoke("predict", trained, "--dataset", big), "Pass --image-size 8")
    assert_clean_error(invoke("predict", trained, "--dataset", big, "--image-size", "5"), "pass --image-size 8")
    resized = invoke("predict", trained, "--dataset", big, "--image-size", "8")
    assert resized.exit_code == 0, resized.output
    assert "Note: " in resized.output and "6 images of 16x16 pixels are resized to 8x8 (bilinear)" in resized.output
    np.savez(tmp_path / "big.npz", x=rng.random((6, 16, 16)).astype(np.float32))
    array = f"npz:{tmp_path / 'big.npz'}"
    assert_clean_error(invoke("predict", trained, "--dataset", array), "Pass --image-size 8")
    resized = invoke("predict", trained, "--dataset", array, "--image-size", "8")
    assert resized.exit_code == 0 and "6 images of 16x16 pixels are resized to 8x8" in resized.output


# -------------------------------------------------------------------------- options and locks


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("decs", ["--cluster-epochs", "0", "--iterations", "1"]),
        ("lfss", ["--fresh", "--resume"]),
        ("stability", ["--model", "m.keras", "--preset", "paper"]),
    ],
)
def test_options_that_override_each_other_are_refused_together(command, options):
    assert_clean_error(invoke(command, *options), "cannot be given together")


def test_a_lock_holds_its_owner_from_the_moment_it_exists(tmp_path, monkeypatch):
    out, lock = tmp_path / "m.keras", tmp_path / ".m.keras.lock"
    link, seen = os.link, []

    def spying_link(source, target):
        seen.append(Path(source).read_text())
        link(source, target)

    def no_links(source, target):
        raise OSError(errno.EPERM, "hard links are not supported")

    monkeypatch.setattr(os, "link", spying_link)
    with io.output_lock(out):
        assert lock.read_text() == str(os.getpid())
    assert seen == [str(os.getpid())] and not lock.exists()
    lock.write_text("")  # a run between its create and its write (where there are no hard links)
    with pytest.raises(DeepstabError, match="names no process"), io.output_lock(out):
        pass
    lock.unlink()
    monkeypatch.setattr(os, "link", no_links)
    with io.output_lock(out):  # a file system without hard links (FAT)
        assert lock.read_text() == str(os.getpid())


def test_a_stale_lock_that_another_run_took_meanwhile_is_put_back(tmp_path):
    lock = tmp_path / ".m.keras.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(sleeper.pid))  # taken by a live run after this one read a dead holder's id
        io._take_over(lock, "999999999")
        assert lock.read_text() == str(sleeper.pid) and not list(tmp_path.glob("*.stale-*"))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_clean_up_deletes_only_the_partial_files_of_its_own_run(tmp_path):
    own = [tmp_path / ".o.keras.part-1.keras", tmp_path / ".o.csv.part-2.csv"]
    others = [tmp_path / ".o.v2.keras.part-3.v2.keras", tmp_path / ".o.v2.csv.part-4.v2.csv"]
    for path in own + others:
        path.write_text("")
    with io.output_lock(tmp_path / "o.keras"):
        assert not any(p.exists() for p in own) and all(p.exists() for p in others)


def test_two_runs_whose_outputs_share_a_prefix_both_finish(tmp_path, blobs_npz, monkeypatch):
    """The run on o.keras starts while the run on o.v2.keras has written its model's temporary
    file and not yet moved it into place."""

    def decs(name):
        out = ["--output", tmp_path / name, "--models-dir", tmp_path]
        return invoke("decs", "--dataset", f"npz:{blobs_npz}", *DECS, *out)

    save, inner = keras.Model.save, []

    def save_then_start_another(model, path, *args, **kwargs):
        save(model, path, *args, **kwargs)
        if Path(path).name.startswith(".o.v2.keras.part-") and not inner:
            inner.append(decs("o.keras"))

    monkeypatch.setattr(keras.Model, "save", save_then_start_another)
    outer = decs("o.v2.keras")
    assert inner and inner[0].exit_code == 0, inner[0].output
    assert outer.exit_code == 0, outer.output
    for name in ("o.keras", "o.csv", "o.v2.keras", "o.v2.csv"):
        assert (tmp_path / name).is_file(), name
    assert not leftovers(tmp_path)


GATED_RUN = """
import os, sys, time
from deepstab.cli import cli
from deepstab.methods.base import CentroidClusterer

pretrain = CentroidClusterer.pretrain

def gated(self, *args, **kwargs):  # pretraining goes on once the test opens the gate
    while not os.path.exists(os.environ["GATE"]):
        time.sleep(0.1)
    return pretrain(self, *args, **kwargs)

CentroidClusterer.pretrain = gated
cli(sys.argv[1:])
"""


def test_idec_and_idec_brb_started_together_pretrain_their_autoencoder_once(tmp_path, blobs_npz, monkeypatch):
    """idec, in a process of its own, holds the autoencoder's lock and pretrains it (paused at a
    gate); idec --brb needs the same autoencoder, says that it waits (which opens the gate),
    and reuses it once saved."""
    gate, models, log = tmp_path / "gate", tmp_path / "models", tmp_path / "idec.log"
    quick = ["--dataset", f"npz:{blobs_npz}", *IDEC_BRB[:8], "--models-dir", models]
    command = [sys.executable, "-c", GATED_RUN, *map(str, ["idec", *quick, "--output", models / "idec.keras"])]
    env = dict(os.environ, GATE=str(gate), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log, "w") as out:  # the child keeps its own copy of the handle
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    start = time.time()
    while "Pretraining the feed-forward autoencoder" not in log.read_text():
        if first.poll() is not None or time.time() - start > 120:
            first.kill()
            pytest.fail(log.read_text())
        time.sleep(0.2)
    output_lock = common.output_lock

    def lock_opening_the_gate(path, on_wait=None):
        def waiting(pid):
            on_wait(pid)
            gate.touch()

        return output_lock(path, on_wait=waiting if on_wait else None)

    monkeypatch.setattr(common, "output_lock", lock_opening_the_gate)
    try:
        second = invoke("idec", *quick, "--brb", "--brb-interval", "1", "--brb-subsample", "50")
    finally:
        gate.touch()  # whatever happened, the first run goes on (and ends)
    assert first.wait(timeout=120) == 0, log.read_text()
    assert second.exit_code == 0, second.output
    assert f"Waiting for the feed-forward autoencoder that another run (process {first.pid})" in second.output
    assert "Reusing the pretrained autoencoder" in second.output and "Pretraining" not in second.output
    assert len(list(models.glob("dense-ae-blobs-*.keras"))) == 1
    assert (models / "idec.keras").is_file() and (models / "idec-brb-blobs.keras").is_file()
