"""param_groups(): coverage, LRs, weight decay, layer decay, schedulers, bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision

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
