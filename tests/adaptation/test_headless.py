"""Backbones without a classifier: a new head on their pooled features, or a clear error.

timm models get theirs through ``reset_classifier``; any other module whose forward returns
``(N, D)`` features is wrapped in a ``PooledClassifier`` (``body`` + ``head``). Whatever
the route, the result must behave like any adapted model: the head is the head for
``param_groups``, freezing, ``get_info`` and model files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import transferkit as tk
from transferkit.adaptation.heads import PooledClassifier
from transferkit.backbones import load_model, save_model
from transferkit.backbones.registry import create, register_backbone


class Tower(nn.Module):
    """A DINO-style tower: conv body, pooled, normalised; no classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(8, 16, 3, padding=1))
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.stem(x)).mean((2, 3)))


class ClipStyle(nn.Module):
    """A CLIP-style tower: the embedding is a projection by a bare parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.proj = nn.Parameter(torch.randn(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) @ self.proj


def _clone(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("make", [
    lambda: timm.create_model("test_resnet", pretrained=False, num_classes=0),
    lambda: timm.create_model("test_vit", pretrained=False, num_classes=0),
])
def test_timm_without_classifier_gets_one_through_reset_classifier(make) -> None:
    torch.manual_seed(0)
    model = make()
    info = tk.get_info(model)
    assert (info.heads, info.num_classes) == ((), 0)
    before = _clone(model)
    adapted = tk.adapt(model, 6)
    assert adapted is model  # timm's own head, in place: no wrapper
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 6
    info = tk.get_info(model)
    assert info.heads and model.get_submodule(info.heads[0]) is head
    assert info.original_num_classes == 0 and info.num_classes == 6
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # body bit for bit
    size = info.input_size[0]
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 6)


def test_eva02_whose_pretrained_config_has_no_head() -> None:
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False)
    assert model.pretrained_cfg["num_classes"] == 0 and isinstance(model.get_classifier(),
                                                                   nn.Identity)
    tk.adapt(model, 10)
    assert model.get_classifier().out_features == 10
    groups = {g["name"]: g for g in tk.param_groups(model, head_lr=1e-2, body_lr=1e-3)}
    assert [p.shape for p in groups["head"]["params"]] == [(10, 192), (10,)]


@pytest.mark.parametrize("make", [Tower, ClipStyle])
def test_pooled_features_get_a_wrapped_linear_head(make) -> None:
    torch.manual_seed(0)
    tower = make()
    before = _clone(tower)
    x = torch.rand(2, 3, 16, 16)
    features = tower.eval()(x)
    model = tk.adapt(tower, 3)
    assert isinstance(model, PooledClassifier) and model.body is tower
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (features.shape[1], 3)
    info = tk.get_info(model)
    assert info.heads == ("head",) and info.original_num_classes == 0
    assert all(p.startswith("body.") for s in info.stages for p in s.params)
    assert all(torch.equal(tower.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(model.eval()(x), model.head(features))


def test_wrapped_head_is_the_head_for_groups_freezing_and_stages() -> None:
    model = tk.adapt(Tower(), 4)
    info = tk.get_info(model)
    assert [s.name for s in info.stages] == ["0:stem", "1:blocks", "2:norm"]
    groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"head", "body"} and by_name["head"]["lr"] == 1e-2
    assert {id(p) for p in by_name["head"]["params"]} == {id(p) for p in model.head.parameters()}
    decayed = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, layer_decay=0.5)
    assert [g["name"] for g in decayed] == ["stage0:stem", "stage1:blocks", "stage2:norm", "head"]
    tk.freeze(model, "body")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    assert "head" in tk.freezing_summary(model)
    tk.freeze(model, "stages:0")  # the stem only
    assert not model.body.stem.weight.requires_grad and model.body.norm.weight.requires_grad


def test_readapting_and_grey_input_keep_one_wrapper() -> None:
    model = tk.adapt(Tower(), 4, in_chans=1)
    assert tk.get_info(model).input_layers == ("body.stem",)
    assert model.body.stem.in_channels == 1
    again = tk.adapt(model, 2, in_chans=1)
    assert again is model and model.head.out_features == 2  # the head is replaced, not wrapped
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 2)


def test_wrapped_model_round_trips_through_a_model_file(fresh, tmp_path: Path) -> None:
    @register_backbone("acme:tower", num_classes=0)
    def tower() -> nn.Module:
        return Tower()

    torch.manual_seed(0)
    model = create("acme:tower", 3, pretrained=False)
    assert isinstance(model, PooledClassifier)
    path = save_model(model, tmp_path / "tower.safetensors", backbone="acme:tower",
                      class_names=["a", "b", "c"], image_size=16)
    loaded, meta = load_model(path)
    x = torch.rand(2, 3, 16, 16)
    assert isinstance(loaded, PooledClassifier) and meta.num_classes == 3
    assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(3, 4, 3),
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3)),
    lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
    lambda: timm.create_model("test_resnet", pretrained=False, num_classes=0, global_pool=""),
])
def test_feature_map_output_cannot_take_a_head(make) -> None:
    model = make()
    before = _clone(model)
    with pytest.raises(tk.HeadNotFoundError, match=r"outputs a 4-D tensor.*AdaptiveAvgPool2d"):
        tk.adapt(model, 3)
    assert not hasattr(model, "transferkit_info")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_pooling_the_map_as_the_message_says_works() -> None:
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(tk.HeadNotFoundError) as err:
        tk.adapt(conv, 3)
    assert "nn.Linear(4, num_classes)" in str(err.value)  # the map's channels, spelt out
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    tk.adapt(model, 3)
    assert tk.get_info(model).heads == ("3",) and model(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
