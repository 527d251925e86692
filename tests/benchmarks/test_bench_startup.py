"""benchmarks/startup.py runs end to end in --quick mode (so it cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_DATA = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists()
STEPS = ["interpreter", "import torch", "import transferkit", "the example's other imports",
         "data (fashion_mnist)", "model (build_model)", "loaders (TensorLoader)",
         "fine_tune until training starts", "the first optimizer step"]


@pytest.mark.skipif(not HAS_DATA, reason="dataset-fashion-mnist not installed")
def test_quick_startup_times_every_step_before_the_first_one(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRANSFERKIT_CACHE=str(tmp_path / "tk"))
    proc = subprocess.run([sys.executable, "benchmarks/startup.py", "--quick", "--threads",
                           "1"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    steps = result["steps"]
    assert [s["step"] for s in steps] == STEPS
    assert all(s["s"] >= 0 for s in steps)
    ats = [s["at"] for s in steps]
    assert ats == sorted(ats) and ats[-1] == pytest.approx(sum(s["s"] for s in steps), abs=0.05)
    imports = result["imports"]
    top = [r["module"] for r in imports["top_level"]]
    assert "torch" in top and "transferkit" in top
    assert all(r["module"].startswith("transferkit") for r in imports["transferkit_self"])
    assert imports["total_ms"] > 0
