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
    # --quick: 400 training images in fine_tune's default batches, evaluated after each
    # step on the first 100 validation images (the slice is capped by the validation split).
    from transferkit.recipes import default_batch_size

    steps = -(-400 // default_batch_size(400))
    assert (result["eval_every"], result["eval_images"], result["evaluations"]) == (1, 100, steps)
    startup = result["startup"]
    assert 0 < startup["fit_start_s"] <= startup["first_step_s"] < result["example_wall_s"]
    assert startup["cache_s"] == 0  # the example trains everything: nothing is cached
    crossing = result["crossing"]
    if crossing is not None:
        assert result["time_to_seed_acc_s"] == crossing["net_seconds"] <= crossing["seconds"]
        assert 1 <= crossing["step"] <= steps and crossing["acc"] >= result["seed_test_acc"]
        assert result["ratio_to_seed_wall"] == pytest.approx(
            result["time_to_seed_acc_s"] / result["seed_wall_s"], rel=0.05)


def test_crossing_leaves_out_the_evaluations_before_it() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from time_to_accuracy import crossing
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    records = [
        {"step": 10, "epoch": 0, "batch": 10, "acc": 0.5, "time": 110.0, "eval_s": 2.0,
         "eval_total_s": 2.0},
        {"step": 20, "epoch": 0, "batch": 20, "acc": 0.8, "time": 130.0, "eval_s": 3.0,
         "eval_total_s": 5.0},
        {"step": 30, "epoch": 1, "batch": 5, "acc": 0.9, "time": 150.0, "eval_s": 2.0,
         "eval_total_s": 7.0},
    ]
    assert crossing(records, 0.8, launched=100.0) == {
        "step": 20, "epoch": 0, "batch": 20, "acc": 0.8, "seconds": 30.0, "net_seconds": 28.0}
    assert crossing(records, 0.85, launched=100.0)["net_seconds"] == 45.0  # 50 - (2 + 3)
    assert crossing(records, 0.95, launched=100.0) is None
