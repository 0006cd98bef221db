import gzip
import shutil
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_idx, write_usps
from PIL import Image

import cli
from deepstab import datasets
from deepstab.datasets.store import to_unit_float
from deepstab.errors import DeepstabError, DeepstabNote
from deepstab.metrics import evaluate


def test_digits_is_bundled():
    x, y = datasets.load("digits")
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert sorted(np.unique(y)) == list(range(10))


def test_usps_from_shared_data(shared_data):
    x, y = datasets.load("usps", shared_data)
    assert x.shape == (9298, 16, 16, 1) and y.shape == (9298,)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.bincount(y).tolist()[:2] == [1553, 1269]


def test_mnist_and_mnist_test_from_shared_data(shared_data):
    x, y = datasets.load("mnist-test", shared_data)
    assert x.shape == (10000, 28, 28, 1) and np.bincount(y).sum() == 10000
    x_all, y_all = datasets.load("mnist", shared_data)
    assert x_all.shape == (70000, 28, 28, 1)
    np.testing.assert_array_equal(x_all[60000:], x)  # the test split comes last


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTAB_DATA", str(tmp_path / "env"))
    assert datasets.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert datasets.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("DEEPSTAB_DATA")
    assert str(datasets.resolve_data_dir()) == "data"


def test_unknown_name_lists_the_choices():
    with pytest.raises(DeepstabError, match="Unknown dataset 'nope'.*usps"):
        datasets.load("nope")


def test_missing_offline_names_files_and_folder(tmp_path):
    with pytest.raises(DeepstabError, match=r"usps_train\.jf\.gz.*not found in .*usps"):
        datasets.load("usps", tmp_path, download=False)
    with pytest.raises(DeepstabError, match=r"t10k-images-idx3-ubyte\.gz.*mnist"):
        datasets.load("mnist-test", tmp_path, download=False)


def test_checksum_mismatch_on_a_local_file(tmp_path, shared_data):
    folder = tmp_path / "usps"
    folder.mkdir()
    shutil.copy(shared_data / "usps" / "usps_test.jf.gz", folder)
    rng = np.random.default_rng(0)
    write_usps(folder / "usps_train.jf.gz", rng.random((5, 16, 16)), np.arange(5))
    with pytest.raises(DeepstabError, match="Checksum mismatch.*usps_train"):
        datasets.load("usps", tmp_path, download=False)


def test_truncated_gzip_is_reported(tmp_path, shared_data):
    folder = tmp_path / "mnist"
    folder.mkdir()
    shutil.copy(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", folder)
    data = (shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeepstabError, match="corrupted or truncated"):
        datasets.load("mnist-test", tmp_path)


def test_download_verifies_and_places_the_file(tmp_path, shared_data, monkeypatch):
    spec = datasets.REGISTRY["usps"]
    local = [datasets.DataFile(f.name, f.sha256, (shared_data / "usps" / f.name).as_uri()) for f in spec.files]
    monkeypatch.setitem(datasets.REGISTRY, "usps", datasets.Dataset(**{**spec.__dict__, "files": tuple(local)}))
    x, _ = datasets.load("usps", tmp_path / "cache", download=True)
    assert x.shape == (9298, 16, 16, 1)
    assert sorted(p.name for p in (tmp_path / "cache" / "usps").iterdir()) == ["usps_test.jf.gz", "usps_train.jf.gz"]


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, shared_data, monkeypatch):
    spec = datasets.REGISTRY["usps"]
    bad = tuple(datasets.DataFile(f.name, "0" * 64, (shared_data / "usps" / f.name).as_uri()) for f in spec.files)
    monkeypatch.setitem(datasets.REGISTRY, "usps", datasets.Dataset(**{**spec.__dict__, "files": bad}))
    with pytest.raises(DeepstabError, match="Checksum mismatch"):
        datasets.load("usps", tmp_path, download=True)
    assert list((tmp_path / "usps").iterdir()) == []


def test_download_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    spec = datasets.REGISTRY["usps"]
    gone = tuple(datasets.DataFile(f.name, f.sha256, (tmp_path / "absent" / f.name).as_uri()) for f in spec.files)
    monkeypatch.setitem(datasets.REGISTRY, "usps", datasets.Dataset(**{**spec.__dict__, "files": gone}))
    with pytest.raises(DeepstabError, match="Could not download.*put it at"):
        datasets.load("usps", tmp_path / "cache", download=True)


def test_usps_reader_on_generated_and_malformed_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((7, 16, 16)).round(3)
    write_usps(tmp_path / "ok.jf.gz", x, np.arange(7) % 10)
    images, labels = datasets.read_usps_file(tmp_path / "ok.jf.gz")
    assert images.shape == (7, 16, 16, 1) and labels.tolist() == list(range(7))
    np.testing.assert_allclose(images[..., 0], x, atol=1e-3)
    with gzip.open(tmp_path / "bad.jf.gz", "wt") as out:
        out.write("10 256\n1 2 3\n-1\n")
    with pytest.raises(DeepstabError, match="not a valid USPS file"):
        datasets.read_usps_file(tmp_path / "bad.jf.gz")


def test_local_fmnist_idx_files_and_truncation(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fmnist"
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n))
    x, y = datasets.load("fmnist", tmp_path)
    assert x.shape == (10, 28, 28, 1) and y.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    raw = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DeepstabError, match="truncated"):
        datasets.load("fmnist", tmp_path)


def test_fmnist_offline_without_files(tmp_path):
    with pytest.raises(DeepstabError, match="not available offline.*train-images-idx3-ubyte.gz"):
        datasets.load("fmnist", tmp_path, download=False)


# ------------------------------------------------------------------------ npz


def test_npz_uint8_and_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(75, dtype=np.uint8).reshape(3, 5, 5) * 3, y=np.array(["b", "a", "b"]))
    x, y = datasets.load(f"npz:{path}")
    assert x.shape == (3, 5, 5, 1) and x.max() == 222 / 255 and y.tolist() == [1, 0, 1]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_npz_with_non_finite_values(tmp_path, bad):
    x = np.zeros((4, 6, 6), np.float32)
    x[2, 1, 1] = bad
    np.savez(tmp_path / "d.npz", x=x)
    with pytest.raises(DeepstabError, match="NaN or infinite.*sample 2"):
        datasets.load(f"npz:{tmp_path / 'd.npz'}")


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(DeepstabError, match="no 'x'"):
        datasets.load(f"npz:{tmp_path / 'nox.npz'}")
    np.savez(tmp_path / "flat.npz", x=np.zeros((2, 16)))
    with pytest.raises(DeepstabError, match="expected images shaped"):
        datasets.load(f"npz:{tmp_path / 'flat.npz'}")
    np.savez(tmp_path / "y.npz", x=np.eye(4)[None].repeat(2, 0), y=np.zeros(3))
    with pytest.raises(DeepstabError, match="one label per sample"):
        datasets.load(f"npz:{tmp_path / 'y.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DeepstabError, match="Cannot read"):
        datasets.load(f"npz:{tmp_path / 'junk.npz'}")
    with pytest.raises(DeepstabError, match="does not exist"):
        datasets.load(f"npz:{tmp_path / 'absent.npz'}")


def test_npz_float_out_of_range_is_rescaled(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.linspace(-1, 3, 2 * 16).reshape(2, 4, 4))
    with pytest.warns(UserWarning, match="scaling them to"):
        x, _ = datasets.load(f"npz:{tmp_path / 'd.npz'}")
    assert x.min() == 0.0 and x.max() == 1.0


# --------------------------------------------------------------------- folder


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_with_class_subfolders(tmp_path):
    for label in ("cat", "dog"):
        for i in range(3):
            _save(tmp_path / label / f"{i}.png", np.full((6, 7), 40 * i, np.uint8))
    x, y = datasets.load(f"folder:{tmp_path}")
    assert x.shape == (6, 6, 7, 1) and y.tolist() == [0, 0, 0, 1, 1, 1]


def test_flat_folder_mixing_grey_and_colour(tmp_path):
    _save(tmp_path / "a.png", np.zeros((5, 5), np.uint8))
    _save(tmp_path / "b.png", np.full((5, 5, 3), 255, np.uint8))
    x, y = datasets.load(f"folder:{tmp_path}")
    assert x.shape == (2, 5, 5, 3) and y is None and x[1].min() == 1.0


def test_folder_with_mixed_sizes(tmp_path):
    _save(tmp_path / "a.png", np.zeros((5, 5), np.uint8))
    _save(tmp_path / "b.png", np.zeros((6, 5), np.uint8))
    with pytest.raises(DeepstabError, match="mixed sizes: 5x5.*6x5"):
        datasets.load(f"folder:{tmp_path}")


def test_folder_errors(tmp_path):
    with pytest.raises(DeepstabError, match="does not exist"):
        datasets.load(f"folder:{tmp_path / 'absent'}")
    with pytest.raises(DeepstabError, match="No images"):
        datasets.load(f"folder:{tmp_path}")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG junk")
    with pytest.raises(DeepstabError, match="Cannot read the image .*broken.png"):
        datasets.load(f"folder:{tmp_path}")


def _notes(caught) -> str:
    return "\n".join(str(w.message) for w in caught if issubclass(w.category, DeepstabNote))


def test_folder_notes_every_image_it_merges_or_leaves_out(tmp_path):
    for path in ("a/0/1.png", "a/1/1.png", "b/1.png", "top.png"):
        _save(tmp_path / path, np.zeros((4, 4), np.uint8))
    (tmp_path / "c").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("")
    (tmp_path / "b" / ".DS_Store").write_text("")  # hidden files are no one's images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, y = datasets.load(f"folder:{tmp_path}")
    assert x.shape == (3, 4, 4, 1) and y.tolist() == [0, 0, 1]
    notes = _notes(caught)
    assert "merged into that class: a (from a/0, a/1)" in notes
    assert "1 images at the top level are left out" in notes
    assert "the sub-folders c hold no images" in notes
    assert "1 files that are not images (.txt) are left out" in notes and ".DS_Store" not in notes


def test_a_folder_of_one_class_says_why_and_is_read_as_unlabelled(tmp_path):
    for path in ("a/0/1.png", "a/0/2.png", "a/1/1.png", "a/1/2.png"):
        _save(tmp_path / "images" / path, np.full((4, 4), 60 * int(path[-5]), np.uint8))
    with pytest.warns(DeepstabNote, match="all 4 images lie in its one class folder a") as caught:
        x, y = datasets.load(f"folder:{tmp_path / 'images'}")
    assert x.shape == (4, 4, 4, 1) and y is None
    assert f"give folder:{tmp_path / 'images' / 'a'}" in _notes(caught)
    x, y = datasets.load(f"folder:{tmp_path / 'images' / 'a'}")  # as the note advises
    assert y.tolist() == [0, 0, 1, 1]
    result = CliRunner().invoke(cli.cli, ["decs", "--dataset", f"folder:{tmp_path / 'images'}"])
    assert result.exit_code == 2 and "Note: " in result.output and "one class folder a" in result.output
    assert "pass --n-clusters" in result.output and "n_clusters must be at least 2" not in result.output


def test_describe_lists_every_dataset(tmp_path, shared_data):
    rows = {r["name"]: r for r in datasets.describe(shared_data)}
    assert set(datasets.names()) <= set(rows)
    assert rows["usps"]["available"].startswith("yes") and rows["usps"]["shape"] == "16x16x1"
    assert rows["fmnist"]["available"].startswith("no")
    assert datasets.is_available("digits", tmp_path)


def _jpegs(folder, n, size, rng, name="img"):
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{name}_{j}.JPEG")


def test_imagenet10_reads_only_its_wnids_into_a_disk_cache(tmp_path):
    from deepstab.datasets import IMAGENET10_WNIDS

    rng = np.random.default_rng(0)
    for i, wnid in enumerate(IMAGENET10_WNIDS + ("n01440764",)):  # plus a class that is not in ImageNet-10
        for j in range(2):  # sizes differ: everything is resized to 96x96
            _jpegs(tmp_path / "imagenet" / "train" / wnid, 1, (40 + 7 * j, 30 + i), rng, name=f"{wnid}_{j}")
    x, y = datasets.load("imagenet10", tmp_path)
    assert x.shape == (20, 96, 96, 3) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert y.tolist() == [i for i in range(10) for _ in range(2)]
    # Streamed: the uint8 cache on disk, memory-mapped read-only, the same pixels.
    xs, ys = datasets.load("imagenet10", tmp_path, stream=True)
    assert isinstance(xs, np.memmap) and xs.dtype == np.uint8 and not xs.flags.writeable
    np.testing.assert_array_equal(to_unit_float(np.asarray(xs)), x)
    # Later loads read the cache, not the images.
    shutil.rmtree(tmp_path / "imagenet" / "train")
    np.testing.assert_array_equal(datasets.load("imagenet10", tmp_path)[0], x)


def test_unreadable_image_leaves_no_cache_behind(tmp_path):
    from deepstab.datasets import IMAGENET10_WNIDS

    rng = np.random.default_rng(0)
    for wnid in IMAGENET10_WNIDS:
        _jpegs(tmp_path / "imagenet" / wnid, 1, (20, 20), rng)
    (tmp_path / "imagenet" / IMAGENET10_WNIDS[3] / "img_0.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DeepstabError, match="Cannot read the image"):
        datasets.load("imagenet10", tmp_path)
    assert list((tmp_path / "imagenet" / ".deepstab-cache").iterdir()) == []


def test_tiny_imagenet_layout(tmp_path):
    rng = np.random.default_rng(1)
    train = tmp_path / "tiny-imagenet" / "tiny-imagenet-200" / "train"
    for wnid, n in (("n02", 2), ("n01", 3), ("n03", 1)):
        _jpegs(train / wnid / "images", n, (64, 64), rng)
        (train / wnid / f"{wnid}_boxes.txt").write_text("not an image\n")
    x, y = datasets.load("tiny-imagenet", tmp_path, stream=True)
    assert x.shape == (6, 64, 64, 3) and y.tolist() == [0, 0, 0, 1, 1, 2]  # classes in sorted WNID order
    with pytest.raises(DeepstabError, match="tiny-imagenet-200.zip"):
        datasets.load("tiny-imagenet", tmp_path / "elsewhere")


class _FakeTfds:
    """Stands in for tensorflow_datasets (offline): splits of random images with labels."""

    def __init__(self, splits):
        self.splits, self.prepared = splits, []

    def builder(self, name, data_dir):
        fake = self

        class Builder:
            def download_and_prepare(self, file_format):
                fake.prepared.append((name, data_dir, file_format))

            def as_data_source(self, split):
                return fake.splits[split]

        return Builder()


def _fake_split(n, shape, rng, **labels):
    return [
        {"image": rng.integers(0, 255, shape, dtype=np.uint8), **{k: v[i] for k, v in labels.items()}} for i in range(n)
    ]


def test_cifar20_takes_the_coarse_labels_from_tfds(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    fake = _FakeTfds(
        {
            "train": _fake_split(3, (32, 32, 3), rng, label=[50, 60, 70], coarse_label=[1, 19, 4]),
            "test": _fake_split(2, (32, 32, 3), rng, label=[0, 1], coarse_label=[7, 0]),
        }
    )
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.delenv("DEEPSTAB_OFFLINE", raising=False)
    x, y = datasets.load("cifar20", tmp_path, stream=True)
    assert y.tolist() == [1, 19, 4, 7, 0] and x.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(x[3], fake.splits["test"][0]["image"])
    assert fake.prepared == [("cifar100", str(tmp_path / "tfds"), "array_record")]


def test_stl10_marks_the_unlabelled_split_and_metrics_skip_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    fake = _FakeTfds(
        {
            "train": _fake_split(2, (96, 96, 3), rng, label=[0, 1]),
            "test": _fake_split(1, (96, 96, 3), rng, label=[1]),
            "unlabelled": _fake_split(3, (96, 96, 3), rng, label=[0, 0, 0]),
        }
    )
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.delenv("DEEPSTAB_OFFLINE", raising=False)
    _, y = datasets.load("stl10", tmp_path, stream=True)
    assert y.tolist() == [0, 1, 1, -1, -1, -1]
    scores = evaluate(y, np.array([5, 6, 6, 0, 1, 2]))
    assert scores["acc"] == 1.0 and scores["nmi"] == pytest.approx(1.0)


def test_tfds_datasets_fail_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTAB_OFFLINE", "1")
    with pytest.raises(DeepstabError, match="not available offline"):
        datasets.load("cifar10", tmp_path)


def test_imagenet_dogs_names_the_missing_classes(tmp_path):
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    with pytest.raises(DeepstabError, match="lacks the class folders n02085936"):
        datasets.load("imagenet-dogs", tmp_path)


def test_optdigits_reads_the_uci_files(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()  # scikit-learn's copy of optdigits.tes
    folder = tmp_path / "optdigits"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train = np.column_stack([rng.integers(0, 17, (3823, 64)), rng.integers(0, 10, 3823)])
    np.savetxt(folder / "optdigits.tra", train, fmt="%d", delimiter=",")
    np.savetxt(folder / "optdigits.tes", np.column_stack([digits.data, digits.target]), fmt="%d", delimiter=",")
    x, y = datasets.load("optdigits", tmp_path)
    assert x.shape == (5620, 8, 8, 1) and y[3823:].tolist() == digits.target.tolist()
    np.testing.assert_allclose(x[3823:], datasets.load("digits")[0])
    np.savetxt(
        folder / "optdigits.tes", np.column_stack([digits.data[:10], digits.target[:10]]), fmt="%d", delimiter=","
    )
    with pytest.raises(DeepstabError, match="1797 rows"):
        datasets.load("optdigits", tmp_path)


def test_kmnist_from_local_idx_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTAB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        write_idx(
            tmp_path / "kmnist" / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        write_idx(tmp_path / "kmnist" / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    x, y = datasets.load("kmnist", tmp_path)
    assert x.shape == (8, 28, 28, 1) and y.shape == (8,)


def test_gtsrb_is_resized_to_32(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "gtsrb" / "GTSRB" / "Final_Training" / "Images"
    for c, n in (("00000", 2), ("00001", 1)):
        (images / c).mkdir(parents=True)
        (images / c / f"GT-{c}.csv").write_text("Filename;Width\n")
        for j in range(n):
            Image.fromarray(rng.integers(0, 255, (40 + j, 35, 3), dtype=np.uint8)).save(images / c / f"{j:05d}.ppm")
    x, y = datasets.load("gtsrb", tmp_path)
    assert x.shape == (3, 32, 32, 3) and y.tolist() == [0, 0, 1]


def test_gtsrb_5_is_the_authors_equalised_subset(tmp_path):
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    images = tmp_path / "gtsrb" / "GTSRB" / "Final_Training" / "Images"
    for c in ("00000", "00002", "00012", "00017", "00018", "00035"):
        (images / c).mkdir(parents=True)
        low_contrast = rng.integers(100, 140, (40, 36, 3), dtype=np.uint8)
        Image.fromarray(low_contrast).save(images / c / "00000.ppm")
    x, y = datasets.load("gtsrb-5", tmp_path)
    assert x.shape == (5, 32, 32, 3) and y.tolist() == [0, 1, 2, 3, 4]  # class 00000 left out
    expected = ImageOps.equalize(
        Image.open(images / "00002" / "00000.ppm").convert("RGB").resize((32, 32), Image.BICUBIC)
    )
    np.testing.assert_allclose(x[0], np.asarray(expected) / 255.0, atol=1e-6)
    assert x[0].max() == 1.0 and x[0].min() == 0.0  # equalised: the full range
    all_classes, _ = datasets.load("gtsrb", tmp_path)
    assert len(all_classes) == 6
