"""benchmarks/cost.py runs end to end in --quick mode (so it cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_DATA = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists()


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "benchmarks/cost.py", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


@pytest.mark.skipif(not HAS_DATA, reason="dataset-fashion-mnist not installed")
def test_quick_cost_measures_each_cell_and_predicts_what_it_skips() -> None:
    # Cell limit 1 s: the first cell runs, the second is predicted from it, not run.
    proc = _run("--quick", "--cell-limit", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    # examples/fashion_resnet18.py's CPU defaults
    assert (result["recipe"], result["freeze_stages"]) == ("full", 0)
    first, second = result["cells"]
    assert (first["n"], first["size"], first["status"]) == (200, 32, "measured")
    assert first["cache_s"] == 0  # nothing frozen, nothing cached
    assert first["train_s"] > 0 and first["eval_s"] > 0
    assert first["wall_s"] > first["startup_s"] > 0
    assert first["s_per_1k"] == pytest.approx(
        (first["cache_s"] + first["train_s"]) / 200 * 1000, rel=0.02)
    assert 100 < first["startup_rss_mb"] <= first["peak_rss_mb"] < 20000
    assert 0 < first["cpu_s"] and 0 <= first["test_acc"] <= 1
    assert "image_size 32" not in " ".join(first["settings"])  # given, not chosen
    assert second["status"].startswith("not run: predicted")
    assert "linear from N=200" in second["status"] and "over --cell-limit 1 s" in second["status"]
    # Predicted memory: the start-up's peak plus the growth past it, scaled to 400 images.
    grown = first["peak_rss_mb"] - first["startup_rss_mb"]
    assert second["peak_rss_mb"] == round(first["startup_rss_mb"] + 2 * grown)
    assert "| 400 | 32 | not run: predicted" in proc.stdout
