"""Run the linear-probe benchmark in --quick mode in a subprocess (no timing assertion:
speed is not tested here, only that both probes run and the report is well formed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_linear_probe_quick_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_probe.py"), "--quick"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["model"] == "efficientnet_lite0" and result["epochs"] == 1
    assert result["n_train"] == 64 and result["n_val"] == 32
    rows = {}
    for line in lines:
        match = re.match(r"^(cached features|frozen body each epoch)\s*\|\s*([\d.]+)\s*\|"
                         r"\s*([\d.]+)\s*\|\s*([\d.]+)$", line)
        if match:
            rows[match.group(1)] = [float(v) for v in match.groups()[1:]]
    assert set(rows) == {"cached features", "frozen body each epoch"}
    for total, per_epoch, acc in rows.values():
        assert total > 0 and per_epoch > 0 and 0.0 <= acc <= 1.0
    assert rows["cached features"][2] == round(result["cached_acc"], 4)
    assert rows["frozen body each epoch"][2] == round(result["slow_acc"], 4)
    assert 0.0 <= result["cached_acc"] <= 1.0 and 0.0 <= result["slow_acc"] <= 1.0
    assert result["speedup"] == result["slow_s"] / result["cached_s"]
    assert result["acc_diff"] == result["cached_acc"] - result["slow_acc"]
    assert "speed-up:" in proc.stdout
