"""Run the linear-probe benchmark's --quick modes in a subprocess (no timing assertion:
speed is not tested here, only that the three probes run and the report is well formed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("(a) frozen body, Trainer default", "(b) frozen body, channels-last",
          "(c) cached features")


def _run(*args: str) -> tuple[list[str], dict]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linear_probe.py"), "--quick", *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_linear_probe_quick_reports_the_three_probes_side_by_side():
    lines, result = _run()
    assert result["model"] == "efficientnet_lite0" and result["epochs"] == 1
    assert result["n_train"] == 64 and result["n_val"] == 32 and result["repeats"] == 1
    assert result["torch_threads"] == 1
    rows = {}
    number = r"\s*\|\s*([\d.]+|-)"
    for line in lines:
        match = re.match(r"^(\([abc]\) [\w ,-]+?)" + number * 5 + r"$", line)
        if match:
            rows[match.group(1)] = match.groups()[1:]
    assert set(rows) == set(LABELS)
    for key, label in zip("abc", LABELS, strict=True):
        total, extract, epochs, per_epoch, acc = rows[label]
        assert float(total) > 0 and float(per_epoch) > 0
        assert float(acc) == round(result[f"{key}_acc"], 4) and 0.0 <= float(acc) <= 1.0
        assert (extract == "-") == (key != "c") and (epochs == "-") == (key != "c")
    # (c)'s time splits into extraction, head epochs and the rest.
    parts = result["c_extract_s"] + result["c_epochs_s"] + result["c_other_s"]
    assert result["c_extract_s"] > 0 and abs(parts - result["c_s"]) < 1e-9
    for slow in ("a", "b"):
        assert result[f"ratio_{slow}_c"] == result[f"{slow}_s"] / result["c_s"]
        assert result[f"bound_{slow}_c"] == result[f"{slow}_s"] / result["c_extract_s"]
        assert result[f"bound_{slow}_c"] >= result[f"ratio_{slow}_c"]  # c_s >= extraction
        assert result[f"acc_diff_c_{slow}"] == result["c_acc"] - result[f"{slow}_acc"]
        assert any(line.startswith(f"({slow})/(c): ") for line in lines)
    assert any(line.startswith("(c) split: extraction") for line in lines)


def test_linear_probe_quick_extraction_options():
    lines, result = _run("--extraction")
    assert result["n_train"] == 64 and result["loader_batch_size"] == 64
    variants = [row["variant"] for row in result["rows"]]
    assert variants == ["channels-first, loader batch", "channels-last, loader batch",
                        "channels-first, auto batch", "default (channels-last, auto batch)"]
    assert result["rows"][0]["speedup"] == 1.0 and result["rows"][0]["max_abs_diff"] == 0.0
    for row in result["rows"]:  # every option gives the same features, to float rounding
        assert row["seconds"] > 0
        assert row["max_abs_diff"] <= 1e-4 * max(1.0, result["feature_scale"])
        assert any(line.startswith(row["variant"]) for line in lines)
