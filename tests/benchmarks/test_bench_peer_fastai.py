"""benchmarks/peer_fastai.py runs end to end in --quick mode (so it cannot rot).

The transferkit arms run always; the fastai arm when an interpreter with fastai is found
(this one, or .venv-bench from `make bench-venv`): fastai is a benchmark-only dependency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "peer_fastai.py"
HAS_DATA = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="dataset-fashion-mnist not installed")
QUICK = ["--quick", "--subset", "500", "--threads", "1"]  # 400 train / 100 val / 100 test


def _fastai_python() -> str | None:
    for python in (sys.executable, str(ROOT / ".venv-bench" / "bin" / "python")):
        if Path(python).exists() and subprocess.run(
                [python, "-c", "import fastai"], capture_output=True).returncode == 0:
            return python
    return None


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1", PYTHONPATH=str(ROOT),
               TRANSFERKIT_CACHE=str(tmp_path / "tk"))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def _result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))


@needs_data
def test_quick_transferkit_arms_share_one_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "arms"
    result = _result(_run(tmp_path, *QUICK, "--arms", "tk_default,tk_full", "--out", str(out)))
    assert result["images"] == "400/100/100"
    assert result["budget"]["epochs"] == 1 and result["budget"]["image_size"] == 32
    # Left to fine_tune by the example, read from its run: batch about N/16 of 400 images.
    from transferkit.recipes import default_batch_size

    batch = default_batch_size(400)
    assert result["budget"]["batch_size"] == batch and result["budget"]["head_lr"] > 0
    default, full = result["arms"]
    assert (default["arm"], full["arm"]) == ("tk_default", "tk_full")
    for arm in result["arms"]:
        assert arm["test_images"] == 100 and arm["image_size"] == 32 and arm["epochs"] == 1
        assert 0.0 <= arm["test_acc"] <= 1.0 and 0.0 <= arm["val_acc"] <= 1.0
        assert arm["process_s"] >= arm["work_s"] > 0
        assert 100 < arm["peak_rss_mb"] < 20000 and arm["cpu_s"] > 0
        assert (out / arm["arm"] / "model.safetensors").is_file()
        assert "process_vs_fastai" not in arm  # no fastai arm ran
    # The example's own test accuracy (its predict) and the shared evaluation agree: the
    # same test images, resizing and normalisation (100 images: 1 flip is 0.01).
    assert default["own_test_acc"] == pytest.approx(default["test_acc"], abs=0.011)
    assert default["library"] == "transferkit (examples/fashion_resnet18.py)"
    assert full["train_batches"] == -(-400 // batch)  # the last, partial batch kept


@needs_data
def test_quick_fastai_arm(tmp_path: Path) -> None:
    python = _fastai_python()
    if python is None:
        pytest.skip("fastai is importable neither here nor in .venv-bench (`make bench-venv` "
                    "creates it): the fastai arm is a benchmark-only dependency")
    result = _result(_run(tmp_path, *QUICK, "--arms", "fastai", "--fastai-python", python,
                          "--batch-size", "256", "--lr", "0.01"))
    (arm,) = result["arms"]
    assert arm["library"].startswith("fastai 2.8") and arm["epochs"] == 1
    assert arm["train_batches"] == 1  # fastai drops the last incomplete batch (144 of 400)
    assert arm["test_images"] == 100 and 0.0 <= arm["test_acc"] <= 1.0
    assert arm["process_vs_fastai"] == arm["cpu_vs_fastai"] == 1.0 and arm["peak_rss_mb"] > 100


def test_missing_fastai_says_how_to_get_it(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--quick", "--arms", "fastai", "--fastai-python",
                str(tmp_path / "no-python"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"--fastai-python '{tmp_path / 'no-python'}' cannot import fastai" in proc.stderr
    assert "make bench-venv" in proc.stderr


def test_without_the_default_arm_the_open_settings_must_be_given(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--quick", "--arms", "tk_full")
    assert proc.returncode == 2
    assert "without the tk_default arm, give --batch-size, --lr" in proc.stderr


def test_unknown_arm_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--arms", "tk_default,fastia")
    assert proc.returncode == 2 and "unknown ['fastia']" in proc.stderr


@needs_data
def test_tk_full_takes_fastai_s_defaults_one_at_a_time(tmp_path: Path) -> None:
    result = _result(_run(tmp_path, *QUICK, "--arms", "tk_full", "--batch-size", "64",
                          "--lr", "0.01", "--seed", "1", "--tk-betas", "0.9,0.99",
                          "--tk-eps", "1e-5", "--tk-warmup", "0.25"))
    (arm,) = result["arms"]
    # AdamW in the child took the betas and eps; fine_tune the warm-up; the rest as before.
    assert (arm["betas"], arm["eps"], arm["warmup"]) == ([0.9, 0.99], 1e-5, 0.25)
    assert "weight_decay" not in arm and result["budget"]["seed"] == 1
    assert arm["variant"] == "betas (0.9, 0.99), eps 1e-05, warmup 0.25"


@pytest.mark.parametrize(("args", "message"), [
    (["--arms", "tk_default", "--tk-eps", "1e-5"],
     "--tk-eps changes the tk_full arm; add it to --arms"),
    (["--arms", "tk_full", "--tk-betas", "0.9"], "--tk-betas: two numbers in [0, 1)"),
    (["--arms", "tk_full", "--tk-betas", "0.9,x"], "--tk-betas: two numbers in [0, 1)"),
    (["--arms", "tk_full", "--tk-eps", "0"], "--tk-eps must be > 0 (got 0)"),
    (["--arms", "tk_full", "--tk-warmup", "1"], "--tk-warmup must be in [0, 1) (got 1)"),
    (["--arms", "tk_full", "--tk-weight-decay", "-0.1"],
     "--tk-weight-decay must be >= 0 (got -0.1)"),
])
def test_tk_full_options_are_checked_before_any_arm_runs(tmp_path, args, message):
    proc = _run(tmp_path, "--quick", *args)
    assert proc.returncode == 2 and message in proc.stderr
