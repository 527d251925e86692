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
                       match="bn='eval' is not valid; use one of 'auto', 'train', 'frozen'"):
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
                             "policy name and bn in ('auto', 'train', 'frozen'). It was not "
                             "written by "
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


# ------------------------------------------------------------------ BatchNorm modes
def _bn_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in
            ("running_mean", "running_var", "num_batches_tracked")}


def _bns_kept(model, before):
    """Return the BatchNorm modules whose running statistics are bitwise the same."""
    after = _bn_buffers(model)
    bns = {n.rsplit(".", 1)[0] for n in before}
    return {m for m in bns if all(torch.equal(before[k], after[k]) for k in before
                                  if k.rsplit(".", 1)[0] == m)}


def _train_step(model):
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()


def _bn_names(model, *prefixes):
    return {n for n, m in model.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d) and n.startswith(prefixes)}


@pytest.mark.parametrize(("policy", "kept"), [
    ("body", ("",)),                            # every BatchNorm is in the frozen body
    ("stages:2", ("bn1", "layer1", "layer2")),  # the stem and stages 1..2
    ("bitfit", ()),                             # BatchNorm biases train
    ("norm", ()),                               # BatchNorm weights and biases train
    ("none", ()),
])
def test_default_bn_keeps_the_statistics_of_frozen_batchnorm_only(model, policy, kept):
    # Before: freeze(model, "body") left every BatchNorm to model.train(), so the frozen
    # body's running statistics drifted with every training batch.
    tk.freeze(model, policy)
    assert tk.freeze_state(model)["bn"] == "auto"
    before = _bn_buffers(model)
    _train_step(model)
    assert _bns_kept(model, before) == (_bn_names(model, *kept) if kept else set())
    for name in _bn_names(model, ""):
        frozen = not any(p.requires_grad for p in model.get_submodule(name).parameters())
        assert (name in _bns_kept(model, before)) == frozen, name


def test_bn_train_and_frozen_modes_apply_to_every_batchnorm(model):
    tk.freeze(model, "body", bn="train")  # the old behaviour: frozen BatchNorm updates too
    before = _bn_buffers(model)
    _train_step(model)
    assert _bns_kept(model, before) == set()
    tk.freeze(model, "none", bn="frozen")  # everything trains, no statistic moves
    before = _bn_buffers(model)
    _train_step(model)
    assert _bns_kept(model, before) == _bn_names(model, "")
    assert model.layer4[1].bn2.weight.grad is not None  # its affine parameters still train


def test_default_bn_state_round_trips_and_unfreeze_releases_it(model):
    tk.freeze(model, "stages:1")
    state = tk.freeze_state(model)
    assert state["bn"] == "auto"
    other = tk.adapt(torchvision.models.resnet18(), 4)
    tk.load_freeze_state(other, state)
    before = _bn_buffers(other)
    _train_step(other)
    assert _bns_kept(other, before) == _bn_names(other, "bn1", "layer1")
    tk.unfreeze(other)  # the default mode with nothing frozen: every BatchNorm updates
    assert tk.freeze_state(other)["bn"] == "auto"
    assert other.bn1.training  # released at once in a model that is training
    before = _bn_buffers(other)
    _train_step(other)
    assert _bns_kept(other, before) == set()
    with pytest.raises(tk.ConfigError, match=r"bn 'eval'; expected a policy name and bn in "
                                             r"\('auto', 'train', 'frozen'\)"):
        tk.load_freeze_state(other, {**state, "bn": "eval"})


def test_gradual_unfreezing_releases_a_stages_batchnorm_when_it_opens(model):
    schedule = tk.GradualUnfreezing(model, every=1)
    assert schedule.bn == "auto"
    schedule.on_epoch_start(0)  # the head alone: every BatchNorm keeps its statistics
    before = _bn_buffers(model)
    _train_step(model)
    assert _bns_kept(model, before) == _bn_names(model, "")
    schedule.on_epoch_start(1)  # layer4 opens: its BatchNorm layers update, no other
    before = _bn_buffers(model)
    _train_step(model)
    assert _bns_kept(model, before) == _bn_names(model, "") - _bn_names(model, "layer4")


def test_batchnorm_without_parameters_follows_the_block_it_normalises():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, affine=False),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    tk.adapt(net, 2, head="5")
    for policy, kept in (("body", True), ("none", False)):
        tk.freeze(net, policy)
        before = net[1].running_mean.clone()
        net.train()
        net(torch.randn(2, 3, 8, 8))
        assert torch.equal(before, net[1].running_mean) is kept, policy


# ------------------------------------------------------------------ unfreezing by step
def test_unfreeze_steps_spreads_the_openings_over_the_first_part_of_the_run():
    assert tk.adaptation.unfreeze_steps(5, 20, until=0.5) == (2, 4, 6, 8, 10)
    assert tk.adaptation.unfreeze_steps(8, 189, until=0.5) == (12, 24, 35, 47, 59, 71, 83, 94)
    assert tk.adaptation.unfreeze_steps(5, 2, until=0.5) == (1, 1, 1, 1, 1)  # head first
    with pytest.raises(tk.ConfigError, match="until=0"):
        tk.adaptation.unfreeze_steps(5, 20, until=0)


def test_gradual_unfreezing_by_step_is_a_pure_function_of_the_step(model):
    plan = tk.GradualUnfreezing(model, steps=(2, 4, 6, 8, 10))
    assert plan.unit == "step" and plan.at == (2, 4, 6, 8, 10)
    assert plan.update(0) == [] and _trainable(model) == {"fc.weight", "fc.bias"}
    assert plan.update(1) == []
    assert plan.update(2) == ["4:layer4"]
    assert plan.update(3) == []  # nothing due: nothing changes
    assert plan.update(7) == ["2:layer2", "3:layer3"]
    fresh = tk.GradualUnfreezing(model, steps=plan.at)
    fresh.update(9)
    assert {n.split(".")[0] for n in _trainable(model)} == {"fc", "layer4", "layer3", "layer2",
                                                            "layer1"}
    fresh.update(10)
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    with pytest.raises(tk.ConfigError, match="one non-decreasing step per stage"):
        tk.GradualUnfreezing(model, steps=(4, 2, 6, 8, 10))
    with pytest.raises(tk.ConfigError, match="not both"):
        tk.GradualUnfreezing(model, every=1, steps=(2, 4, 6, 8, 10))
