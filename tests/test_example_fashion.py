"""The reference example runs end to end in --subset mode, and fails cleanly on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fashion_resnet18.py"
HAS_DATA = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="dataset-fashion-mnist not installed")


def _run(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    # Empty caches: whatever other tests seeded must not be found.
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1")
    if cache is not None:
        env.update(TORCH_HOME=str(cache / "torch"), HF_HUB_CACHE=str(cache / "hf"),
                   TRANSFERKIT_CACHE=str(cache / "tk"))
    full_env = env
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True,
                          text=True, timeout=600, env=full_env, cwd=ROOT)


@needs_data
def test_subset_run_falls_back_and_writes_everything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _run("--subset", "600", "--epochs", "1", "--out", str(out), "--threads", "1",
                cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # ResNet18's weights are not reachable: one clear line, and the fallback is recorded.
    assert "resnet18 ImageNet weights are not available" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["backbone"] == "efficientnet_lite0" and result["weights"] == "ImageNet"
    assert 0.0 <= result["test_acc"] <= 1.0
    for name in ("model.safetensors", "history.json", "history.csv", "report.md", "last.pt",
                 "curves.png", "confusion.png", "misclassified.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "using efficientnet_lite0" in report and "Ankle boot" in report
    assert f"{result['test_acc']:.4f}" in report
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and "val_acc" in history[0]
    import transferkit as tk

    model, meta = tk.load_model(out / "model.safetensors")
    assert meta.backbone == "efficientnet_lite0" and meta.class_names[9] == "Ankle boot"


@needs_data
def test_pinned_backbone_without_weights_stops_with_the_fixes(tmp_path: Path) -> None:
    proc = _run("--backbone", "resnet18", "--subset", "100", "--out", str(tmp_path / "o"),
                cache=tmp_path / "cache")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "No pretrained weights found for 'resnet18'" in proc.stderr
    assert "--weights none" in proc.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = _run("--recipe", "ful", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "did you mean 'full'" in proc.stderr.lower()
    proc = _run("--epochs", "0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--epochs must be positive" in proc.stderr


def test_unwritable_out_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _run("--subset", "100", "--out", str(blocker / "sub"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "is not writable" in proc.stderr


@needs_data
def test_from_scratch_resnet18_trains_on_cached_stage_inputs(tmp_path: Path) -> None:
    # ResNet18's stage-3 input at 32 px is 128x4x4: cached inputs of any shape must work.
    out = tmp_path / "scratch"
    proc = _run("--backbone", "resnet18", "--weights", "none", "--subset", "300",
                "--epochs", "1", "--out", str(out), "--threads", "1", cache=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cached the stage inputs of 240 images (128x4x4)" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["backbone"] == "resnet18" and result["weights"] == "none (from scratch)"
    assert "not available" not in proc.stderr
