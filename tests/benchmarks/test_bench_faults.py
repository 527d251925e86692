"""benchmarks/faults.py runs the whole fault matrix and every guarantee holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_fault_is_survived():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--kills", "2"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert proc.returncode == 0 and result["broken"] == 0, proc.stdout + proc.stderr[-2000:]
    names = [c["fault"] for c in result["checks"]]
    assert len(names) == 12 and len(set(names)) == 12
    for check in result["checks"]:
        assert f"held   {check['fault']}: {check['detail']}" in proc.stdout
    assert lines[-2] == "12 of 12 guarantees held"
