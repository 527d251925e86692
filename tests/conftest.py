"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import transferkit.backbones.weights as W


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every cache at an empty temporary directory and forbid the network."""
    dirs = {k: tmp_path / k for k in ("torch", "hf", "tk")}
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch"]))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(dirs["hf"]))
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(dirs["tk"]))
    for var in ("TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def no_network(source: W.WeightsSource, *, progress: bool) -> dict[str, torch.Tensor]:
        raise AssertionError(f"download attempted for {source.cache_name}")

    monkeypatch.setattr(W, "_download", no_network)
    return dirs
