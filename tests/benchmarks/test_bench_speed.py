"""Run the speed benchmarks' --quick modes so the scripts cannot rot.

No timing assertions (speed belongs in ``benchmarks/``): each script must exit 0 and print
a ``RESULT {json}`` line with sane values.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _run(args: list[str], timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def _script(name: str, *args: str, timeout: int = 120, **env: str) -> tuple[str, dict]:
    proc = _run([sys.executable, str(BENCH / name), *args], timeout=timeout, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:]
    return proc.stdout, json.loads(lines[-1][len("RESULT "):])


def _module(name: str):
    sys.path.insert(0, str(BENCH))  # the scripts import their sibling _common
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_seed_recipe_quick():
    out, r = _script("seed_recipe.py", "--quick")
    assert "random init" in out and r["weights"] == "none: from scratch"
    assert r["train_samples"] == 256 and r["test_samples"] == 256 and r["image_size"] == 28
    assert r["seconds"] > 0 and r["eval_seconds"] > 0 and r["images_per_s"] > 0
    assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["train_acc"] <= 1.0
    assert r["train_loss"] > 0


def test_throughput_quick():
    out, r = _script("throughput.py", "--quick")
    names = ["seed", "tk", "tk+cl+bf16", "tk+body", "cache"]
    rows = r["rows"]
    assert [(row["backbone"], row["variant"]) for row in rows] == [
        (b, v) for b in ("resnet18", "efficientnet_lite0") for v in names
    ]
    for row in rows:
        assert row["img_s"] > 0 and row["step_s"] > 0 and row["size"] == 32
        assert row["vs_seed"] > 0 and row["vs_tk"] > 0 and row["cpu_img_s"] > 0
        assert row["cpu_vs_seed"] > 0 and row["cpu_vs_tk"] > 0
    for row in rows:
        if row["variant"] in ("seed", "tk"):
            assert row[f"vs_{row['variant']}"] == 1.0
        if row["variant"] == "cache":
            assert row["later_img_s"] > 0
    assert "| backbone | px | variant | img/s |" in out


def test_throughput_variant_names_are_checked():
    bench = _module("throughput")
    v = bench.Variant.parse("tk+cl+bf16+body")
    assert v.loop == "tk" and v.flags == {"cl", "bf16", "body"} and v.freeze == "body"
    for bad in ("tk+fast", "seed+cl", "hand"):
        with pytest.raises(SystemExit):
            bench.Variant.parse(bad)


def test_throughput_rates_skip_warmup():
    bench = _module("throughput")
    # (wall, cpu) at the start, then after three steps: the first one is slow
    times = [(0.0, 0.0), (5.0, 4.0), (6.0, 4.5), (7.0, 5.0)]
    r = bench.rates(times, warmup=1, batch_size=64)
    assert r["img_s"] == 64.0 and r["step_s"] == 1.0 and r["first_step_s"] == 5.0
    assert r["cpu_img_s"] == 128.0


def test_memory_quick():
    out, r = _script("memory.py", "--quick")
    rows = {row["policy"]: row for row in r["rows"]}
    assert list(rows) == ["full", "bitfit", "body"]
    full, bitfit, body = rows["full"], rows["bitfit"], rows["body"]
    # The default optimizer holds every parameter, frozen ones included...
    for row in rows.values():
        assert row["params_in_optimizer"] == full["trainable_params"]
        assert row["peak_rss_mb"] >= row["peak_rss_before_mb"] > 0
    # ...but AdamW keeps state only for the parameters that got a gradient.
    assert full["params_with_state"] == full["trainable_params"]
    for row in (bitfit, body):
        assert row["params_with_state"] == row["trainable_params"] < full["trainable_params"]
        assert row["optimizer_state_mb"] < full["optimizer_state_mb"]
    assert body["activation_mb"] < full["activation_mb"]
    assert "| policy |" in out


def test_gpu_bench_cpu_quick(tmp_path: Path):
    out, r = _script("gpu_bench.py", "--device", "cpu", "--quick", "--out", str(tmp_path))
    assert [row["backbone"] for row in r["rows"]] == ["resnet18", "efficientnet_lite0"]
    for row in r["rows"]:
        assert row["img_s"] > 0 and row["steps"] == 5 and row["epochs"] == 1
        assert 0.0 <= row["best_test_acc"] <= 1.0
        assert row["time_to_target_s"] is None or row["time_to_target_s"] > 0
    assert r["rows"][0]["weights"] == "none: from scratch"
    saved = json.loads((tmp_path / "gpu_results.json").read_text())
    assert saved["rows"][0]["img_s"] == r["rows"][0]["img_s"]
    md = (tmp_path / "gpu_results.md").read_text()
    assert "| backbone | weights | train img/s |" in md and "efficientnet_lite0" in md


def test_gpu_bench_deadline_ends_the_epoch():
    bench = _module("gpu_bench")
    loader = [1, 2, 3]
    assert list(bench.Deadline(loader, time.perf_counter() + 60)) == [1, 2, 3]
    assert list(bench.Deadline(loader, time.perf_counter() - 1)) == []
    assert len(bench.Deadline(loader, 0.0)) == 3


def test_gpu_sh_syntax_and_dry_run(tmp_path: Path):
    assert _run(["bash", "-n", str(BENCH / "gpu.sh")]).returncode == 0
    proc = _run(["bash", str(BENCH / "gpu.sh"), "--device", "cpu", "--quick", "--dry-run"],
                OUT=str(tmp_path), PYTHON=sys.executable)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    assert set(plan["plan"]) == {"resnet18", "efficientnet_lite0"}
    assert plan["out"] == str(tmp_path) and plan["rows"] == []
    assert list(tmp_path.iterdir()) == []  # a dry run trains and writes nothing


def test_gpu_bench_time_cap_stops_training(tmp_path: Path):
    _, r = _script("gpu_bench.py", "--device", "cpu", "--quick", "--models", "resnet18",
                   "--time-cap", "0.5", "--max-epochs", "50", "--out", str(tmp_path))
    (row,) = r["rows"]
    assert row["time_cap_s"] == 0.5 and row["time_to_target_s"] is None
    # 50 epochs of 5 steps were allowed: the cap, checked after every step, ended it.
    assert row["epochs"] < 50 and row["steps"] < 250
