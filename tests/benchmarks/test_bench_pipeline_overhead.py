"""Run the pipeline-overhead benchmark in --quick mode and check its parts.

No timing assertion (speed is not tested here): the benchmark must run both sides, feed
them the same batches from the same weights, and report per-pair ratios and rates.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _module():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_pipeline_overhead", BENCH / "pipeline_overhead.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        while str(BENCH) in sys.path:
            sys.path.remove(str(BENCH))
    return module


def test_pipeline_overhead_quick_runs():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "pipeline_overhead.py"), "--quick"],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    r = json.loads(last[len("RESULT "):])
    assert r["model"] == "tiny-cnn" and r["loop"] == "trainer" and r["data"] == "synthetic"
    assert (r["size"], r["batch_size"], r["batches"], r["repeats"]) == (16, 16, 3, 2)
    assert r["images_per_epoch"] == 48 and r["augment"] is False
    assert r["threads"] == r["torch_threads"] == 1 and r["target_ratio"] == 1.05
    for key in ("median_pipeline_s", "median_preloaded_s", "pipeline_img_s",
                "preloaded_img_s", "median_ratio", "min_ratio", "median_cpu_ratio",
                "median_loader_alone_s", "loader_ms_per_batch", "loader_share"):
        assert r[key] > 0, key
    assert r["pipeline_img_s"] == pytest.approx(48 / r["median_pipeline_s"])
    assert r["preloaded_img_s"] == pytest.approx(48 / r["median_preloaded_s"])
    # The ratio is taken per interleaved pair, then summarised.
    assert len(r["ratios"]) == 2 and r["median_ratio"] == statistics.median(r["ratios"])
    assert r["min_pair_ratio"] == min(r["ratios"]) <= r["q1_ratio"] <= r["median_ratio"]
    assert r["median_ratio"] <= r["q3_ratio"] <= r["max_pair_ratio"] == max(r["ratios"])
    # Same batches from the same weights: the two epochs end with the same loss.
    assert r["loss_pipeline"] == pytest.approx(r["loss_preloaded"], rel=1e-5)
    assert "median ratio pipeline/preloaded" in proc.stdout and "images/s" in proc.stdout
    for key in ("date", "cpu", "cpus", "torch", "load_before", "load_after"):
        assert key in r


def test_preloaded_batches_are_the_pipelines_batches():
    bench = _module()
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8)
    labels = torch.arange(40) % 10
    loader = bench.make_loader(images, labels, batch_size=16, size=20, augment=True, threads=1)
    batches = bench.preload(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(16, 1, 20, 20), (16, 1, 20, 20),
                                                    (8, 1, 20, 20)]
    assert loader.epoch == 0  # preloading leaves the loader at epoch 0
    for _ in range(2):  # every pass over epoch 0 yields the very same tensors
        loader.set_epoch(0)
        for (x, y), (px, py) in zip(loader, batches, strict=True):
            assert torch.equal(x, px) and torch.equal(y, py)
    # Normalised with FashionMNIST's statistics, not left in 0..1.
    assert float(torch.cat([x for x, _ in batches]).min()) < 0


@pytest.mark.parametrize("loop, channels_last",
                         [("trainer", False), ("hand", False), ("trainer", True), ("hand", True)])
def test_both_sides_train_the_same_epoch(loop, channels_last):
    bench = _module()
    torch.manual_seed(0)
    model = bench.build_model(quick=True)
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    labels = torch.arange(32) % 10
    loader = bench.make_loader(images, labels, batch_size=16, size=16, augment=True, threads=1)
    batches = bench.preload(loader)
    a, b = bench.build_model(quick=True), bench.build_model(quick=True)
    a.load_state_dict(model.state_dict())
    b.load_state_dict(model.state_dict())
    wall, cpu, loss = bench.train_epoch(a, loader, loop, channels_last)
    wall2, cpu2, loss2 = bench.train_epoch(b, batches, loop, channels_last)
    # --channels-last trains in that format, as fine_tune does on the CPU (a 4-channel conv:
    # the tiny CNN's 1-channel one is contiguous in both formats).
    seen = []
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10))
    net[1].register_forward_pre_hook(lambda m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
    bench.train_epoch(net, batches, loop, channels_last)
    assert seen and set(seen) == {channels_last}
    assert wall > 0 and wall2 > 0 and cpu >= 0 and cpu2 >= 0
    assert loss == pytest.approx(loss2, rel=1e-6) and loss > 0
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb)
    assert not torch.equal(next(a.parameters()), next(model.parameters()))  # it trained


def test_bad_arguments_are_rejected(capsys):
    bench = _module()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--batches", "0"])
    assert exc.value.code == 2
    assert "--batches must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--backbone", "efficientnet_lite0"])
    assert exc.value.code == 2
    assert "--quick trains a tiny CNN: leave out --backbone" in capsys.readouterr().err


def test_build_model_takes_the_backbone():
    bench = _module()
    model = bench.build_model(quick=False, backbone="efficientnet_lite0")
    assert type(model).__name__ == "EfficientNet"
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)  # 1 channel in, 10 classes out
