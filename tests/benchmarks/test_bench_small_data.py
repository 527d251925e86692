"""benchmarks/small_data.py --quick runs the default and one swept arm and prints a verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_a_table_and_a_verdict(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "small_data.py"), "--quick",
                           "--threads", "1", "--seeds", "0", "1", "--jobs", "2", "--out",
                           str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdict = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert set(verdict) == {"digits"} and verdict["digits"]["best"] == "full 1e-2/1e-3 1x"
    result = json.loads(out.read_text())["datasets"]["digits"]
    rows, runs = result["rows"], result["runs"]
    assert set(rows) == set(runs) == {"default", "full 1e-2/1e-3 1x"}
    assert all(r["epochs"] == 2 and 0 <= r["test_acc"] <= 1 for r in rows.values())
    for arm, row in rows.items():  # each arm's row is the mean of its two seeds' runs
        accs = sorted(r["test_acc"] for r in runs[arm])
        assert len(accs) == 2 and sorted(row["per_seed"]) == accs
        assert row["test_acc"] == round(sum(accs) / 2, 4)
    assert "| digits |" in proc.stdout


def test_write_folder_writes_the_split_folder_train_reads(tmp_path):
    pytest.importorskip("sklearn")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "small_data.py"),
                           "--datasets", "digits", "--write-folder", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "d" / "train").glob("*/*.png"))) == 300
    assert len(list((tmp_path / "d" / "val").glob("*/*.png"))) == 100
    assert sorted(p.name for p in (tmp_path / "d" / "test").iterdir()) == [str(i) for i in
                                                                         range(10)]


def test_arms_are_read_with_an_optional_image_size():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import small_data
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert small_data.parse_arm("full 1e-2/1e-3 1x 96px") == (
        "full 1e-2/1e-3 1x 96px", "full", 1e-2, 1e-3, 1.0, 96)
    assert small_data.parse_arm("lp_ft 3e-3/3e-4 2x") == (
        "lp_ft 3e-3/3e-4 2x", "lp_ft", 3e-3, 3e-4, 2.0, None)
    assert small_data.parse_arm("linear_probe 1x")[1:] == ("linear_probe", 1e-2, None, 1.0, None)
    with pytest.raises(SystemExit, match="cannot read the size of 'full 1e-2/1e-3 1x bigpx'"):
        small_data.parse_arm("full 1e-2/1e-3 1x bigpx")
