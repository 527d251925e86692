"""benchmarks/ema_tta.py runs end to end in --quick mode (so it cannot rot); no timing checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_ema_and_tta(tmp_path: Path) -> None:
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"),
               HF_HUB_CACHE=str(tmp_path / "hf"), TRANSFERKIT_CACHE=str(tmp_path / "tk"))
    proc = subprocess.run([sys.executable, "benchmarks/ema_tta.py", "--quick"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1].removeprefix("RESULT "))
    assert (result["n_train"], result["n_val"], result["n_test"]) == (64, 32, 32)
    plain, ema = result["rows"]
    assert (plain["arm"], ema["arm"]) == ("plain", "ema") and plain["steps"] == ema["steps"]
    for row in (plain, ema):
        for mode in ("none", "flip", "crops", "flip+crops"):
            assert 0 <= row[f"test_{mode}"] <= 1 and row[f"test_{mode}_s"] > 0
    assert "last_ema_acc" in ema and "last_ema_acc" not in plain
    assert "| seed | arm |" in proc.stdout and "flip - none, test accuracy per class" in proc.stdout
