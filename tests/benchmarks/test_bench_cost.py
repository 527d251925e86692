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
    # Predicted memory: the start-up's peak plus the growth past it, scaled by fine_tune's
    # batch (about N/16: 16 for 200 images, 32 for 400), which holds the activations.
    assert (first["batch_size"], second["batch_size"]) == (16, 32)
    grown = first["peak_rss_mb"] - first["startup_rss_mb"]
    assert second["peak_rss_mb"] == round(first["startup_rss_mb"] + grown * 32 / 16)
    assert "| 400 | 32 | 32 | not run: predicted" in proc.stdout


def test_predicted_memory_follows_the_batch_not_the_images() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import cost
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cell = {"n": 1000, "wall_s": 226.0, "cache_s": 0.0, "train_s": 143.0,
            "startup_rss_mb": 879, "peak_rss_mb": 5854, "batch_size": 64}
    # 224 px: fine_tune's batch stays 64 (BATCH_PIXELS) from 1,000 to 60,000 images, so
    # does the memory; the time grows with the images.
    est, rss, ref, batch = cost.predict([{**cell, "size": 224}], 60000)
    assert (rss, ref, batch) == (5854, "1000", 64)
    assert est == pytest.approx(226.0 + 143.0 * 59)
    # 32 px: the batch grows from 64 to 256, and the growth past start-up with it.
    _, rss, _, batch = cost.predict([{**cell, "size": 32}], 10000)
    assert batch == 256 and rss == pytest.approx(879 + (5854 - 879) * 4)
