"""The cluster report: the page written by `report` and at the end of training (rendered in
headless Chromium), and the export of the images into one folder per cluster."""

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from deepstab.analysis.cluster_export import export_clusters
from deepstab.analysis.cluster_report import MAP_POINTS, MIN_PER_END, per_end, write_cluster_report
from deepstab.analysis.k_choice import KChoice

QUICK = ["--pretrain-epochs", "2", "--pretrain-batch-size", "16", "--iterations", "4", "--batch-size", "16"]
CORNERS = [(0, 0), (8, 8), (0, 8)]
CLASSES = ("cat", "dog", "owl")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def invoke(*args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def assert_clean_error(result, pattern):
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.startswith("Error: ") and re.search(pattern, result.output.replace("\n", " ")), result.output


def image_folder(root: Path) -> Path:
    """48 colour images of 16x16 in three class folders, a bright block in a different corner
    per class; every class has the same file names (00.png ... 15.png)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(16):
            image = rng.integers(0, 40, size=(16, 16, 3)).astype(np.uint8)
            r, c = CORNERS[label]
            image[r : r + 8, c : c + 8, label] = 230
            Image.fromarray(image).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DECS model trained (quickly) on a folder: dataset, its report page and its export."""
    tmp = tmp_path_factory.mktemp("report")
    data = image_folder(tmp / "images")
    model = tmp / "models" / "decs.keras"
    result = invoke("decs", "--dataset", f"folder:{data}", *QUICK, "--output", model, "--models-dir", tmp / "models")
    assert result.exit_code == 0, result.output
    report = invoke("report", model, "--dataset", f"folder:{data}", "--output", tmp / "page", "--export", tmp / "out")
    assert report.exit_code == 0, report.output
    return tmp, data, model, result.output, report.output


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_training_writes_the_page_unless_no_report(trained):
    tmp, data, model, output, _ = trained
    page = model.with_name("decs-report") / "index.html"
    assert f"Wrote the cluster report to {page}" in output and page.is_file()
    text = page.read_text()
    assert "DECS clusters of folder:" in text and "cat/00.png" in text and "seed" in text
    other = tmp / "models" / "quiet.keras"
    quiet = invoke(
        "decs", "--dataset", f"folder:{data}", *QUICK, "--output", other, "--models-dir", tmp / "models", "--no-report"
    )
    assert quiet.exit_code == 0, quiet.output
    assert other.is_file() and not other.with_name("quiet-report").exists() and "cluster report" not in quiet.output


def test_export_holds_each_image_once_in_its_clusters_folder(trained):
    tmp, data, model, _, output = trained
    out = tmp / "out"
    predicted = {int(r["index"]): int(r["cluster"]) for r in read_rows(model.with_suffix(".csv"))}
    rows = read_rows(out / "labels.csv")
    sources = sorted(p for p in data.rglob("*.png") if ".deepstab-cache" not in p.parts)
    assert [int(r["index"]) for r in rows] == list(range(len(sources))) == sorted(predicted)
    exported = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "labels.csv")
    assert len(exported) == len(sources) == 48  # each image exactly once
    for row in rows:
        file = out / row["file"]
        k = int(row["cluster"])
        assert k == predicted[int(row["index"])]  # the model's own labels
        assert file.relative_to(out).parts[0] == f"cluster-{k}" and file.is_file()
        assert file.relative_to(out / f"cluster-{k}") == Path(row["source"]).relative_to(data)  # its own name
        assert os.path.samefile(file, row["source"])  # hard-linked
    assert {p.relative_to(data) for p in sources} == {Path(*p.relative_to(out).parts[1:]) for p in exported}
    assert "48 linked" in output


def test_export_copies_and_writes_pngs_of_arrays(tmp_path, trained):
    _, data, model, _, _ = trained
    copied = invoke("report", model, "--dataset", f"folder:{data}", "--output", tmp_path / "p", "--export",
                    tmp_path / "c", "--copy")  # fmt: skip
    assert copied.exit_code == 0 and "48 copied" in copied.output, copied.output
    for row in read_rows(tmp_path / "c" / "labels.csv"):
        file = tmp_path / "c" / row["file"]
        assert not os.path.samefile(file, row["source"]) and file.read_bytes() == Path(row["source"]).read_bytes()
    x = np.random.default_rng(1).integers(0, 256, size=(7, 5, 5, 1)).astype(np.uint8)
    labels = np.array([2, 0, 2, 1, 2, 0, 2])
    done = export_clusters(tmp_path / "arrays", labels, 4, x=x)
    assert done["counts"] == [2, 1, 4, 0] and done["written"] == 7 and (tmp_path / "arrays" / "cluster-3").is_dir()
    for row in read_rows(tmp_path / "arrays" / "labels.csv"):
        i, k = int(row["index"]), int(row["cluster"])
        assert row["file"] == f"cluster-{k}/{i}.png" and k == labels[i]
        assert np.array_equal(np.asarray(Image.open(tmp_path / "arrays" / row["file"])), x[i, ..., 0])


def test_bad_report_options_are_one_paragraph(tmp_path, trained):
    _, data, model, _, _ = trained
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"")
    args = ["report", model, "--dataset", f"folder:{data}", "--output", tmp_path / "p"]
    assert_clean_error(invoke(*args, "--export", tmp_path / "full"), "is not empty")
    assert_clean_error(invoke(*args, "--copy"), "give --export DIR")
    assert_clean_error(invoke("report", tmp_path / "none.keras", "--dataset", "digits"), "does not exist")
    assert_clean_error(invoke("report", model, "--dataset", "digits"), "trained on images of shape")


def test_page_of_a_clustering_without_confidence_says_how_it_ranks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(30, 6, 6, 1)).astype(np.float32)
    labels = np.repeat([0, 2], 15)  # cluster 1 is empty
    z = rng.normal(size=(30, 4)) + labels[:, None]
    page = write_cluster_report(tmp_path, x, labels, z, 3, method="LFSS", dataset="toy")
    text = page.read_text()
    assert "cosine similarity" in text and "Empty: no image" in text and "id='metrics'" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster-0.png", "cluster-2.png", "index.html"]


def test_page_shows_each_clusters_least_stable_members_where_a_run_tracked_them(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    x = rng.uniform(size=(n, 6, 6, 1)).astype(np.float32)
    labels = np.repeat([0, 1], n // 2)
    confidence = rng.uniform(0.5, 1.0, size=n)
    stability = np.ones(n)
    shaky = [3, 57, 140, 199]  # few stable ones in each cluster, none among the most confident
    stability[shaky] = [0.1, 0.2, 0.3, 0.4]
    confidence[shaky] = 0.75
    page = write_cluster_report(
        tmp_path, x, labels, rng.normal(size=(n, 4)), 2, confidence=confidence, stability=stability
    )
    text = page.read_text()
    assert "Least stable (tracked over training)" in text and "Least confident" not in text
    for k in (0, 1):
        section = text.split(f"id='cluster-{k}'")[1].split("</section>")[0]
        least = section.split("Least stable")[1]
        shown = [int(i) for i in re.findall(r"\(index (\d+)\)", least)]
        expected = [i for i in shaky if labels[i] == k]
        assert shown[: len(expected)] == expected  # least stable first
        assert all(stability[i] == 1.0 for i in shown[len(expected) :])
    plain = write_cluster_report(tmp_path / "plain", x, labels, rng.normal(size=(n, 4)), 2, confidence=confidence)
    assert "Least confident" in plain.read_text()


def test_page_cost_is_bounded_whatever_n_and_k(tmp_path):
    rng = np.random.default_rng(0)
    n, k = 4000, 300
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    x = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8)
    page = write_cluster_report(tmp_path, x, labels, rng.normal(size=(n, 8)), k, confidence=rng.uniform(size=n))
    text = page.read_text()
    assert per_end(k) == MIN_PER_END and text.count("<img ") <= 2 * MIN_PER_END * k
    dots = re.search(r"<svg[^>]*aria-label=.map.*?</svg>", text, re.S).group(0).count('r="2.2"')
    assert 0 < dots <= MAP_POINTS and len(list(tmp_path.glob("cluster-*.jpg"))) == k


CHECK = """<script>window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  document.body.setAttribute('data-checked', document.images.length + ' images; broken: ' + broken.join(' '));
});</script></body>"""


def render(page: Path, tmp: Path) -> str:
    """The DOM of ``page`` (a copy of it that reports its images) after headless Chromium loaded it."""
    check = page.with_name("check.html")
    check.write_text(page.read_text().replace("</body>", CHECK))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
               "--virtual-time-budget=5000", "--dump-dom", check.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium_with_every_image_and_section(tmp_path, trained):
    tmp, _, _, _, _ = trained
    page = tmp / "page" / "index.html"
    dom = render(page, tmp_path)
    checked = re.search(r'data-checked="(\d+) images; broken: ([^"]*)"', dom)
    assert checked, dom[-1000:]
    shown = page.read_text().count("<img ")
    assert shown >= 16 and int(checked.group(1)) == shown and checked.group(2) == ""  # every image loaded
    for section in ("summary", "sizes", "map", "metrics", "confusion", "cluster-0", "cluster-1", "cluster-2"):
        assert f'id="{section}"' in dom, section
    assert "ACC " in dom and dom.count('class="t"') == shown
    # the check sees a missing image: a copy of the page beside one of its sprites only
    sprites = sorted(p.name for p in page.parent.glob("cluster-*"))
    (tmp_path / "copy").mkdir()
    shutil.copy(page, tmp_path / "copy" / "index.html")
    shutil.copy(page.with_name(sprites[0]), tmp_path / "copy")
    broken = re.search(r'broken: ([^"]*)"', render(tmp_path / "copy" / "index.html", tmp_path)).group(1)
    assert sprites[0] not in broken and all(name in broken for name in sprites[1:]) and len(sprites) > 1


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_page_of_a_run_that_chose_k_renders_its_curve(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    x = rng.uniform(size=(60, 6, 6, 3)).astype(np.float32)
    choice = KChoice([2, 3, 4], [0.6, 0.8, 0.7], [0.01, 0.01, 0.02], [0.9, 1.0, 0.8], k=3, resamples=4, subsample=48)
    page = write_cluster_report(tmp_path / "page", x, labels, rng.normal(size=(60, 4)), 3, k_choice=choice)
    dom = render(page, tmp_path)
    checked = re.search(r'data-checked="(\d+) images; broken: ([^"]*)"', dom)
    assert checked and checked.group(2) == "" and int(checked.group(1)) == page.read_text().count("<img ")
    assert 'id="choose-k"' in dom and 'src="choose-k.png"' in dom and "K=3 of 2..4" in dom
