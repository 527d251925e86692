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
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdict = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert set(verdict) == {"digits"} and verdict["digits"]["best"] == "full 1e-2/1e-3 1x"
    rows = json.loads(out.read_text())["datasets"]["digits"]["rows"]
    assert set(rows) == {"default", "full 1e-2/1e-3 1x"}
    assert all(r["epochs"] == 2 and 0 <= r["test_acc"] <= 1 for r in rows.values())
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
