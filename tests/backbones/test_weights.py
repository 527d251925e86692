"""Tests for transferkit.weights: offline-first resolution, safe loading, hash checks.

Every branch runs offline: caches are temporary directories seeded with generated
state dicts, and the download function is replaced (it fails the test if called
when it must not be).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import transferkit.backbones.weights as W
from transferkit._integrity import DIGEST_KEY, digest_record
from transferkit.errors import WeightsError, WeightsMismatchError, WeightsNotFoundError


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in tiny().state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)




def hashed_file(directory: Path, state: dict[str, torch.Tensor]) -> Path:
    """Save ``state`` as ``tiny-<sha256[:8]>.pth``, torch.hub's naming."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(directory / f"tiny-{digest}.pth")


def source(**kwargs: object) -> W.WeightsSource:
    return W.WeightsSource(cache_name="test--tiny", **kwargs)  # type: ignore[arg-type]


# --- 1. explicit path ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_explicit_path_wins_over_every_cache(env, tmp_path, suffix):
    mine, cached = tiny_state(1), tiny_state(2)
    env["tk"].mkdir()
    save_file(cached, env["tk"] / "test--tiny.safetensors")
    path = tmp_path / f"mine{suffix}"
    save_file(mine, path) if suffix == ".safetensors" else torch.save(mine, path)
    state, origin = W.resolve_state_dict(source(), backbone="t", path=path)
    assert same(state, mine)
    assert str(path) in origin


def test_explicit_missing_path_names_it(env, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        W.resolve_state_dict(source(), backbone="t", path=tmp_path / "nope.pth")


# --- 2. caches, in order ------------------------------------------------------------


def test_torch_hub_cache_is_used_and_hash_checked(env):
    state = tiny_state(3)
    file = hashed_file(env["torch"] / "hub" / "checkpoints", state)
    env["tk"].mkdir()
    save_file(tiny_state(4), env["tk"] / "test--tiny.safetensors")  # lower priority
    got, origin = W.resolve_state_dict(
        source(url=f"https://example.invalid/{file.name}"), backbone="t"
    )
    assert same(got, state)
    assert "torch hub cache" in origin


def test_torch_hub_cache_wrong_hash_is_rejected(env):
    file = hashed_file(env["torch"] / "hub" / "checkpoints", tiny_state(3))
    bad = file.with_name("tiny-00000000.pth")
    file.rename(bad)
    with pytest.raises(WeightsError, match="hash check") as err:
        W.resolve_state_dict(source(url=f"https://example.invalid/{bad.name}"), backbone="t")
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("with_ref", [True, False])
def test_hugging_face_cache_layout(env, with_ref):
    state = tiny_state(5)
    repo = env["hf"] / "models--timm--tiny.test_in1k"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(state, repo / "snapshots" / "abc123" / "model.safetensors")
    torch.save(tiny_state(6), repo / "snapshots" / "abc123" / "pytorch_model.bin")
    if with_ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
    got, origin = W.resolve_state_dict(source(hf_hub_id="timm/tiny.test_in1k"), backbone="t")
    assert same(got, state)  # safetensors preferred over pytorch_model.bin
    assert "Hugging Face cache" in origin


def test_hf_home_is_used_when_hf_hub_cache_unset(env, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert W.hf_hub_cache_dir() == tmp_path / "home" / "hub"


def test_transferkit_cache_prefers_safetensors(env):
    env["tk"].mkdir()
    save_file(tiny_state(7), env["tk"] / "test--tiny.safetensors")
    torch.save(tiny_state(8), env["tk"] / "test--tiny.pth")
    got, origin = W.resolve_state_dict(source(), backbone="t")
    assert same(got, tiny_state(7))
    assert "TRANSFERKIT_CACHE" in origin
    (env["tk"] / "test--tiny.safetensors").unlink()
    got, _ = W.resolve_state_dict(source(), backbone="t")
    assert same(got, tiny_state(8))


# --- 3. installed package -------------------------------------------------------------


def test_installed_package_file(env, tmp_path):
    file = hashed_file(tmp_path / "pkg", tiny_state(9))
    got, origin = W.resolve_state_dict(
        source(package="tiny-weights", package_file=lambda: file), backbone="t"
    )
    assert same(got, tiny_state(9))
    assert "package" in origin


# --- 4. download, 5. the error --------------------------------------------------------


def test_download_is_called_last_when_online(env, monkeypatch):
    calls = []

    def fake(src: W.WeightsSource, *, progress: bool) -> dict[str, torch.Tensor]:
        calls.append(src.download_ref)
        return tiny_state(10)

    monkeypatch.setattr(W, "_download", fake)
    got, _ = W.resolve_state_dict(source(download="timm", download_ref="tiny.x"), backbone="t")
    assert calls == ["tiny.x"]
    assert same(got, tiny_state(10))


@pytest.mark.parametrize("var", ["TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_downloads_and_explains(env, monkeypatch, var):
    monkeypatch.setenv(var, "1")  # the fixture's _download fails the test if called
    assert W.is_offline()
    with pytest.raises(WeightsNotFoundError) as err:
        W.resolve_state_dict(
            source(url="https://example.invalid/tiny-abcdef12.pth", hf_hub_id="timm/tiny.x",
                   download="timm", download_ref="tiny.x"),
            backbone="timm:tiny",
        )
    msg = str(err.value)
    assert "'timm:tiny'" in msg
    for where in ("torch hub cache", "Hugging Face cache", "TRANSFERKIT_CACHE",
                  "weights package", "offline mode is on"):
        assert where in msg
    assert str(env["tk"] / "test--tiny.safetensors") in msg
    assert "three ways" in msg and "pretrained=False" in msg


def test_failed_download_is_reported(env, monkeypatch):
    def broken(src: W.WeightsSource, *, progress: bool) -> dict[str, torch.Tensor]:
        raise OSError("network unreachable")

    monkeypatch.setattr(W, "_download", broken)
    with pytest.raises(WeightsNotFoundError, match="failed: OSError: network unreachable"):
        W.resolve_state_dict(source(download="url", url="https://x.invalid/a.pth"), backbone="t")


def test_no_weights_at_all(env):
    with pytest.raises(WeightsNotFoundError, match="has no pretrained weights"):
        W.resolve_state_dict(None, backbone="t")


def test_offline_values(monkeypatch):
    for var in ("TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert not W.is_offline()
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "0")
    assert not W.is_offline()
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "True")
    assert W.is_offline()


def test_download_output_on_stdout_goes_to_the_log(env, monkeypatch, capsys, caplog):
    # torch hub writes 'Downloading: "<url>" to <file>' on stdout, where callers put results.
    def fake(src: W.WeightsSource, *, progress: bool) -> dict[str, torch.Tensor]:
        sys.stdout.write('Downloading: "https://x.invalid/a.pth" to /c/a.pth\n')
        print("second", end="")  # an unfinished line is logged too
        return tiny_state(10)

    monkeypatch.setattr(W, "_download", fake)
    with caplog.at_level(logging.INFO, logger=W.logger.name):
        got, origin = W.resolve_state_dict(source(download="url", url="https://x.invalid/a.pth"),
                                           backbone="t")
    assert same(got, tiny_state(10)) and origin == "download (None)"
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == [
        "Downloading weights for t (None)",
        'Downloading: "https://x.invalid/a.pth" to /c/a.pth',
        "second",
    ]


# --- locate_weights: where the weights would come from, nothing read ---------------------


def test_locate_weights_finds_each_place_in_order_without_reading(env, tmp_path):
    full = source(url="https://example.invalid/tiny-abcdef12.pth", hf_hub_id="timm/tiny.x",
                  package="tiny-weights", package_file=lambda: None, download="url",
                  download_ref="tiny")
    where = W.locate_weights(full)
    assert (where.available_offline, where.origin, where.path, where.download) == (
        False, None, None, "allowed")
    assert [t.split(":")[0] for t in where.tried] == [
        "torch hub cache", "Hugging Face cache", "TRANSFERKIT_CACHE", "weights package"]
    # Files that are not even weights: found (by name), never read.
    own = env["tk"] / "test--tiny.pth"
    own.parent.mkdir()
    own.write_bytes(b"garbage")
    where = W.locate_weights(full)
    assert (where.origin, where.path, where.sha256_prefix) == ("TRANSFERKIT_CACHE", own, None)
    assert len(where.tried) == 2 and where.available_offline
    hub = env["torch"] / "hub" / "checkpoints" / "tiny-abcdef12.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"garbage")
    where = W.locate_weights(full)
    assert (where.origin, where.path, where.sha256_prefix, where.tried) == (
        "torch hub cache", hub, "abcdef12", ())


def test_locate_weights_download_modes(env, monkeypatch, tmp_path):
    assert W.locate_weights(source()).download == "none"
    packaged = source(package="p", package_file=lambda: tmp_path / "w-1234abcd.pth")
    where = W.locate_weights(packaged)
    assert (where.origin, where.sha256_prefix) == ("package", "1234abcd")
    assert W.locate_weights(source(download="url", url="https://x/a.pth")).download == "allowed"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W.locate_weights(source(download="url", url="https://x/a.pth")).download == "offline"


# --- safety ------------------------------------------------------------------------------


class Payload:
    """Pickles to a call of os.mkdir(marker): proof that unpickling executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    # The payload is live: plain pickle would run it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()
    for name, save in (("zip.pth", torch.save), ("legacy.pth", None)):
        path = tmp_path / name
        evil = {"weight": torch.zeros(1), "x": Payload(marker)}
        if save is None:
            with path.open("wb") as f:
                pickle.dump(evil, f, protocol=2)
        else:
            save(evil, path)
        with pytest.raises(WeightsError, match="Refused") as err:
            W.load_file(path)
        assert str(path) in str(err.value)
        assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_a_weights_error(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    state = tiny_state(11)
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError) as err:
        W.load_file(path)
    assert str(path) in str(err.value)
    assert not isinstance(err.value, WeightsNotFoundError)


def test_garbage_and_non_state_dicts(tmp_path):
    garbage = tmp_path / "g.bin"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="g.bin"):
        W.load_file(garbage)
    odd = tmp_path / "odd.pth"
    torch.save({"weight": torch.zeros(1), "epoch": 3}, odd)
    with pytest.raises(WeightsError, match="non-tensor entries"):
        W.load_file(odd)


def test_wrapped_and_ddp_checkpoints_are_unwrapped(tmp_path):
    state = tiny_state(12)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    assert same(W.load_file(path), state)


def test_hash_prefix_parsing():
    assert W.hash_prefix("https://download.pytorch.org/models/resnet18-f37072fd.pth") == "f37072fd"
    assert W.hash_prefix("efficientnet-lite0-57934424.pth") == "57934424"
    assert W.hash_prefix("my-model.pth") is None


# --- strict loading ----------------------------------------------------------------------


def test_shape_mismatch_names_tensor_and_shapes_and_leaves_model_untouched():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = tiny_state(13)
    state["3.weight"] = torch.zeros(10, 4)
    with pytest.raises(WeightsMismatchError) as err:
        W.load_checked(model, state, origin="file 'x.pth'")
    msg = str(err.value)
    assert "'3.weight'" in msg and "(10, 4)" in msg and "(2, 4)" in msg
    assert same(model.state_dict(), before)


def test_missing_and_unexpected_names():
    model = tiny()
    state = tiny_state(14)
    del state["0.weight"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError, match=r"missing \(first: '0.weight'\).*'extra'"):
        W.load_checked(model, state, origin="x")


def test_load_checked_copies_values_and_tolerates_missing_counters():
    model = tiny()
    state = tiny_state(15)
    del state["1.num_batches_tracked"]
    W.load_checked(model, state, origin="x")
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_load_checked_loads_into_a_compiled_model():
    model = tiny()
    state = tiny_state(16)
    W.load_checked(torch.compile(model, backend="eager"), state, origin="x")
    assert same(model.state_dict(), state)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod."])
def test_state_dicts_saved_from_compiled_models_are_unwrapped(tmp_path, prefix):
    state = tiny_state(17)
    path = tmp_path / "compiled.pth"
    torch.save({f"{prefix}{k}": v for k, v in state.items()}, path)
    assert same(W.load_file(path), state)


# --- content verification ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["path", "transferkit cache", "hugging face cache"])
def test_flipped_bytes_in_a_pth_file_name_the_entry_and_tensor(env, damage, where):
    state = tiny_state(18)
    files = {
        "path": env["tk"].parent / "weights.pth",
        "transferkit cache": env["tk"] / "test--tiny.pth",
        "hugging face cache": env["hf"] / "models--timm--tiny.t" / "snapshots" / "r1"
        / "pytorch_model.bin",
    }
    path = files[where]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    entry = damage.zip_tensor(path, state["0.weight"])
    assert not same(torch.load(path, weights_only=True), state)  # torch.load sees nothing
    with pytest.raises(WeightsError) as err:
        if where == "path":
            W.load_file(path)
        else:
            W.resolve_state_dict(source(hf_hub_id="timm/tiny.t"), backbone="t")
    assert str(err.value) == (
        f"Weights file {str(path)!r} is corrupt: zip entry {entry!r} (the data of tensor "
        "'0.weight') fails its CRC-32 check; nothing was loaded. Delete it and fetch it again."
    )


def test_safetensors_file_with_a_digest_record_is_verified(tmp_path, damage):
    state = tiny_state(19)
    path = tmp_path / "w.safetensors"
    save_file(state, path, metadata={DIGEST_KEY: digest_record(state, {})})
    assert same(W.load_file(path), state)
    damage.safetensors_tensor(path, "0.weight")
    with pytest.raises(WeightsError) as err:
        W.load_file(path)
    assert str(err.value) == (
        f"Weights file {str(path)!r} is corrupt: tensor '0.weight' does not match the sha256 "
        "recorded when the file was written; nothing was loaded. Delete it and fetch it again."
    )


def test_hugging_face_blob_is_checked_against_the_sha256_it_is_named_by(env, damage):
    state = tiny_state(20)
    repo = env["hf"] / "models--timm--tiny.t"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "r1").mkdir(parents=True)
    made = repo / "made.safetensors"
    save_file(state, made)
    blob = repo / "blobs" / hashlib.sha256(made.read_bytes()).hexdigest()
    made.rename(blob)
    link = repo / "snapshots" / "r1" / "model.safetensors"
    link.symlink_to(os.path.relpath(blob, link.parent))  # what huggingface_hub does
    assert W.hf_blob_sha256(link) == blob.name
    got, _ = W.resolve_state_dict(source(hf_hub_id="timm/tiny.t"), backbone="t")
    assert same(got, state)
    damage.safetensors_tensor(blob, "0.weight")  # a plain safetensors file: no record
    with pytest.raises(WeightsError, match=(
        rf"Weights file '{link}' fails its hash check: sha256 starts with '[0-9a-f]{{64}}', "
        rf"expected '{blob.name}'")):
        W.resolve_state_dict(source(hf_hub_id="timm/tiny.t"), backbone="t")


def test_a_copied_hugging_face_file_has_no_blob_name_to_check(tmp_path):
    path = tmp_path / "snapshots" / "r1" / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file(tiny_state(21), path)
    assert W.hf_blob_sha256(path) is None
