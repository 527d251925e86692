"""Tests of transferkit.train.checkpoint: atomic saves, safe loading, RNG state, SIGKILL."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import transferkit.train.checkpoint as ck
from transferkit.errors import CheckpointError
from transferkit.train.checkpoint import (
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)

ROOT = Path(__file__).resolve().parents[2]


def test_round_trip_loads_with_weights_only(tmp_path):
    state = {
        "w": torch.arange(5.0),
        "epoch": 3,
        "history": [{"a": 1.5}],
        "none": None,
        "rng": get_rng_state(),
    }
    path = save_checkpoint(state, tmp_path / "sub" / "c.pt")
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["history"] == [{"a": 1.5}]
    assert os.listdir(tmp_path / "sub") == ["c.pt"]  # no temp file left
    assert load_checkpoint(path)["epoch"] == 3


def test_rng_state_round_trip_restores_every_generator(tmp_path):
    random.gauss(0, 1)  # leaves a cached gauss in Python's state
    np.random.standard_normal()
    state = get_rng_state()
    expected = (
        torch.rand(3),
        np.random.rand(3),
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.standard_normal(),
    )
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    torch.rand(7), np.random.rand(7), random.random()  # move every generator on
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    again = (
        torch.rand(3),
        np.random.rand(3),
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.standard_normal(),
    )
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_set_rng_state_rejects_foreign_state():
    with pytest.raises(CheckpointError, match="random generators"):
        set_rng_state({"torch": "nope"})


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_corrupt_checkpoint_names_the_path(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:  # truncated real checkpoint
        save_checkpoint({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:500])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        load_checkpoint(path)


def test_missing_and_non_dict_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"v": 1}, path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", broken_replace)
    with pytest.raises(CheckpointError, match="disk full"):
        save_checkpoint({"v": 2}, path)
    assert load_checkpoint(path)["v"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]  # the temp file was removed


def test_sigkill_during_saves_leaves_a_complete_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = ROOT / "tests" / "scripts" / "save_loop.py"
    start = 0
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        first = int(proc.stdout.readline())  # one save done: the loop is running
        time.sleep(rng.uniform(0.0, 0.3))  # then kill at a random moment
        proc.kill()
        proc.wait()
        printed = [int(line) for line in proc.stdout.read().split()]
        proc.stdout.close()
        state = load_checkpoint(path)
        i = state["i"]
        # A complete version: the tensor matches its own counter, and it is the last
        # finished save or the one after it (finished but not yet printed).
        last_done = printed[-1] if printed else first
        assert i in (last_done, last_done + 1)
        assert torch.equal(state["w"], torch.full((1_000_000,), float(i)))
        start = i + 1


def test_flipped_bytes_in_a_tensor_are_an_error_naming_the_entry_and_tensor(tmp_path, damage):
    # torch.load ignores the zip's CRC-32s: without the check this file loads silently.
    weight = torch.arange(64.0)
    path = save_checkpoint({"model": {"fc.weight": weight, "fc.bias": torch.zeros(8)},
                            "epoch": 2}, tmp_path / "last.pt")
    entry = damage.zip_tensor(path, weight)
    assert torch.load(path, weights_only=True)["epoch"] == 2  # torch alone sees nothing
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (
        f"Checkpoint {str(path)!r} is corrupt: zip entry {entry!r} (the data of tensor "
        "'model/fc.weight') fails its CRC-32 check, so its bytes changed after it was "
        "written (disk, copy or transfer error); nothing was loaded. Use another checkpoint "
        "(e.g. 'best.pt' or 'last.pt') or start without resume."
    )
