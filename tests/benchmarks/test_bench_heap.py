"""benchmarks/heap.py runs end to end in --quick mode (so it cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferkit.train.heap import heap_supported

ROOT = Path(__file__).resolve().parents[2]


def _heap_benchmark():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import heap
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return heap


def test_quick_runs_both_arms_on_the_same_arithmetic() -> None:
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "benchmarks/heap.py", "--quick"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    (row,) = result["rows"]
    assert (row["size"], row["batch"], row["steps"]) == (32, 8, 2)
    plain, keep = sorted(result["runs"], key=lambda r: r["arm"] != "plain")
    assert (plain["arm"], keep["arm"]) == ("plain", "keep")
    assert plain["kept"] is False and keep["kept"] is heap_supported()
    assert plain["train_loss"] == keep["train_loss"]  # the allocator changes no result
    assert row["ratio"] == pytest.approx(keep["step_s"] / plain["step_s"])
    assert min(plain["peak_rss_mb"], keep["peak_rss_mb"]) > 0
    assert "| 32 | 8 |" in proc.stdout


def test_sizes_are_size_batch_pairs() -> None:
    parse_sizes = _heap_benchmark().parse_sizes
    assert parse_sizes("32:256,224:64") == [(32, 256), (224, 64)]
    for bad in ("32", "32:0", "a:1", "32:256,"):
        with pytest.raises(ValueError, match="SIZE:BATCH"):
            parse_sizes(bad)


def test_default_sizes_train_at_fine_tunes_batches() -> None:
    # the batches of docs/benchmarks.md's table: 256 up to 64 px, 64 at 224 px (BATCH_PIXELS)
    assert _heap_benchmark().default_sizes() == [(32, 256), (64, 256), (224, 64)]
