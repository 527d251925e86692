"""benchmarks/mixing.py runs in --quick mode (no timing assertion: what each method takes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_times_every_method_and_says_what_each_takes() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mixing.py"), "--quick"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["torchvision MixUp", "torchvision CutMix", "torchvision RandomChoice",
                          "timm Mixup (mixup)", "timm Mixup (cutmix)", "timm Mixup (both)"]
    assert all(row["ms"] > 0 and row["shape"] == [8, 3, 16, 16] for row in rows.values())
    for name, row in rows.items():  # torchvision takes both; timm (as built here) neither
        assert row["odd_batch"] is row["multi_hot"] is name.startswith("torchvision"), name
