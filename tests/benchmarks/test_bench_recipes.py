"""benchmarks/recipes.py runs every recipe in --quick mode (no timing assertion: only that
each recipe ran on the same budget and the report is well formed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import transferkit as tk

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"),
               HF_HUB_CACHE=str(tmp_path / "hf"), TRANSFERKIT_CACHE=str(tmp_path / "tk"))
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipes.py"), "--quick",
                           *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600, check=False)


def _result(proc: subprocess.CompletedProcess[str]) -> tuple[list[str], dict]:
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT ")
    return lines, json.loads(lines[-1].removeprefix("RESULT "))


def test_quick_runs_every_recipe_on_one_budget(tmp_path: Path) -> None:
    lines, result = _result(_run(tmp_path))
    assert result["model"] == "efficientnet_lite0" and result["torch_threads"] == 1
    assert (result["n_train"], result["n_val"], result["n_test"]) == (64, 32, 32)
    assert result["size"] == 16 and result["epochs"] == 2 and result["batch_size"] == 64
    assert result["device"] == "cpu" and result["channels_last"] is True
    rows = result["rows"]
    assert [row["recipe"] for row in rows] == tk.list_recipes()  # one per recipe, in order
    total = rows[0]["total_params"]
    for row in rows:
        assert row["epochs"] == 2  # the same budget for every recipe
        assert row["probe_epochs"] == (1 if row["recipe"] == "lp_ft" else
                                       2 if row["recipe"] == "linear_probe" else 0)
        for key in ("test_acc", "best_val_acc", "last_val_acc"):
            assert 0.0 <= row[key] <= 1.0, (row["recipe"], key, row[key])
        assert row["best_val_acc"] >= row["last_val_acc"]
        assert row["seconds"] > 0
        assert row["total_params"] == total and 0 < row["trainable_params"] <= total
        assert row["summary"] == tk.RECIPES[row["recipe"]].summary
    by_name = {row["recipe"]: row for row in rows}
    for name in ("full", "lp_ft", "llrd", "l2sp"):
        assert by_name[name]["trainable_params"] == total
    head = by_name["linear_probe"]["trainable_params"]
    assert head < by_name["bitfit"]["trainable_params"] < total  # the head, plus the biases
    assert by_name["gradual"]["trainable_params"] == total  # every stage opens, even in 2 steps
    # The table: the budget first, then one line per recipe in the same order.
    assert lines[0].startswith("Budget per recipe: 2 epoch(s)")
    table = [line for line in lines if line.split(" |")[0].strip() in by_name]
    assert [line.split(" |")[0].strip() for line in table] == tk.list_recipes()
    assert table[tk.list_recipes().index("lp_ft")].split("|")[1].strip() == "1+1"


def test_quick_runs_the_named_recipes_only(tmp_path: Path) -> None:
    _, result = _result(_run(tmp_path, "--recipes", "l2sp,linear_probe", "--epochs", "1"))
    assert [row["recipe"] for row in result["rows"]] == ["l2sp", "linear_probe"]
    assert all(row["epochs"] == 1 for row in result["rows"])


def test_quick_runs_each_variant_of_a_recipe(tmp_path: Path) -> None:
    lines, result = _result(_run(tmp_path, "--recipes", "full", "--epochs", "1", "--variants",
                                 "baseline;mixup=0.2,label_smoothing=0.1"))
    assert result["variants"] == ["baseline", "mixup=0.2,label_smoothing=0.1"]
    rows = result["rows"]
    assert [(r["recipe"], r["variant"]) for r in rows] == [
        ("full", "baseline"), ("full", "mixup=0.2,label_smoothing=0.1")]
    table = [line.split("|") for line in lines if line.startswith("full ")]
    assert [cells[1].strip() for cells in table] == ["baseline", "mixup=0.2,label_smoothing=0.1"]


@pytest.mark.parametrize(("args", "message"), [
    (("--variants", "mixup=0.2;mixup=0.2"), "--variants names 'mixup=0.2' twice"),
    (("--variants", "mixp=0.2"), "unknown variant option 'mixp'"),
    (("--variants", "cutmix=big"), "cutmix='big' in 'cutmix=big' is not a number"),
    (("--recipes", "full,lp-ft"), "unknown recipe 'lp-ft'; valid: full, linear_probe, lp_ft"),
    (("--recipes", "lp-ft"), "Did you mean 'lp_ft'?"),
    (("--recipes", "full,full"), "names a recipe twice"),
    (("--recipes", "lp_ft", "--epochs", "1"), "recipe lp_ft needs --epochs >= 2"),
    (("--n-train", "0"), "--n-train must be >= 1, got 0"),
])
def test_bad_arguments_fail_before_training(tmp_path: Path, args: tuple[str, ...],
                                            message: str) -> None:
    proc = _run(tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "RESULT" not in proc.stdout
