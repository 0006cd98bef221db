"""Kill DECS and LFSS runs at random moments (SIGKILL, during training, evaluation and saving)
and resume them each time; then check what a user would find.

For each method, the same command (tiny data, tiny networks) is started again and again; each
attempt is killed after a random delay, until ``--kills`` kills have landed. An attempt that
finishes before its kill completes the run: its results are checked and removed, and the next
attempt starts a new run. After the last kill the run is let finish, and checked:

- the saved model loads, and labels the data as its labels CSV says;
- the labels CSV holds one row per image;
- no temporary file (``.part-``), lock or checkpoint is left behind;
- no run started again from scratch: across the attempts of one run, each stage ran at most
  its epochs plus one per kill (a kill loses at most the epoch in progress);
- its labels CSV (labels and confidences) is byte-identical to that of the same command run
  once without interruption: a killed and resumed run ends as the uninterrupted one.

It prints a table with a row per kill (when it landed, in which stage and epoch, whether the next
attempt resumed rather than started over, and whether the run it belonged to ended identical),
as markdown with ``--markdown``.

    python bench/soak.py --kills 20                # DECS and LFSS, 20 kills each
    python bench/soak.py --methods decs --kills 5
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "decs": ["--pretrain-epochs", "12", "--pretrain-batch-size", "32", "--cluster-epochs", "12", "--batch-size", "64"],
    "lfss": ["--preset", "cpu", "--epochs", "12", "--width", "0.0625", "--hidden", "16", "--dim", "8"]
    + ["--batch-size", "32", "--eta", "2", "--eval-runs", "2", "--resume"],
}
STAGES = {"decs": ("Pretraining", "Clustering"), "lfss": ("LFSS",)}


def make_data(folder: Path, seed: int) -> Path:
    """240 tiny 16x16 RGB images in 3 separable groups."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 80)
    x = rng.uniform(0, 0.2, size=(240, 16, 16, 3)).astype(np.float32)
    for label, corner in enumerate(((0, 0), (8, 8), (0, 8))):
        x[y == label, corner[0] : corner[0] + 8, corner[1] : corner[1] + 8, label] += 0.7
    path = folder / "soak.npz"
    np.savez(path, x=np.clip(x, 0, 1), y=y)
    return path


def attempt(command: list[str], delay: float | None) -> tuple[str, bool]:
    """Run ``command``; SIGKILL it after ``delay`` seconds (``None``: let it finish). Returns its
    output and whether it was killed."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", DEEPSTAB_CHECKPOINT_SECONDS="0"),
    )
    try:
        output, _ = process.communicate(timeout=delay)
        return output, False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate()
        return output, True


def epochs_run(outputs: list[str], method: str) -> dict[str, int]:
    """Epochs each stage ran across the attempts of one run (``Epoch i/N`` lines per stage)."""
    counts = dict.fromkeys(STAGES[method], 0)
    for output in outputs:
        stage = None
        for line in output.splitlines():
            stage = next((s for s in STAGES[method] if line.startswith(s)), stage)
            if stage and re.match(r"Epoch \d+/\d+", line):
                counts[stage] += 1
    return counts


def last_epoch(output: str, method: str) -> str:
    """The stage and epoch an attempt had reached when it ended (``"start-up"`` before any)."""
    where, stage = "start-up", None
    for line in output.splitlines():
        stage = next((s for s in STAGES[method] if line.startswith(s)), stage)
        found = re.match(r"Epoch (\d+/\d+)", line)
        if stage and found:
            where = f"{stage.lower()} {found.group(1)}"
    return where


def resumed(output: str, method: str) -> bool | None:
    """Whether an attempt went on from a checkpoint (its first epoch line is not epoch 1, or it
    reused the pretrained autoencoder); ``None`` when it was killed before showing either."""
    first = re.search(r"Epoch (\d+)/\d+", output)
    if "Reusing the pretrained autoencoder" in output or (first and first.group(1) != "1"):
        return True
    return False if first else None


def check(method: str, work: Path, outputs: list[str], kills: int, n_images: int, reference: str) -> list[str]:
    """What is wrong with the finished run's results (nothing: an empty list)."""
    import deepstab  # noqa: F401  (selects the torch backend)
    from deepstab import datasets
    from deepstab.io import load_model

    problems = []
    out = work / "model.keras"
    try:
        model = load_model(out)
        rows = np.loadtxt(out.with_suffix(".csv"), delimiter=",", skiprows=1, ndmin=2)
        if len(rows) != n_images:
            problems.append(f"the labels CSV holds {len(rows)} rows, not {n_images}")
        x, _ = datasets.load(f"npz:{work.parent / 'soak.npz'}")
        predicted, _ = model.predict_clusters(x)
        if not np.array_equal(predicted, rows[:, 1].astype(np.int64)):
            problems.append("the saved model labels the data differently from its labels CSV")
    except Exception as exc:  # the check reports every failure, whatever its type
        problems.append(f"the results cannot be read back ({type(exc).__name__}: {exc})")
    left = [p.name for p in work.rglob("*") if ".part-" in p.name or p.name.endswith(".lock")]
    left += [p.name for p in work.iterdir() if p.name.startswith(".checkpoint-")]
    if left:
        problems.append(f"left behind: {', '.join(sorted(left))}")
    limit = {"Pretraining": 12, "Clustering": 12, "LFSS": 12}
    for stage, count in epochs_run(outputs, method).items():
        if count > limit[stage] + kills:
            problems.append(f"{stage} ran {count} epochs for {limit[stage]} and {kills} kills: it restarted")
    if out.with_suffix(".csv").exists() and out.with_suffix(".csv").read_text() != reference:
        problems.append("its labels differ from the uninterrupted run's")
    return problems


def uninterrupted(command: list[str], folder: Path) -> str:
    """The labels CSV of ``command`` run once without a kill, in ``folder``."""
    output, _ = attempt([*command, "--output", str(folder / "model.keras"), "--models-dir", str(folder)], None)
    if "Saved the model" not in output:
        sys.exit(f"the uninterrupted run failed:\n{output[-1500:]}")
    return (folder / "model.csv").read_text()


def soak(method: str, kills: int, folder: Path, rng: random.Random, data: Path) -> dict:
    work = folder / method
    command = [sys.executable, str(ROOT / "cli.py"), method, "--dataset", f"npz:{data}", *COMMANDS[method]]
    reference = uninterrupted(command, folder / f"{method}-uninterrupted")
    command += ["--output", str(work / "model.keras"), "--models-dir", str(work)]
    landed, runs, problems, outputs, run_kills, rows, pending = 0, 0, [], [], 0, [], []
    while True:
        finishing = landed >= kills
        delay = None if finishing else rng.uniform(4.0, 30.0)
        output, killed = attempt(command, delay)
        went_on = resumed(output, method)
        for row in pending:  # the kills before this attempt: did the run go on from its checkpoint?
            if row.get("resumed") is None:
                row["resumed"] = went_on
        outputs.append(output)
        if killed and "Saved the model" in output:  # the run had finished: only its exit was cut short
            killed = False
            landed += 1
            rows.append({"kill": landed, "run": runs + 1, "seconds": round(delay, 1), "where": "after saving"})
            rows[-1] |= {"saved": True, "resumed": True}
            pending.append(rows[-1])
        if killed:
            landed += 1
            run_kills += 1
            saved = any(work.glob(".checkpoint-*")) or any(work.glob("*-ae-*.keras"))  # anything to go on from
            row = {"kill": landed, "run": runs + 1, "seconds": round(delay, 1), "where": last_epoch(output, method)}
            row["saved"] = saved
            rows.append(row)
            pending.append(row)
            continue
        if "Saved the model" not in output:
            problems.append(f"an attempt failed:\n{output[-1500:]}")
            break
        runs += 1
        found = check(method, work, outputs, run_kills, 240, reference)
        problems += [f"run {runs}: {p}" for p in found]
        for row in pending:
            row["identical"] = not any("differ from the uninterrupted" in p for p in found)
        pending = []
        if finishing:
            break
        shutil.rmtree(work)  # the run finished before a kill: the next attempt starts a new run
        outputs, run_kills = [], 0
    return {"method": method, "kills": landed, "runs": runs, "problems": problems, "rows": rows}


def kill_table(method: str, rows: list[dict]) -> str:
    """A markdown row per kill."""
    lines = ["| method | kill | run | after s | reached | next attempt | final labels identical |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        went_on = "resumed" if r.get("resumed") else "started over" + (" (nothing saved yet)" if not r["saved"] else "")
        went_on = "finished" if r["where"] == "after saving" else went_on
        same = "yes" if r.get("identical") else "no"
        lines.append(f"| {method} | {r['kill']} | {r['run']} | {r['seconds']} | {r['where']} | {went_on} | {same} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["decs", "lfss"], choices=sorted(COMMANDS))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="also print the table of kills as markdown")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="deepstab-soak-") as tmp:
        folder = Path(tmp)
        data = make_data(folder, args.seed)
        print("method  kills survived  runs completed  runs lost  problems")
        start = time.time()
        for method in args.methods:
            result = soak(method, args.kills, folder, rng, data)
            lost = len({p.split(":")[0] for p in result["problems"]})
            print(
                f"{method:<8}{result['kills']:>14}{result['runs']:>16}{lost:>11}  {len(result['problems'])}", flush=True
            )
            for problem in result["problems"]:
                print(f"  - {problem}")
            if args.markdown:
                print(kill_table(method, result["rows"]), flush=True)
        print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
