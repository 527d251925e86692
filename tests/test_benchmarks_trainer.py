"""Run the Trainer-overhead benchmark in --quick mode (no timing assertion: speed is not
tested, only that the benchmark runs and reports a ratio)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_trainer_overhead_quick_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "trainer_overhead.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 5 and result["repeats"] == 2
    assert result["median_ratio"] > 0
    assert "median ratio trainer/hand" in proc.stdout
