"""Tests of transferkit.distributed: sharding (in process) and DDP with torchrun (2 CPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit.data import BalancedSampler
from transferkit.errors import ConfigError
from transferkit.train.distributed import DistInfo, shard_for_evaluation, shard_for_training
from transferkit.train.samplers import EvalShardSampler, draw

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("length", "world"), [(23, 2), (7, 3), (2, 4), (0, 2)])
def test_eval_sampler_counts_every_index_once(length, world):
    shards = [list(EvalShardSampler(length, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(length))
    assert [len(EvalShardSampler(length, r, world)) for r in range(world)] == [
        len(s) for s in shards
    ]


def test_training_shards_have_equal_length_and_reshuffle_per_epoch():
    ds = TensorDataset(torch.arange(37.0), torch.zeros(37, dtype=torch.long))
    loader = DataLoader(ds, batch_size=4, shuffle=True)
    shards = [shard_for_training(loader, DistInfo(r, 2), seed=0) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5

    def order(shard, epoch):
        shard.sampler.set_epoch(epoch)
        return torch.cat([x for x, _ in shard]).tolist()

    e0 = [order(s, 0) for s in shards]
    assert set(e0[0]) | set(e0[1]) == set(map(float, range(37)))
    assert e0 == [order(s, 0) for s in shards]  # pure function of (seed, epoch)
    assert e0 != [order(s, 1) for s in shards]


def test_plain_iterables_are_split_by_batch():
    data = [(torch.full((2,), float(i)), torch.zeros(2, dtype=torch.long)) for i in range(5)]
    train = [list(shard_for_training(data, DistInfo(r, 2), seed=0)) for r in range(2)]
    assert [[int(b[0][0]) for b in s] for s in train] == [[0, 2], [1, 3]]  # tail dropped
    val = [list(shard_for_evaluation(data, DistInfo(r, 2))) for r in range(2)]
    assert [[int(b[0][0]) for b in s] for s in val] == [[0, 2, 4], [1, 3]]


def test_single_process_leaves_data_alone():
    data = [(torch.zeros(1), torch.zeros(1))]
    assert shard_for_training(data, DistInfo(), seed=0) is data
    assert shard_for_evaluation(data, DistInfo()) is data


def torchrun(script: str, out_dir: Path) -> None:
    """Run ``tests/scripts/<script>`` in 2 CPU processes; fail with its stderr."""
    launcher = Path(sys.executable).with_name("torchrun")
    if not launcher.exists():
        pytest.skip("torchrun is not installed next to the Python interpreter")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [
            str(launcher),
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "tests" / "scripts" / script),
            str(out_dir),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_ddp_two_processes_on_cpu(tmp_path):
    torchrun("ddp_train.py", tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["identical"] is True  # parameters equal on both ranks
    assert result["loader_count"] == 23 and result["list_count"] == 23  # odd size, once each
    assert result["tensor_loader_count"] in (23, None)  # None: transferkit.pipeline absent
    assert result["restored_epoch"] == result["best_epoch"] is not None
    assert result["eval_matches_history"] is True
    assert result["history_len"] == 3
    rank0, rank1 = result["bad_data"]
    assert "other rank(s) found bad data" in rank0 and "labels include 9" in rank1
    assert result["steps"] == [15, 15]  # 37 samples -> 19 per rank -> 5 batches x 3 epochs
    # fit() released DDP, so cleanup() joined Gloo's threads (else exit could abort).
    assert result["gloo_threads_after_cleanup"] in ([], None)  # None: no /proc
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt",
        "history.csv",
        "history.json",
        "last.pt",
        "result.json",
    ]


class Sharded:
    """A loader that shards itself, like transferkit.pipeline.TensorLoader."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.data = [(torch.zeros(2), torch.zeros(2, dtype=torch.long))] * 4

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


def test_loaders_that_shard_themselves_are_respected():
    own = Sharded(1, 2)
    assert shard_for_training(own, DistInfo(1, 2), seed=0) is own
    assert shard_for_evaluation(own, DistInfo(1, 2)) is own
    with pytest.warns(UserWarning, match="built for 1 process"):
        split = shard_for_evaluation(Sharded(0, 1), DistInfo(1, 2))
    assert len(list(split)) == 2
    with pytest.raises(ConfigError, match="rank 0 of 3.*rank 1 of 2"):
        shard_for_training(Sharded(0, 3), DistInfo(1, 2), seed=0)
    with pytest.raises(ConfigError, match="rank 1 of 2"):
        shard_for_training(Sharded(1, 2), DistInfo(), seed=0)  # half the data, single process


def test_ddp_respects_the_users_samplers(tmp_path):
    torchrun("ddp_samplers.py", tmp_path)
    ranks = json.loads((tmp_path / "samplers.json").read_text())

    def per_epoch(case, split):
        return list(zip(*(r[case][split] for r in ranks), strict=True))

    # A SubsetRandomSampler train/val split: nothing outside its subset, each index once.
    for epoch in per_epoch("subset", "train"):
        assert [len(s) for s in epoch] == [5, 5]
        assert sorted(epoch[0] + epoch[1]) == list(range(10))
    assert per_epoch("subset", "train")[0] != per_epoch("subset", "train")[1]  # reshuffled
    for epoch in [*per_epoch("subset", "val"), [r["subset"]["evaluate"] for r in ranks]]:
        assert [len(s) for s in epoch] == [5, 4]  # not padded: 9 indices, once each
        assert sorted(epoch[0] + epoch[1]) == list(range(90, 99))
    assert [r["subset"]["evaluate_count"] for r in ranks] == [9, 9]
    assert [r["subset"]["steps"] for r in ranks] == [6, 6]  # 5 per rank -> 3 batches x 2
    # A WeightedRandomSampler: zero-weight (even) indices never drawn, 16 per epoch in all.
    for epoch in per_epoch("weighted", "train"):
        assert [len(s) for s in epoch] == [8, 8]
        assert all(i % 2 == 1 for i in epoch[0] + epoch[1])
    # A batch sampler over a subset: 4 whole batches dealt out, nothing outside the subset.
    for epoch in per_epoch("batches", "train"):
        assert sorted(epoch[0] + epoch[1]) == list(range(20, 30))
    assert [r["batches"]["steps"] for r in ranks] == [4, 4]
    # A BalancedSampler: every rank takes its half of one draw seeded by (seed=3, epoch).
    balanced = BalancedSampler([0] * 90 + [1] * 10, num_samples=20)
    for epoch, shares in enumerate(per_epoch("balanced", "train")):
        expected = draw(balanced, seed=3, epoch=epoch)
        assert list(shares) == [expected[0::2], expected[1::2]]
        assert sum(i >= 90 for i in expected) >= 5  # class 1 is not 10% of the draw
    # A sampler whose ranks draw differently (Python's random, seeded per rank): refused.
    for r in ranks:
        assert r["python_random"].startswith(
            "The ranks drew different indices from the train loader's PythonRandom, so their "
            "shares would overlap and miss samples."
        )
    # Stopped mid-epoch and resumed: the same parameters as a straight run.
    assert [r["resume"] for r in ranks] == [{"stopped_at": [8, 3], "steps": 15, "same": True}] * 2


def test_ddp_multi_label_metrics_are_those_of_the_whole_split(tmp_path):
    torchrun("ddp_multilabel.py", tmp_path)
    result = json.loads((tmp_path / "multilabel.json").read_text())
    assert result["count"] == 23  # an odd split, every sample once
    # mAP ranks every sample: the gathered logits give the single-process value.
    assert result["map"] == pytest.approx(result["expected_map"], abs=1e-6)
    assert result["f1"] == pytest.approx(result["expected_f1"], abs=1e-6)
    assert {"train_f1", "val_map", "val_f1"} <= set(result["history_keys"])
    # Balanced weights are counted on the whole train set, the same on every rank.
    assert result["same_weights"] is True
    assert result["weights"] == pytest.approx(result["expected_weights"])
    # The Trainer's own optimizer imports torch._dynamo after the group exists; the
    # torch.distributed.nn it pulls in (imported by transferkit first) holds no reference
    # to the group, so cleanup() joined Gloo's threads (left alive, they can abort the exit).
    assert result["gloo_threads_after_cleanup"] in ([], None)  # None: no /proc
