"""``hf_hub:org/name`` backbones and timm's tagged names, offline against seeded caches.

Each test seeds a temporary Hugging Face cache (the ``env`` fixture points ``HF_HUB_CACHE``
at it and fails any download) in the layout ``huggingface_hub`` writes: ``blobs/<sha256>``,
``snapshots/<revision>/<file>`` links to them, and ``refs/main``. The repositories hold a
tiny timm model saved by timm's own ``save_for_hf`` (config.json + model.safetensors).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from timm.models._hub import save_for_hf

import transferkit.backbones.hf_hub as H
from transferkit.backbones import load_model, save_model
from transferkit.backbones.registry import (
    backbone_info,
    backbone_spec,
    create,
    list_backbones,
    load_backbone,
    register_backbone,
)
from transferkit.cli import main
from transferkit.errors import (
    ConfigError,
    UnknownBackboneError,
    WeightsError,
    WeightsNotFoundError,
)

REV = "5c1f0e9d2b7a4c3e8f6a1b0d9c8e7f6a5b4c3d2e"
ARCH = "test_resnet"  # timm's own tiny test model (~0.4 M parameters)


def seed_repo(cache: Path, repo_id: str, model: torch.nn.Module, *,
              weights: bool = True) -> Path:
    """Save ``model`` with timm into ``cache`` as the Hub would have cached it."""
    out = cache.parent / f"export-{repo_id.replace('/', '-')}"
    save_for_hf(model, str(out), safe_serialization=True)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REV
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in ["config.json"] + (["model.safetensors"] if weights else []):
        data = (out / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    shutil.rmtree(out)
    return repo


@pytest.fixture
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False, num_classes=7)


def test_create_loads_exactly_the_cached_weights(env, tiny) -> None:
    seed_repo(env["hf"], "acme/tiny-net", tiny)
    want = tiny.state_dict()
    original = load_backbone("hf_hub:acme/tiny-net")
    assert original.state_dict().keys() == want.keys()
    assert all(torch.equal(original.state_dict()[k], want[k]) for k in want)  # bitwise

    model = create("hf_hub:acme/tiny-net", 3)
    got = model.state_dict()
    head = model.get_classifier()
    assert head.out_features == 3
    body = [k for k in want if not k.startswith("fc.")]
    assert body and all(torch.equal(got[k], want[k]) for k in body)
    assert model.transferkit_info.original_num_classes == 7
    assert model.transferkit_info.mean == tuple(tiny.pretrained_cfg["mean"])


def test_timm_spelling_and_what_the_spec_says(env, tiny) -> None:
    seed_repo(env["hf"], "acme/tiny-net", tiny)
    spec = backbone_spec("hf-hub:acme/tiny-net")  # timm's spelling of the prefix
    assert (spec.name, spec.source, spec.architecture) == ("hf_hub:acme/tiny-net", "hf_hub", ARCH)
    assert spec.num_classes == 7 and spec.weights.hf_hub_id == "acme/tiny-net"
    assert spec.input_size == tuple(tiny.pretrained_cfg["input_size"])
    info = backbone_info("hf_hub:acme/tiny-net", stages=False)
    assert info.hf_hub_id == "acme/tiny-net" and info.has_weights


def test_offline_without_cached_weights_names_the_cache_and_never_uses_random(
        env, tiny, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = seed_repo(env["hf"], "acme/tiny-net", tiny, weights=False)  # config only
    with pytest.raises(WeightsNotFoundError) as err:
        create("hf_hub:acme/tiny-net", 3)
    text = str(err.value)
    assert f"{repo}/snapshots/<revision>/model.safetensors" in text
    assert "offline mode is on" in text and "hf download acme/tiny-net" in text
    # The architecture is known from the config: pretrained=False is an explicit choice.
    assert create("hf_hub:acme/tiny-net", 3, pretrained=False).get_classifier().out_features == 3


def test_offline_and_nothing_cached(env, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for pretrained in (True, False):  # without a config not even the architecture is known
        with pytest.raises(WeightsNotFoundError) as err:
            create("hf_hub:acme/absent", 3, pretrained=pretrained)
        text = str(err.value)
        assert str(env["hf"] / "models--acme--absent") in text
        assert "offline mode is on" in text and "HF_HOME" in text
        assert "random weights" in text


def test_online_config_download_failure_and_success(env, tiny, monkeypatch) -> None:
    def no_network(repo_id: str) -> Path:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(H, "_download_config", no_network)
    with pytest.raises(WeightsNotFoundError, match="downloading it failed: OSError: Network"):
        backbone_spec("hf_hub:acme/tiny-net")

    def fetched(repo_id: str) -> Path:  # what hf_hub_download leaves behind
        repo = seed_repo(env["hf"], repo_id, tiny)
        return repo / "snapshots" / REV / "config.json"

    monkeypatch.setattr(H, "_download_config", fetched)
    assert backbone_spec("hf_hub:acme/tiny-net").architecture == ARCH


def test_damaged_cached_blob_fails_its_hash(env, tiny) -> None:
    repo = seed_repo(env["hf"], "acme/tiny-net", tiny)
    blob = (repo / "snapshots" / REV / "model.safetensors").resolve()
    raw = bytearray(blob.read_bytes())
    raw[-16:] = bytes(16)
    blob.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="fails its hash check"):
        create("hf_hub:acme/tiny-net", 3)


@pytest.mark.parametrize("bad", ["hf_hub:", "hf_hub:noslash", "hf_hub:a/b/c",
                                 "hf_hub:/name", "hf_hub:acme/net@v1"])
def test_malformed_hub_names(bad) -> None:
    with pytest.raises(ConfigError, match="hf_hub:org/name"):
        backbone_spec(bad)


def test_repository_that_is_not_a_timm_model(env, tiny) -> None:
    repo = seed_repo(env["hf"], "acme/bert", tiny)
    config = repo / "snapshots" / REV / "config.json"
    config.unlink()
    config.write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 8}))
    with pytest.raises(UnknownBackboneError, match="not a timm model config"):
        backbone_spec("hf_hub:acme/bert")
    assert list_backbones("hf_hub:*") == []  # not listed either

    config.write_text(json.dumps({"architecture": "resnet_from_the_future",
                                  "pretrained_cfg": {"input_size": [3, 8, 8]}}))
    with pytest.raises(UnknownBackboneError, match="does not have. Upgrade timm"):
        backbone_spec("hf_hub:acme/bert")


def test_list_backbones_shows_cached_hub_models_and_timm_tags(env, tiny) -> None:
    seed_repo(env["hf"], "acme/tiny-net", tiny)
    assert list_backbones("hf_hub:*") == ["hf_hub:acme/tiny-net"]
    assert list_backbones("*tiny-net*", pretrained=True) == ["hf_hub:acme/tiny-net"]
    assert list_backbones(source="hf_hub") == ["hf_hub:acme/tiny-net"]
    assert list_backbones("*tiny-net*", pretrained=False) == []

    want = sorted(["timm:" + n for n in timm.list_models("resnet18*")]
                  + ["timm:" + n for n in timm.list_pretrained("resnet18*")])
    assert list_backbones("timm:resnet18*") == want
    assert "timm:resnet18.a1_in1k" in want and "timm:resnet18.tv_in1k" in want
    assert backbone_spec("timm:resnet18.tv_in1k").weights_tag == "tv_in1k"


def test_bare_pattern_searches_every_source(fresh) -> None:
    @register_backbone("acme:convnext_mini")
    def mini() -> torch.nn.Module:
        return torch.nn.Linear(2, 2)

    names = list_backbones("*convnext*")
    assert {"convnext_tiny", "timm:convnext_atto", "timm:convnext_atto.d2_in1k",
            "acme:convnext_mini"} <= set(names)


@pytest.mark.parametrize("org", ["hf_hub", "hf-hub"])
def test_hub_prefixes_are_reserved(fresh, org) -> None:
    with pytest.raises(ConfigError, match="org not in"):
        register_backbone(f"{org}:mine")


def test_headless_hub_model_gets_a_head_and_round_trips(env, tmp_path) -> None:
    torch.manual_seed(1)
    features = timm.create_model(ARCH, pretrained=False, num_classes=0)  # a feature extractor
    seed_repo(env["hf"], "acme/features", features)
    model = create("hf_hub:acme/features", 4)
    assert model.get_classifier().out_features == 4
    assert model.transferkit_info.original_num_classes == 0
    want = features.state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
    path = save_model(model, tmp_path / "m.safetensors", backbone="hf_hub:acme/features",
                      class_names=list("abcd"), image_size=64)
    loaded, meta = load_model(path)
    x = torch.rand(2, 3, 64, 64)
    assert meta.backbone == "hf_hub:acme/features"
    assert torch.equal(loaded(x), model.eval()(x))


def test_cli_lists_hub_names_with_where_their_weights_are(env, tiny, capsys) -> None:
    seed_repo(env["hf"], "acme/tiny-net", tiny)
    seed_repo(env["hf"], "acme/config-only", tiny, weights=False)
    assert main(["backbones", "hf_hub:*"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        ["hf_hub:acme/config-only", "hf_hub", "pretrained", "download (not in any cache)"],
        ["hf_hub:acme/tiny-net", "hf_hub", "pretrained", "offline (Hugging Face cache)"],
    ]
