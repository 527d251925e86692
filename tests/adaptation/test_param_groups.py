"""param_groups(): coverage, LRs, weight decay, layer decay, schedulers, bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import transferkit as tk


@pytest.fixture
def model():
    torch.manual_seed(0)
    return tk.adapt(torchvision.models.resnet18(), 10, in_chans=1)


def test_head_and_body_lrs_and_no_decay(model):
    groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"head", "head/no_decay", "body", "body/no_decay"}
    assert by_name["head"]["params"] == [model.fc.weight]
    assert by_name["head/no_decay"]["params"] == [model.fc.bias]
    assert by_name["head"]["lr"] == 1e-2 and by_name["body"]["lr"] == 1e-3
    assert all(p.ndim <= 1 for p in by_name["body/no_decay"]["params"])
    assert by_name["body/no_decay"]["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_layer_decay_counts_back_from_the_head(model):
    groups = tk.param_groups(model, head_lr=1.0, body_lr=0.5, layer_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {
        "stage0:stem": 0.5 * 0.5**4,
        "stage1:layer1": 0.5 * 0.5**3,
        "stage2:layer2": 0.5 * 0.5**2,
        "stage3:layer3": 0.5 * 0.5,
        "stage4:layer4": 0.5,
        "head": 1.0,
    }


def test_frozen_left_out_unless_asked(model):
    tk.freeze(model, "body")
    groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3)
    assert [g["name"] for g in groups] == ["head"]
    everything = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, include_frozen=True)
    assert sum(len(g["params"]) for g in everything) == len(list(model.parameters()))


@pytest.mark.parametrize("kind", ["onecycle", "cosine", "lambda"])
def test_ratios_survive_schedulers(model, kind):
    groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, layer_decay=0.7)
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    ratios = [g["lr"] / groups[-1]["lr"] for g in opt.param_groups]
    if kind == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in groups], total_steps=20
        )
    elif kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    for step in range(15):
        opt.step()
        sched.step()
        if step in (0, 5, 14):
            now = [g["lr"] / opt.param_groups[-1]["lr"] for g in opt.param_groups]
            assert now == pytest.approx(ratios), step


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head_lr": -1.0, "body_lr": 1e-3}, "head_lr must be a finite number >= 0, got -1.0"),
        ({"head_lr": 1.0, "body_lr": float("nan")}, "body_lr"),
        ({"head_lr": 1.0, "body_lr": 1.0, "layer_decay": 1.5},
         "layer_decay must be a finite number > 0 and <= 1, got 1.5"),
        ({"head_lr": 1.0, "body_lr": 1.0, "weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_rates(model, kwargs, match):
    with pytest.raises(tk.ConfigError, match=match):
        tk.param_groups(model, **kwargs)


def test_table_lists_every_group(model):
    groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3)
    table = tk.param_groups_table(groups)
    lines = table.splitlines()
    assert lines[0].split() == ["group", "#params", "lr", "weight_decay"]
    assert lines[2].split() == ["head", "5,130", "0.01", "0"]


# ------------------------------------------------------ what the model exempts from decay
def timm_model(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    if name.startswith("swin"):  # a small Swin: 5 blocks, so 5 relative-position tables
        return timm.create_model(name, pretrained=False, num_classes=4, img_size=32,
                                 window_size=4, embed_dim=24, depths=(1, 1, 2, 1),
                                 num_heads=(1, 1, 2, 2))
    return timm.create_model(name, pretrained=False, num_classes=4, img_size=32)


SWIN_TABLES = {
    f"layers.{i}.blocks.{j}.attn.relative_position_bias_table"
    for i, depth in enumerate((1, 1, 2, 1))
    for j in range(depth)
}


def no_decay_names(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}


@pytest.mark.parametrize(
    ("name", "exempt"),
    [
        ("vit_tiny_patch16_224", {"pos_embed", "cls_token"}),
        ("deit_tiny_patch16_224", {"pos_embed", "cls_token"}),
        ("deit_tiny_distilled_patch16_224", {"pos_embed", "cls_token", "dist_token"}),
        ("swin_tiny_patch4_window7_224", SWIN_TABLES),
    ],
)
def test_timm_no_weight_decay_is_honoured(name, exempt):
    model = tk.adapt(timm_model(name), 3, input_size=32)
    groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, weight_decay=0.05)
    one_dim = {n for n, p in model.named_parameters() if p.ndim < 2}
    assert all(p.ndim > 1 for n, p in model.named_parameters() if n in exempt)
    assert no_decay_names(model, groups) == one_dim | exempt
    decayed = {n for n, _ in model.named_parameters()} - one_dim - exempt
    assert {g["weight_decay"] for g in groups if g["weight_decay"]} == {0.05}
    assert {n for n, p in model.named_parameters()} - no_decay_names(model, groups) == decayed
    # layer decay splits the stages, not the rule
    layered = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, weight_decay=0.05,
                              layer_decay=0.7)
    assert no_decay_names(model, layered) == one_dim | exempt


class Tokens(nn.Module):
    """A block that exempts its own parameters, one by name and others by pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 4, 8))
        self.rel = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.proj = nn.Linear(8, 8)

    def no_weight_decay(self):
        return {"pos", "rel.*.weight", "absent"}

    def forward(self, x):
        return self.proj(self.rel[1](self.rel[0](x + self.pos)))


class WithTokens(nn.Module):
    def __init__(self, exempt=("stem.weight",)) -> None:
        super().__init__()
        self.exempt = exempt
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.tokens = Tokens()
        self.fc = nn.Linear(8, 5)

    def no_weight_decay(self):
        return self.exempt

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)[:, :4]
        return self.fc(self.tokens(t).mean(1))


def test_submodule_names_are_prefixed_and_patterns_match():
    model = tk.adapt(WithTokens(), 3, input_size=8)
    assert tk.get_info(model).heads == ("fc",)
    exempt = {"stem.weight", "tokens.pos", "tokens.rel.0.weight", "tokens.rel.1.weight"}
    one_dim = {n for n, p in model.named_parameters() if p.ndim < 2}
    groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, weight_decay=0.1)
    assert no_decay_names(model, groups) == one_dim | exempt
    body = next(g for g in groups if g["name"] == "body")
    assert body["params"] == [model.tokens.proj.weight]  # the one body weight left decayed
    assert tk.adaptation.no_weight_decay_names(model) == one_dim | exempt


def test_a_timm_model_inside_a_wrapper_keeps_its_exemptions():
    wrapper = nn.Sequential()
    wrapper.add_module("backbone", timm_model("vit_tiny_patch16_224"))
    names = tk.adaptation.no_weight_decay_names(wrapper)
    assert {"backbone.pos_embed", "backbone.cls_token"} <= names
    assert "pos_embed" not in names and "backbone.patch_embed.proj.weight" not in names


@pytest.mark.parametrize("value", ["stem.weight", None, {"stem.weight": 1}.items(), [3]])
def test_a_bad_no_weight_decay_is_refused(value):
    model = tk.adapt(WithTokens(), 3, input_size=8)
    model.exempt = value
    with pytest.raises(tk.ConfigError) as err:
        tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, weight_decay=0.1)
    assert str(err.value) == (
        f"WithTokens.no_weight_decay() of the model returned {value!r}; it must return a set "
        "of parameter names (or fnmatch patterns) relative to that module, e.g. "
        "{'pos_embed', 'cls_token'}."
    )
