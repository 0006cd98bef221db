"""The device check (``bench/gpu_check.py``) in its CPU mode: it must work before any device time
is spent on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["lfss", "decs pretrain", "decs clustering", "decs pretrain", "decs clustering", "dec", "idec", "dcn"]


def test_the_device_check_runs_every_step_and_torchrun_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}
    process = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["smoke"]
    assert [row["step"].split(" (")[0] for row in result["rows"]] == STEPS
    assert [row["shape"] for row in result["rows"][1:5]] == ["16x16x1", "16x16x1", "28x28x1", "28x28x1"]
    for row in result["rows"]:
        assert row["keras"] > 0 and row["torch"] > 0 and abs(row["ratio"] - row["keras"] / row["torch"]) < 1e-9
    check = result["distributed"]
    assert check["processes"] == 2 and check["world"] == 2 and check["backend"] == "gloo"
    assert len(check["losses"]) == check["steps"] == 3 and check["matches"]
    assert "matches" in process.stdout and "ratio" in process.stdout
