"""freeze()/unfreeze(), BN policy, freezing state and gradual unfreezing."""

from __future__ import annotations

import pytest
import torch
import torchvision

import transferkit as tk


@pytest.fixture
def model():
    torch.manual_seed(0)
    return tk.adapt(torchvision.models.resnet18(), 4)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_policies(model):
    names = {n for n, _ in model.named_parameters()}
    tk.freeze(model, "none")
    assert _trainable(model) == names
    tk.freeze(model, "body")
    assert _trainable(model) == {"fc.weight", "fc.bias"}
    tk.freeze(model, "bitfit")
    assert _trainable(model) == {n for n in names if n.endswith("bias")} | {"fc.weight"}
    tk.freeze(model, "norm")
    assert "bn1.weight" in _trainable(model) and "conv1.weight" not in _trainable(model)
    tk.freeze(model, "stages:2")
    assert not any(n.startswith(("conv1", "bn1", "layer1", "layer2")) for n in _trainable(model))
    assert {n for n in names if n.startswith(("layer3", "layer4", "fc"))} == _trainable(model)
    tk.unfreeze(model)
    assert _trainable(model) == names


def test_bn_frozen_survives_train_and_keeps_stats(model):
    tk.freeze(model, "none", bn="frozen")
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    tk.unfreeze(model)
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(model.bn1.running_mean, stats["bn1.running_mean"])


def test_bad_policies_leave_model_unchanged(model):
    tk.freeze(model, "body")
    with pytest.raises(tk.UnknownPolicyError, match="'bodi'.*Did you mean 'body'"):
        tk.freeze(model, "bodi")
    with pytest.raises(tk.StageIndexError, match="stage index 5 out of range.*0..4"):
        tk.freeze(model, "stages:5")
    with pytest.raises(tk.ConfigError,
                       match="bn='eval' is not valid; use one of 'train', 'frozen'"):
        tk.freeze(model, "none", bn="eval")
    assert _trainable(model) == {"fc.weight", "fc.bias"}
    assert isinstance(tk.UnknownPolicyError("x"), ValueError)


def test_state_round_trip(model):
    tk.freeze(model, "stages:1", bn="frozen")
    state = tk.freeze_state(model)
    other = tk.adapt(torchvision.models.resnet18(), 4)
    tk.load_freeze_state(other, state)
    assert _trainable(other) == _trainable(model)
    assert tk.freeze_state(other) == state
    other.train()
    assert other.bn1(torch.randn(2, 64, 4, 4)) is not None and other.bn1.num_batches_tracked == 0


def test_gradual_unfreezing_head_first(model):
    schedule = tk.GradualUnfreezing(model, every=2)
    assert schedule.on_epoch_start(0) == [] and _trainable(model) == {"fc.weight", "fc.bias"}
    assert schedule.on_epoch_start(1) == []
    assert schedule.on_epoch_start(2) == ["4:layer4"]
    assert {n.split(".")[0] for n in _trainable(model)} == {"fc", "layer4"}
    fresh = tk.GradualUnfreezing(model, every=2)  # a pure function of the epoch
    fresh.on_epoch_start(9)  # 4 of 5 stages open: the stem stays frozen
    assert not any(n.startswith(("conv1", "bn1")) for n in _trainable(model))
    fresh.on_epoch_start(10)
    assert _trainable(model) == {n for n, _ in model.named_parameters()}


def test_summary_rows(model):
    tk.freeze(model, "body")
    rows = tk.freezing_summary(model).splitlines()
    assert rows[0].split() == ["stage", "trainable", "total"]
    assert rows[-1].split() == ["head", "2,052", "2,052"]
    assert rows[1].split()[:2] == ["0:stem", "0"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bn": "sideways"}, "freezing state has policy 'body' and bn 'sideways'; expected a "
                             "policy name and bn in ('train', 'frozen'). It was not written by "
                             "freeze_state()."),
        ({"frozen": ["conv1.weight", "nope.weight"]},
         "freezing state does not fit this model: it freezes 1 parameters the model does not "
         "have (first: ['nope.weight']). It was saved from another model."),
    ],
    ids=["bad-bn", "unknown-name"],
)
def test_load_freeze_state_rejects_a_bad_state_and_changes_nothing(model, change, message):
    tk.freeze(model, "stages:1", bn="frozen")
    before, flags = tk.freeze_state(model), [p.requires_grad for p in model.parameters()]
    bad = {"policy": "body", "bn": "train", "frozen": ["conv1.weight"], **change}
    with pytest.raises(tk.ConfigError) as err:
        tk.load_freeze_state(model, bad)
    assert str(err.value) == message
    assert tk.freeze_state(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    model.train()
    model.bn1(torch.randn(2, 64, 4, 4))
    assert model.bn1.num_batches_tracked == 0  # the bn="frozen" hooks are still in place
