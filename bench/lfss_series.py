"""A long LFSS series on CIFAR-10: BYOL, L_S alone and LFSS for 200 epochs, with learning curves.

GitHub issue "LFSS beats BYOL on CIFAR-10 at a scale where BYOL learns": the 10-epoch ablation
(``bench/lfss_ablation.py``) stops where BYOL has barely left raw-pixel k-means. This series
trains the same three variants (``byol``: ``--no-stability --sigma 0``; ``ls``:
``--no-stability``; ``lfss``: the full loss) on ``cifar10-jpg`` (10,000 images) for 200 epochs,
seeds 0 and 1, seed-major (seed 0: byol, ls, lfss; then seed 1), so that a partial series compares
the variants on the same seed. Every run has the same backbone: the ``cpu`` preset (ResNet-18,
batch 128, hidden 512, dim 128, momentum 0.99) at ``--width`` (default :data:`WIDTH`).

η (the warm-up epochs before the cluster-level loss L_C) is scaled with the schedule: the paper
turns L_C on after 200 of its 1000 CIFAR-10 epochs, a fifth of the schedule, so 40 of 200 here
(``--eta``; the ``cpu`` preset's own 5 of 10 epochs would be half). η changes only ``lfss``, but
it is set, and keyed, for all three so that the runs differ in their losses alone.

Width: the issue asks for the largest width at which one epoch takes at most about 25 s on the
two cores. Measured here (the ``cpu`` preset on cifar10-jpg, batch 128, 79 steps an epoch,
``OMP_NUM_THREADS=1``, η = 40 so no k-means at the epoch ends, another engineer's pytest and
``cli.py decs`` busy on the other core, load average 1.3-2.0):

=======  ========  ==================  =================================
width    variant   channels            seconds per epoch (1 thread)
=======  ========  ==================  =================================
0.125    lfss      8, 16, 32, 64       62.1, 66.7 (epochs 1 and 2)
0.125    byol      8, 16, 32, 64       47.6 (epoch 1)
0.25     lfss      16, 32, 64, 128     150.5 (epoch 1)
=======  ========  ==================  =================================

(0.1875, channels 12, 24, 48, 96, lies between the two and was not timed.) No candidate reaches
25 s at one thread beside other work, so the series keeps the ``cpu`` preset's 0.125, the
smallest; after η, LFSS adds a k-means and two embeddings of the 10,000 images per epoch. At
about 50-65 s an epoch, the six runs take about 20 hours.

What each run records:

- a curve point every ``--record-every`` epochs (20) and at the last one, appended (flushed) to
  ``--curve`` as soon as it is measured, keyed by (variant, seed, width, epochs, eta, limit,
  epoch): k-means ACC/NMI/ARI on the target embeddings (mean of ``--kmeans-runs`` runs, 3),
  k-NN accuracy, mean stability and its 10/50/90% quantiles, the accuracy of one k-means run's
  labels in each stability decile (``acc_by_stability_decile``, least stable first: the LFSS
  paper's Observation 1; in points measured since it was added), whether L_C is on from there
  (``cluster_active``: from the end of epoch η for ``lfss``), the epoch's mean losses as the
  run logs them (``loss``, ``l_s``, ``l_i``, ``l_c``, and ``mean_stability`` once L_C is on:
  what a verdict needs to say which term does what), and the training seconds so far. A point already in the file
  is neither measured nor written again. The checkpoint of an epoch is written before its
  point is measured, so a run killed in between resumes after that epoch: it then measures the
  missing point at its start, without the stability (its predecessor has already become the
  target);
- with each curve point, a copy of the run's checkpoint of that epoch (weights, optimizer,
  generators, pseudo-labels) in ``<models-dir>/snapshots/<run>/e<epoch>``: a later analysis
  (the losses' gradients, say) or a branch run (another η or δ from epoch 40) starts from
  there without touching the series;
- when the run finishes, a row in ``--results``: the final model's ACC/NMI/ARI as the user sees
  them (``run_lfss``'s evaluation, mean of 10 k-means runs), the last curve point's k-NN
  accuracy and stability, the training seconds (and the number of epochs timed), the number of
  attempts (starts of the run, resumes included) and ``OMP_NUM_THREADS``. Finished runs are skipped.

The observer only observes: it embeds the images in inference mode without gradients
(``model.embed``, ``model.predecessor_embed``: moving statistics read, not updated), clusters
with k-means that draws from its own ``torch.Generator``, and computes the k-NN accuracy with
plain matrix products; it draws from no generator the training uses and writes no model state.

- k-NN accuracy: cosine similarity of the target embeddings, k = 20, leave-one-out over all the
  images, majority vote (a tie goes to the smallest label).
- Stability: the mean over the images of ``cos(f_t(x), f_p(x))``, the target's embedding at the
  end of the epoch against the predecessor's (the target at the end of the previous epoch), as
  ``LFSSModel.refresh_pseudo_labels`` measures it. The run's own epoch-end callback copies the
  target into the predecessor before this observer's ``on_epoch_end`` runs, so the predecessor's
  embeddings are taken at the start of the epoch, when the predecessor is the same network
  (it does not change during an epoch). For ``lfss`` after η this is the ``mean_stability``
  that the run logs.
- Training seconds: each finished epoch's wall time, from the start of the epoch to the end of
  the run's own epoch-end work (LFSS's k-means and predecessor copy, the checkpoint), without the
  observation, kept per epoch in ``<model>.timing.json`` beside the run's model file (rewritten
  at every epoch end), so the total survives any number of resumes. The part of an epoch that a
  kill interrupts is not counted (the resumed run trains that epoch again, and counts it then);
  an epoch killed between its checkpoint and its timing is never counted (``timed_epochs``
  in the results row is then below ``epochs``).

A branch (``--variants lfss-no-lc``: LFSS with η at the run's epochs, so L_I without L_C, the
question of which LFSS term does what) starts from its parent's last snapshot before η (epoch 20
of ``lfss``), not from scratch: η has changed nothing before then (the pseudo-labels start at
the end of epoch η), so the branch is the run it would be from scratch (checked on a small
version, 64 images, 4 epochs, η = 2, against ``--eta 4`` from scratch: every curve point, loss
and final figure identical). The parent's curve points and epoch timings up to there
become the branch's.

Resumable: each run writes a checkpoint every epoch (``--models-dir``) and is resumed from it
(LFSS resumes bit-identically); a killed series, started again with the same command, goes on
with the run it was in. Start (or resume) the series in the background, from the project's root:

    DEEPSTAB_DATA=../shared/data OMP_NUM_THREADS=1 nohup python bench/lfss_series.py > lfss_series.log 2>&1 &

Two processes, one thread each, can share the series when each is given its own runs
(``--variants``, ``--seeds``), e.g. ``--variants lfss --seeds 0`` beside the command above,
which then skips that run once it is recorded. A run started by two processes at once stops in
the second with the run's own output-lock error. Resume a run at the thread count it started
with: seeds do not carry across thread counts.

Print the table, the runs done and in progress, and write ``docs/lfss_series_acc.png``:

    python bench/lfss_series.py --table-only

For reference, k-means on the raw pixels of cifar10-jpg reaches ACC 0.205 ± 0.000 (NMI 0.084,
ARI 0.043; mean of 3 runs, about 2.5 min of CPU), :data:`RAW_KMEANS_ACC` in the table and plot:

    DEEPSTAB_DATA=../shared/data OMP_NUM_THREADS=1 python bench/raw_kmeans.py cifar10-jpg --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

import keras
import numpy as np
import torch
from results import append_result, read_results, recorded

from deepstab import datasets
from deepstab.analysis.measures import accuracy_by_stability, cosine_stability
from deepstab.checkpoint import METADATA
from deepstab.io import atomic_path
from deepstab.methods.lfss import EVALUATION_SEEDS, LFSSModel
from deepstab.runs.common import checkpoint_folder
from deepstab.runs.lfss import LFSSRun, run_lfss

DATASET = "cifar10-jpg"
PRESET = "cpu"
WIDTH = 0.125
EPOCHS = 200
ETA = 40  # the paper's 200 of 1000 epochs, scaled to 200
SEEDS = (0, 1)
VARIANTS: dict[str, dict[str, bool | float | None]] = {
    "byol": {"stability": False, "sigma": 0.0},
    "ls": {"stability": False},
    "lfss": {},
    "lfss-no-lc": {"eta": None},  # η = the run's epochs: LFSS's L_I without L_C
}
SERIES = ("byol", "ls", "lfss")  # the runs the issue asks for; the others run when named
# A branch starts from its parent's last snapshot before η, where nothing has yet depended on
# η (no pseudo-labels), so it is the run it would be from scratch, 20 epochs sooner.
BRANCHES = {"lfss-no-lc": "lfss"}
NAMES = {"byol": "BYOL", "ls": "L_S alone", "lfss": "LFSS", "lfss-no-lc": "LFSS without L_C"}
KNN_K = 20
QUANTILES = (0.1, 0.5, 0.9)  # of the per-sample stability in a curve point
LOGGED = ("loss", "l_s", "l_i", "l_c", "mean_stability")  # epoch means a curve point keeps
RAW_KMEANS_ACC = 0.205  # k-means on the raw pixels of cifar10-jpg, mean of 3 runs (see the docstring)
PLOT = Path("docs/lfss_series_acc.png")


def series_key(args: argparse.Namespace, variant: str, seed: int) -> dict:
    """The fields that identify one run in the results and curve files."""
    return {"variant": variant, "seed": seed, **settings(args)}


def settings(args: argparse.Namespace) -> dict:
    """The fields that every run of this series shares."""
    return {"width": args.width, "epochs": args.epochs, "eta": args.eta, "limit": args.limit}


def matching(rows: list[dict], **fields) -> list[dict]:
    """The rows with these field values."""
    return [r for r in rows if recorded([r], **fields)]


def series_data(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The series' images and labels: all of :data:`DATASET`, or ``limit`` images evenly spaced
    over it (the images are ordered by class)."""
    x, y = datasets.load(DATASET, stream=True)
    if limit:
        index = np.linspace(0, len(x) - 1, limit).round().astype(np.int64)
        x, y = x[index], y[index]
    return x, y


def model_path(args: argparse.Namespace, variant: str, seed: int) -> Path:
    size = f"-n{args.limit}" if args.limit else ""
    return Path(args.models_dir) / f"lfss-{variant}-w{args.width:g}-e{args.epochs}-eta{args.eta}{size}-s{seed}.keras"


def timing_path(model_file: Path) -> Path:
    """The sidecar beside a run's model file that keeps its training seconds per epoch."""
    return model_file.with_suffix(".timing.json")


def checkpoint_epoch(model_file: Path) -> int | None:
    """The epochs done in the checkpoint of the run on ``model_file``; ``None`` without one."""
    metadata = checkpoint_folder(model_file) / METADATA
    return json.loads(metadata.read_text())["epoch"] if metadata.exists() else None


def knn_accuracy(z: np.ndarray, y: np.ndarray, k: int = KNN_K, chunk: int = 1024) -> float:
    """Leave-one-out k-NN accuracy: cosine similarity, majority vote of the ``k`` nearest other
    samples (a tie goes to the smallest label), computed in chunks of rows."""
    unit = torch.nn.functional.normalize(torch.as_tensor(z, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    classes = int(labels.max()) + 1
    correct = 0
    for start in range(0, len(unit), chunk):
        rows = torch.arange(start, min(start + chunk, len(unit)))
        similarity = unit[rows] @ unit.T
        similarity[torch.arange(len(rows)), rows] = -torch.inf  # leave the sample itself out
        votes = labels[similarity.topk(k, dim=1).indices]
        counts = torch.zeros(len(rows), classes).scatter_add_(1, votes, torch.ones(votes.shape))
        correct += int((counts.argmax(dim=1) == labels[rows]).sum())
    return correct / len(unit)


def observe(model: LFSSModel, x: np.ndarray, y: np.ndarray, previous: np.ndarray | None, runs: int) -> dict:
    """What a curve point holds, measured on the target network as it is now; ``previous``, the
    predecessor's embeddings, gives the stability (``None`` without them)."""
    z = model.embed(x)
    metrics = model.evaluate_clustering(x, y, runs=runs, embeddings=z)
    stability = cosine_stability(z, previous) if previous is not None else None
    by_decile = None
    if stability is not None:  # Observation 1: are the stable samples the well clustered ones?
        labels = model.predict_labels(None, seed=EVALUATION_SEEDS[0], embeddings=z)
        by_decile = [b["accuracy"] for b in accuracy_by_stability(stability, labels, y)["bins"]]
    return {
        "acc": metrics["acc"],
        "nmi": metrics["nmi"],
        "ari": metrics["ari"],
        "knn": knn_accuracy(z, y),
        "stability": None if stability is None else float(np.mean(stability)),
        "stability_quantiles": None if stability is None else [float(q) for q in np.quantile(stability, QUANTILES)],
        "acc_by_stability_decile": by_decile,
        "cluster_active": model.cluster_active,
    }


class SeriesObserver(keras.callbacks.Callback):
    """Times the training epochs (into the run's sidecar) and records curve points; changes nothing."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        key: dict,
        curve: Path,
        timing: Path,
        every: int,
        runs: int,
        restored: int,
        checkpoint: Path,
        snapshots: Path,
    ):
        super().__init__()
        self.x, self.y, self.key, self.curve, self.timing_file = x, y, key, curve, timing
        self.checkpoint, self.snapshots = checkpoint, snapshots
        self.every, self.runs, self.restored = every, runs, restored
        self.points = matching(read_results(curve), **key)
        self.timing = json.loads(timing.read_text()) if timing.exists() else {"epoch_seconds": {}, "attempts": 0}
        self._previous: np.ndarray | None = None
        self._started = 0.0

    def training_seconds(self, up_to: int) -> float:
        """The training seconds of epochs 1 to ``up_to``."""
        return sum(s for e, s in self.timing["epoch_seconds"].items() if int(e) <= up_to)

    def missing(self, epoch: int) -> bool:
        """Whether ``epoch`` (finished epochs) is due a curve point that the curve file lacks."""
        due = epoch % self.every == 0 or epoch == self.params["epochs"]
        return epoch > 0 and due and not recorded(self.points, **self.key, epoch=epoch)

    def snapshot(self, epoch: int) -> None:
        """Copy the run's checkpoint of ``epoch`` (weights, optimizer, generators, pseudo-labels)
        to ``<snapshots>/e<epoch>``: a whole checkpoint folder, from which an analysis or a
        branch run can start at that epoch. Copied under a temporary name and renamed, so a
        snapshot folder is complete or absent; none when the checkpoint holds another epoch."""
        target = self.snapshots / f"e{epoch:03d}"
        metadata = self.checkpoint / METADATA
        files = json.loads(metadata.read_text()) if metadata.exists() else {}
        if target.exists() or files.get("epoch") != epoch:
            return
        partial = self.snapshots / f".e{epoch:03d}.part"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in (files["weights"], files["state"], METADATA):
            shutil.copy2(self.checkpoint / name, partial / name)
        partial.rename(target)

    def save_timing(self) -> None:
        with atomic_path(self.timing_file) as partial:
            partial.write_text(json.dumps(self.timing))

    def on_train_begin(self, logs=None):
        self.timing["attempts"] += 1
        self.save_timing()
        # A run killed after a checkpoint and before that epoch's point was appended: measured
        # now, without the stability (the predecessor has become the target).
        if self.missing(self.restored):
            self.record(self.model, self.restored, None)

    def on_epoch_begin(self, epoch, logs=None):
        # The predecessor is the target at the end of the previous epoch until this epoch ends.
        self._previous = self.model.predecessor_embed(self.x) if self.missing(epoch + 1) else None
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.timing["epoch_seconds"][str(epoch + 1)] = time.perf_counter() - self._started
        self.save_timing()
        if self._previous is not None:
            self.record(self.model, epoch + 1, self._previous, logs)

    def record(self, model: LFSSModel, epoch: int, previous: np.ndarray | None, logs: dict | None = None) -> None:
        """Measure and append the curve point of ``epoch``, with the epoch's mean losses where
        its logs are at hand (not for a point measured after a resume)."""
        start = time.perf_counter()
        point = {**self.key, "epoch": epoch, **observe(model, self.x, self.y, previous, self.runs)}
        if logs:
            point["losses"] = {name: float(logs[name]) for name in LOGGED if name in logs}
        point |= {"training_seconds": self.training_seconds(epoch), "kmeans_runs": self.runs}
        append_result(self.curve, point)
        self.points.append(point)
        self.snapshot(epoch)
        print(f"curve point {json.dumps(point)} ({time.perf_counter() - start:.0f} s)", flush=True)


def branch(args: argparse.Namespace, variant: str, seed: int, overrides: dict) -> None:
    """Start the branch ``variant`` from its parent's last snapshot before η: the snapshot
    becomes the branch's checkpoint (its settings changed by ``overrides``, which
    :meth:`Checkpoint.restore` then checks against the run's own), and the parent's curve points
    and epoch timings up to there become the branch's. Does nothing once the branch has a
    checkpoint; fails with a clear message when the parent has no such snapshot yet."""
    path = model_path(args, variant, seed)
    if checkpoint_epoch(path) is not None:
        return
    parent = model_path(args, BRANCHES[variant], seed)
    folders = parent.parent / "snapshots" / parent.stem
    epochs = sorted(int(f.name[1:]) for f in folders.glob("e[0-9][0-9][0-9]") if int(f.name[1:]) < args.eta)
    if not epochs:
        raise SystemExit(
            f"{variant} seed {seed} branches from {BRANCHES[variant]} seed {seed}'s last snapshot before "
            f"η = {args.eta}, and {folders} holds none yet: run {BRANCHES[variant]} seed {seed} past it first."
        )
    epoch = epochs[-1]
    source, target = folders / f"e{epoch:03d}", checkpoint_folder(path)
    partial = target.with_name(target.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    metadata = json.loads((partial / METADATA).read_text())
    metadata["settings"] |= overrides
    (partial / METADATA).write_text(json.dumps(metadata))
    parent_key, key = series_key(args, BRANCHES[variant], seed), series_key(args, variant, seed)
    points = read_results(args.curve)
    have = matching(points, **key)
    for point in matching(points, **parent_key):
        if point["epoch"] <= epoch and not recorded(have, epoch=point["epoch"]):
            append_result(args.curve, point | key | {"branched_from": BRANCHES[variant]})
    timing = json.loads(timing_path(parent).read_text())
    kept = {e: t for e, t in timing["epoch_seconds"].items() if int(e) <= epoch}
    timing_path(path).write_text(json.dumps({"epoch_seconds": kept, "attempts": 0}))
    partial.rename(target)  # the commit: from here on the branch resumes as any run
    print(f"{variant} seed {seed}: branched from {source}", flush=True)


def train(args: argparse.Namespace, variant: str, seed: int, x: np.ndarray, y: np.ndarray) -> dict:
    """Train (or resume) one run of the series and return its results row."""
    key = series_key(args, variant, seed)
    path = model_path(args, variant, seed)
    overrides = {"eta": args.eta} | VARIANTS[variant]
    if overrides["eta"] is None:
        overrides["eta"] = args.epochs
    if variant in BRANCHES:
        branch(args, variant, seed, {k: v for k, v in overrides.items() if k in VARIANTS[variant]})
    restored = checkpoint_epoch(path) or 0
    curve, every, runs = Path(args.curve), args.record_every, args.kmeans_runs
    snapshots = path.parent / "snapshots" / path.stem
    observer = SeriesObserver(
        x, y, key, curve, timing_path(path), every, runs, restored, checkpoint_folder(path), snapshots
    )
    run = LFSSRun(
        dataset=DATASET,
        preset=PRESET,
        width=args.width,
        epochs=args.epochs,
        seed=seed,
        output=str(path),
        models_dir=args.models_dir,
        checkpoint_every=1,
        resume=True,
        verbose=2,
        **overrides,
    )
    result = run_lfss(run, callbacks=[observer], data=(x, y))
    last = matching(observer.points, epoch=args.epochs)[0]
    return {
        "dataset": DATASET,
        **key,
        "acc": result.metrics["acc"],
        "nmi": result.metrics["nmi"],
        "ari": result.metrics["ari"],
        "eval_runs": run.eval_runs,
        "knn": last["knn"],
        "stability": last["stability"],
        "training_seconds": observer.training_seconds(args.epochs),
        "timed_epochs": len(observer.timing["epoch_seconds"]),
        "attempts": observer.timing["attempts"],
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }


def mean_std(values: list, digits: int = 3) -> str:
    """``mean ± std`` over the seeds (the population std, as every bench table here), the value
    alone for one seed."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:,.{digits}f}" if values else "-"
    return f"{np.mean(values):,.{digits}f} ± {np.std(values):,.{digits}f}"


def table(rows: list[dict]) -> str:
    """Per variant, the mean ± std over the seeds of the final results."""
    lines = [
        "| run | ACC (each seed) | ACC | NMI | ARI | k-NN (k=20) | stability | training | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        runs = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["seed"])
        if not runs:
            continue
        cells = [mean_std([r[m] for r in runs]) for m in ("acc", "nmi", "ari", "knn", "stability")]
        seconds = mean_std([r["training_seconds"] for r in runs], 0) + " s"
        seeds = ",".join(str(r["seed"]) for r in runs)
        each = " / ".join(f"{r['acc']:.3f}" for r in runs)
        lines.append(f"| {NAMES[variant]} | {each} | {' | '.join(cells)} | {seconds} | {seeds} |")
    return "\n".join(lines)


def progress(args: argparse.Namespace, rows: list[dict], points: list[dict]) -> list[str]:
    """One line per run of the series: done, in progress (its checkpoint and last point), or not started."""
    lines = []
    for seed in args.seeds:
        for variant in args.variants:
            key = series_key(args, variant, seed)
            if recorded(rows, **key):
                state = "done"
            else:
                epoch = checkpoint_epoch(model_path(args, variant, seed))
                last = max((p["epoch"] for p in matching(points, **key)), default=None)
                state = "not started" if epoch is None and last is None else f"in progress: checkpoint at epoch {epoch}"
                state += f", last curve point at epoch {last}" if last is not None else ""
            lines.append(f"{NAMES[variant]} seed {seed}: {state}")
    return lines


def curve_table(points: list[dict]) -> str:
    """Per curve epoch and variant, k-means ACC, k-NN accuracy and mean stability, each seed's
    value (seed order) separated by slashes."""
    variants = [v for v in VARIANTS if any(p["variant"] == v for p in points)]
    header = " | ".join(f"{NAMES[v]} {m}" for v in variants for m in ("ACC", "k-NN", "stability"))
    lines = [f"| epoch | {header} |", "|---|" + "---|" * 3 * len(variants)]
    for epoch in sorted({p["epoch"] for p in points}):
        cells = []
        for variant in variants:
            mine = sorted(
                (p for p in points if p["variant"] == variant and p["epoch"] == epoch), key=lambda p: p["seed"]
            )
            for measure in ("acc", "knn", "stability"):
                values = [f"{p[measure]:.3f}" for p in mine if p[measure] is not None]
                cells.append(" / ".join(values) or "-")
        lines.append(f"| {epoch} | {' | '.join(cells)} |")
    return "\n".join(lines)


def decile_table(points: list[dict]) -> str:
    """The accuracy of one k-means run's labels in each stability decile (least stable first),
    per curve point that holds it."""
    lines = [
        "| run | seed | epoch | " + " | ".join(f"d{d}" for d in range(1, 11)) + " |",
        "|---|---|---|" + "---|" * 10,
    ]
    for p in sorted(points, key=lambda p: (list(VARIANTS).index(p["variant"]), p["seed"], p["epoch"])):
        if p.get("acc_by_stability_decile"):
            cells = " | ".join(f"{a:.3f}" for a in p["acc_by_stability_decile"])
            lines.append(f"| {NAMES[p['variant']]} | {p['seed']} | {p['epoch']} | {cells} |")
    return "\n".join(lines)


def plot(args: argparse.Namespace, points: list[dict], path: Path) -> None:
    """k-means ACC (left) and k-NN accuracy (right) against epoch: per variant the mean over
    the seeds (thick) and each seed (thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    measures = (
        ("acc", f"k-means ACC on the target embeddings ({args.kmeans_runs} runs)"),
        ("knn", "k-NN accuracy (k = 20)"),
    )
    for ax, (measure, label) in zip(axes, measures):
        for colour, variant in zip(("tab:blue", "tab:orange", "tab:green", "tab:red"), VARIANTS):
            mine = [p for p in points if p["variant"] == variant]
            if not mine:
                continue
            for seed in sorted({p["seed"] for p in mine}):
                curve = sorted((p["epoch"], p[measure]) for p in mine if p["seed"] == seed)
                ax.plot(*zip(*curve), color=colour, linewidth=0.8, alpha=0.45)
            epochs = sorted({p["epoch"] for p in mine})
            means = [np.mean([p[measure] for p in mine if p["epoch"] == e]) for e in epochs]
            ax.plot(epochs, means, color=colour, linewidth=2.2, marker="o", markersize=3, label=NAMES[variant])
        if measure == "acc" and not args.limit:
            ax.axhline(RAW_KMEANS_ACC, color="grey", linestyle="--", linewidth=1, label="k-means on raw pixels")
        ax.axvline(args.eta, color="grey", linestyle=":", linewidth=1, label=f"η = {args.eta}: LFSS's L_C on after it")
        ax.set_xlim(0, args.epochs)
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    images = f"{args.limit} images" if args.limit else "10,000 images"
    fig.suptitle(
        f"{DATASET} ({images}), ResNet-18 x{args.width:g}, {args.epochs} epochs: mean over seeds, seeds thin",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, dpi=120)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    """Print the table, the state of every run and the curve points, and write the plot."""
    rows = matching(read_results(args.results), **settings(args))
    points = matching(read_results(args.curve), **settings(args))
    print(table(rows))
    if not args.limit:
        print(f"\nk-means on the raw pixels of {DATASET}: ACC {RAW_KMEANS_ACC:.3f}")
    print("\n" + "\n".join(progress(args, rows, points)))
    if points:
        print("\nThe curve points (each seed's value, seed order):\n" + curve_table(points))
        print("\nAccuracy by stability decile, least stable first (Observation 1):\n" + decile_table(points))
        plot(args, points, Path(args.plot))
        print(f"\nWrote {args.plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=WIDTH, help="ResNet-18 channel multiplier of every run")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--eta", type=int, default=ETA, help="warm-up epochs before L_C (the paper's 1/5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(SERIES),
        help="runs of each seed (a branch after its parent)",
    )
    parser.add_argument("--record-every", type=int, default=20, help="epochs between curve points")
    parser.add_argument("--kmeans-runs", type=int, default=3, help="k-means runs averaged in a curve point")
    parser.add_argument(
        "--limit", type=int, default=None, help="train on N images evenly spaced over the set (smoke tests)"
    )
    parser.add_argument("--results", default="docs/data/lfss_series.jsonl")
    parser.add_argument("--curve", default="docs/data/lfss_series_curve.jsonl")
    parser.add_argument("--models-dir", default="models/lfss-series")
    parser.add_argument("--plot", default=str(PLOT))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        x, y = series_data(args.limit)
        for seed in args.seeds:  # seed-major, so a partial series compares the variants on the same seed
            for variant in args.variants:
                if recorded(read_results(args.results), **series_key(args, variant, seed)):
                    continue
                row = train(args, variant, seed, x, y)
                print(json.dumps(row), flush=True)
                append_result(args.results, row)
    report(args)


if __name__ == "__main__":
    main()
