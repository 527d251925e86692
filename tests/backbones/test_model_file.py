"""Model files: safetensors weights + JSON metadata, rebuilt without pretrained weights."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from transferkit._integrity import DIGEST_KEY, digest_record
from transferkit.backbones.model_file import (
    FORMAT_VERSION,
    METADATA_KEY,
    load_model,
    read_meta,
    save_model,
)
from transferkit.backbones.registry import create, register_backbone, unregister_backbone
from transferkit.errors import CheckpointError, ConfigError, UnknownBackboneError
from transferkit.recipes import EvalMode

TINY = "tktest:tiny"


@pytest.fixture
def tiny() -> Iterator[str]:
    """Register a tiny backbone (conv, BN, linear head) for the duration of a test."""

    @register_backbone(TINY, replace=True)
    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000),
        )

    yield TINY
    unregister_backbone(TINY)


def _trained(name: str, num_classes: int = 3, in_chans: int = 1) -> nn.Module:
    torch.manual_seed(0)
    model = create(name, num_classes, in_chans=in_chans, pretrained=False)
    with torch.no_grad():  # non-default BN statistics, so buffers are checked too
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model.eval()


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def test_round_trip_is_bitwise_equal(tiny: str, tmp_path: Path) -> None:
    model = _trained(tiny)
    path = save_model(model, tmp_path / "m.safetensors", backbone=tiny,
                      class_names=["a", "b", "c"], image_size=(12, 16), extra={"acc": 0.5})
    loaded, meta = load_model(path)
    x = torch.randn(4, 1, 12, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert meta.backbone == tiny and meta.num_classes == 3 and meta.in_chans == 1
    assert meta.class_names == ("a", "b", "c") and meta.image_size == (12, 16)
    assert len(meta.mean) == len(meta.std) == 1 and meta.extra == {"acc": 0.5}
    assert meta.format_version == FORMAT_VERSION
    assert read_meta(path) == meta


def test_round_trip_resnet18_rgb(tmp_path: Path) -> None:
    model = _trained("resnet18", num_classes=2, in_chans=3)
    path = save_model(model, tmp_path / "r.safetensors", backbone="resnet18",
                      class_names=["x", "y"], image_size=16)
    loaded, meta = load_model(path)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta.image_size == (16, 16) and len(meta.mean) == 3


def test_file_is_plain_safetensors_without_pickle(tiny: str, tmp_path: Path) -> None:
    model = _trained(tiny)
    path = save_model(model, tmp_path / "m.safetensors", backbone=tiny,
                      class_names=["a", "b", "c"], image_size=8)
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and not raw.startswith(b"PK") and raw[:1] != b"\x80"
    header = _header(path)
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    assert meta["class_names"] == ["a", "b", "c"] and meta["backbone"] == tiny
    tensors = load_file(path)  # safetensors only, no torch.load
    assert tensors.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[key], value)


def test_tied_weights_are_saved(tmp_path: Path) -> None:
    @register_backbone("tktest:tied", replace=True)
    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 4), nn.Linear(4, 1000))

    try:
        model = create("tktest:tied", 4, pretrained=False)
        model[4].weight = model[3].weight  # shared memory: safetensors refuses it as is
        path = save_model(model, tmp_path / "t.safetensors", backbone="tktest:tied",
                          class_names="abcd", image_size=4)
        loaded, _ = load_model(path)
        assert torch.equal(loaded[4].weight, model[3].weight)
    finally:
        unregister_backbone("tktest:tied")


def test_bad_class_names_fail_before_writing(tiny: str, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"previous")
    with pytest.raises(ConfigError, match=r"class_names has 2 names but the model has 3"):
        save_model(_trained(tiny), path, backbone=tiny, class_names=["a", "b"], image_size=8)
    assert path.read_bytes() == b"previous"
    with pytest.raises(ConfigError, match="image_size"):
        save_model(_trained(tiny), path, backbone=tiny, class_names="abc", image_size=0)
    with pytest.raises(UnknownBackboneError, match="resnet18"):
        save_model(_trained(tiny), path, backbone="resnet181", class_names="abc", image_size=8)
    with pytest.raises(ConfigError, match="JSON"):
        save_model(_trained(tiny), path, backbone=tiny, class_names="abc", image_size=8,
                   extra={"bad": object()})
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_missing_folder(tiny: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        save_model(_trained(tiny), tmp_path / "nope" / "m.safetensors", backbone=tiny,
                   class_names="abc", image_size=8)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"'.*absent.safetensors' does not exist"):
        load_model(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("cut", [5, 100, -10])
def test_truncated_file(tiny: str, tmp_path: Path, cut: int) -> None:
    path = save_model(_trained(tiny), tmp_path / "m.safetensors", backbone=tiny,
                      class_names="abc", image_size=8)
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(CheckpointError, match=r"cut.safetensors' is not a readable safetensors"):
        load_model(bad)


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not a readable safetensors model file"):
        load_model(bad)


def test_safetensors_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="without transferkit metadata"):
        load_model(path)


def _rewrite_meta(src: Path, dst: Path, **changes: object) -> Path:
    with safe_open(src, framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    meta.update(changes)
    _write(load_file(src), dst, json.dumps(meta))
    return dst


def _write(state: dict, dst: Path, text: str) -> None:
    """Write a model file by hand, with a valid digest record."""
    metadata = {METADATA_KEY: text}
    save_file(state, dst, metadata={**metadata, DIGEST_KEY: digest_record(state, metadata)})


def test_unknown_backbone_and_mismatch(tiny: str, tmp_path: Path) -> None:
    path = save_model(_trained(tiny), tmp_path / "m.safetensors", backbone=tiny,
                      class_names="abc", image_size=8)
    gone = _rewrite_meta(path, tmp_path / "gone.safetensors", backbone="tktest:gone")
    with pytest.raises(CheckpointError, match=r"backbone 'tktest:gone'.*Unknown backbone"):
        load_model(gone)
    wrong = _rewrite_meta(path, tmp_path / "wrong.safetensors", num_classes=5,
                          class_names=list("abcde"))
    with pytest.raises(CheckpointError, match=r"do not fit backbone .*num_classes=5"):
        load_model(wrong)
    newer = _rewrite_meta(path, tmp_path / "new.safetensors", format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="Upgrade transferkit"):
        load_model(newer)
    broken = _rewrite_meta(path, tmp_path / "broken.safetensors", in_chans="x")
    with pytest.raises(CheckpointError, match="malformed transferkit metadata"):
        read_meta(broken)


# ------------------------------------------------------------------ wrapped models
@pytest.mark.parametrize(
    "wrap",
    [lambda m: torch.compile(m, backend="eager"), nn.DataParallel, EvalMode],
    ids=["compiled", "data-parallel", "view"],
)
def test_wrapped_models_are_saved_under_their_own_names(tiny: str, tmp_path: Path, wrap) -> None:
    # torch.compile's "eager" backend wraps exactly as the default one, without compiling.
    model = _trained(tiny)
    path = save_model(wrap(model), tmp_path / "m.safetensors", backbone=tiny,
                      class_names="abc", image_size=8)
    assert sorted(load_file(path)) == sorted(model.state_dict())  # no _orig_mod./module.
    loaded, _ = load_model(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _saved(tiny: str, tmp_path: Path) -> tuple[nn.Module, dict, str]:
    """A trained model, the tensors save_model wrote for it, and its metadata text."""
    model = _trained(tiny)
    good = save_model(model, tmp_path / "m.safetensors", backbone=tiny, class_names="abc",
                      image_size=8)
    with safe_open(good, framework="pt") as f:
        return model, load_file(good), f.metadata()[METADATA_KEY]


def test_a_file_saved_with_compiled_names_still_loads(tiny: str, tmp_path: Path) -> None:
    model, tensors, text = _saved(tiny, tmp_path)
    old = tmp_path / "old.safetensors"  # as an earlier save_model(torch.compile(m)) wrote it
    _write({f"_orig_mod.{k}": v for k, v in tensors.items()}, old, text)
    loaded, _ = load_model(old)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# ------------------------------------------------------------------ content verification
def test_flipped_bytes_in_a_tensor_name_the_tensor(tiny: str, tmp_path: Path, damage) -> None:
    path = save_model(_trained(tiny), tmp_path / "m.safetensors", backbone=tiny,
                      class_names="abc", image_size=8)
    damage.safetensors_tensor(path, "0.weight")
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(err.value) == (
        f"Model file {str(path)!r} is corrupt: tensor '0.weight' does not match the sha256 "
        "recorded when the file was written, so its bytes changed after it was written "
        "(disk, copy or transfer error); nothing was loaded. Use another copy of the file, "
        "or write it again with save_model."
    )


def test_changed_metadata_is_detected(tiny: str, tmp_path: Path) -> None:
    path = save_model(_trained(tiny), tmp_path / "m.safetensors", backbone=tiny,
                      class_names=["cat", "dog", "emu"], image_size=8)
    raw = path.read_bytes()
    assert raw.count(b"emu") == 1
    path.write_bytes(raw.replace(b"emu", b"elk"))  # same length: the header stays valid
    assert read_meta(path).class_names == ("cat", "dog", "elk")  # the header alone: unchecked
    with pytest.raises(CheckpointError, match=r"is corrupt: metadata 'transferkit' does not "
                                              r"match the sha256 recorded"):
        load_model(path)


def test_a_file_without_digest_record_loads_with_a_warning(tiny: str, tmp_path: Path) -> None:
    model, tensors, text = _saved(tiny, tmp_path)
    plain = tmp_path / "plain.safetensors"
    save_file(tensors, plain, metadata={METADATA_KEY: text})
    with pytest.warns(UserWarning, match=r"has no digest record \('transferkit.sha256'\): it "
                                         r"was written by an older transferkit or another tool, "
                                         r"so damaged bytes cannot be detected"):
        loaded, _ = load_model(plain)
    assert torch.equal(loaded[0].weight, model[0].weight)
