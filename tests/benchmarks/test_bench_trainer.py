"""Run the Trainer-overhead benchmark in --quick mode (no timing assertion: speed is not
tested, only that the benchmark runs and reports a ratio)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
    assert result["steps"] == 5 and result["repeats"] == 2 and result["threads"] == 1
    assert len(result["ratios"]) == 2 and result["median_ratio"] > 0
    # The ratio is taken per interleaved pair, then summarised.
    assert result["median_ratio"] == statistics.median(result["ratios"])
    assert result["min_pair_ratio"] == min(result["ratios"])
    assert result["max_pair_ratio"] == max(result["ratios"])
    assert result["min_pair_ratio"] <= result["q1_ratio"] <= result["median_ratio"]
    assert result["median_ratio"] <= result["q3_ratio"] <= result["max_pair_ratio"]
    assert "median ratio trainer/hand" in proc.stdout
