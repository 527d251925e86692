"""Run the data-pipeline benchmark in --quick mode (no timing assertion: speed is not
tested here, only that the benchmark runs both loaders and reports ratios)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "data_pipeline_benchmark", ROOT / "benchmarks" / "data_pipeline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_pipeline_quick_runs(capsys):
    import torch

    bench = _load_benchmark()
    threads = torch.get_num_threads()
    result = bench.main(["--quick", "--sizes", "28", "40", "--repeats", "2"])
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the benchmark's thread setting is undone
    assert [row["size"] for row in result["rows"]] == [28, 40]
    assert result["batches"] == 3 and result["repeats"] == 2 and result["data"] == "synthetic"
    assert result["threads"] == result["torch_threads"] == 1  # the same setting for both
    for row in result["rows"]:
        assert row["seed_img_s"] > 0 and row["ours_img_s"] > 0 and row["ours_aug_img_s"] > 0
        assert len(row["ratios"]) == 2 and len(row["ratios_aug"]) == 2
        # The ratio is per repeat (same-time pairs), summarised by its median and range.
        assert row["ratio"] == statistics.median(row["ratios"])
        assert row["ratio_min"] == min(row["ratios"]) <= row["ratio"] <= row["ratio_max"]
        assert row["ratio_max"] == max(row["ratios"])
        q1, q3 = row["ratio_quartiles"]
        assert row["ratio_min"] <= q1 <= row["ratio"] <= q3 <= row["ratio_max"]
        # The same pairs timed in process CPU time (waiting for a core removed).
        assert len(row["cpu_ratios"]) == 2 and all(r > 0 for r in row["cpu_ratios"])
        assert row["cpu_ratio"] == statistics.median(row["cpu_ratios"])
    assert "seed loader" in out and "TensorLoader" in out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(result))


def test_seed_loader_matches_torchvision_transforms():
    bench = _load_benchmark()
    import torch

    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    labels = torch.arange(4)
    x, y = next(iter(bench.seed_loader(images, labels, 28)))
    assert x.shape == (4, 1, 28, 28) and sorted(y.tolist()) == [0, 1, 2, 3]
    assert torch.equal(x[:, 0], images[y].float() / 255)  # PIL round trip + ToTensor
    x, _ = next(iter(bench.seed_loader(images, labels, 56)))
    assert x.shape == (4, 1, 56, 56)


def test_breakdown_times_every_stage_of_a_batch(capsys):
    bench = _load_benchmark()
    result = bench.main(["--quick", "--sizes", "28", "40", "--breakdown"])
    stages = result["breakdown_ms"][40]
    assert list(stages) == ["gather_uint8", "to_float", "resize_height", "resize_width",
                            "fill_output"]
    assert all(ms > 0 for ms in stages.values())
    # At the stored size the loader does not resize, so neither does the breakdown.
    assert list(result["breakdown_ms"][28]) == ["gather_uint8", "to_float", "fill_output"]
    assert "40 px, one batch of 64, median ms: gather_uint8" in capsys.readouterr().out
