"""Shared fixtures."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import transferkit.backbones.hf_hub as H
import transferkit.backbones.registry as R
import transferkit.backbones.weights as W
from transferkit.train import Callback


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

    def no_config_download(repo_id: str) -> Path:
        raise AssertionError(f"download of the Hub config of {repo_id} attempted")

    monkeypatch.setattr(W, "_download", no_network)
    monkeypatch.setattr(H, "_download_config", no_config_download)
    return dirs


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolate the registry: registrations made by a test vanish after it."""
    monkeypatch.setattr(R, "_REGISTRY", dict(R._REGISTRY))
    monkeypatch.setattr(R, "_entry_points_loaded", True)


class Damage:
    """Flip 16 bytes inside one tensor's data in a file, as a failing disk or copy would."""

    @staticmethod
    def _flip(path: Path, offset: int, size: int) -> None:
        assert size >= 24, "the tensor must hold at least 24 bytes"
        raw = bytearray(path.read_bytes())
        for i in range(offset + 8, offset + 24):
            raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))

    @staticmethod
    def zip_tensor(path: Path, tensor: torch.Tensor) -> str:
        """Damage the entry of a ``torch.save`` file holding ``tensor``; return its name."""
        want = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if archive.read(i) == want]
        assert len(infos) == 1, "the tensor's bytes must be in exactly one entry"
        info = infos[0]
        with path.open("rb") as f:
            f.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
        Damage._flip(path, info.header_offset + 30 + name_len + extra_len, info.file_size)
        return info.filename

    @staticmethod
    def safetensors_tensor(path: Path, name: str) -> None:
        """Damage the data of tensor ``name`` of a safetensors file."""
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        begin, end = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
        Damage._flip(path, 8 + n + begin, end - begin)


@pytest.fixture
def damage() -> type[Damage]:
    """Helpers that damage files in place (see :class:`Damage`)."""
    return Damage


class InterruptAfter(Callback):
    """Act as if Ctrl-C arrived after optimizer step ``step``: the next step is the last."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer) -> None:
        if trainer.step == self.step:
            trainer._sigint = True


@pytest.fixture
def interrupt_after() -> type[InterruptAfter]:
    """The callback class :class:`InterruptAfter` (``interrupt_after(4)`` stops after step 5)."""
    return InterruptAfter
