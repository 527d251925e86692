"""benchmarks/time_to_accuracy.py runs end to end in --quick mode (so it cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_DATA = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists()


@pytest.mark.skipif(not HAS_DATA, reason="dataset-fashion-mnist not installed")
def test_quick_time_to_accuracy(tmp_path: Path) -> None:
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"),
               HF_HUB_CACHE=str(tmp_path / "hf"), TRANSFERKIT_CACHE=str(tmp_path / "tk"))
    proc = subprocess.run([sys.executable, "benchmarks/time_to_accuracy.py", "--quick",
                           "--threads", "1"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("seed recipe") and lines[2].startswith("transferkit example")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["backbone"] == "efficientnet_lite0"
    assert 0 <= result["seed_test_acc"] <= 1 and 0 <= result["example_test_acc"] <= 1
    assert result["seed_wall_s"] > 0 and result["example_wall_s"] > 0
    if result["time_to_seed_acc_s"] is not None:
        assert result["ratio_to_seed_wall"] == pytest.approx(
            result["time_to_seed_acc_s"] / result["seed_wall_s"], rel=0.05)
