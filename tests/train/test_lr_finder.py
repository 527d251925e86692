"""lr_find: the sweep, the suggestion rules, early stopping, and the model restored exactly."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.adaptation import freeze, freeze_state
from transferkit.errors import ConfigError, DataError
from transferkit.recipes.views import EvalMode
from transferkit.train.lr_finder import lr_find, suggest_lr


class Net(nn.Module):
    """Conv, BatchNorm, dropout and a linear head: everything a sweep could disturb."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)
        return self.fc(self.drop(x))


def model() -> nn.Module:
    torch.manual_seed(0)
    return tk.adapt(Net(), 3, in_chans=1)


def batches(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def state(m: nn.Module) -> dict:
    """Everything lr_find promises to restore, as comparable values."""
    tensors = {k: v.clone() for k, v in m.state_dict(keep_vars=False).items()}
    return {
        "tensors": tensors,
        "strides": {n: p.stride() for n, p in m.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in m.named_parameters()},
        "modes": {n: mod.training for n, mod in m.named_modules()},
        "freeze": freeze_state(m),
        "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()),
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["tensors"].keys() == b["tensors"].keys()
    for key in a["tensors"]:  # bitwise: weights and buffers (BatchNorm statistics, counts)
        assert torch.equal(a["tensors"][key], b["tensors"][key]), key
    assert a["strides"] == b["strides"]  # memory format (channels_last) too
    for key, grad in a["grads"].items():
        assert (grad is None) == (b["grads"][key] is None), key
        assert grad is None or torch.equal(grad, b["grads"][key]), key
    for key in ("requires_grad", "modes", "freeze"):
        assert a[key] == b[key], key
    assert torch.equal(a["rng"][0], b["rng"][0]) and a["rng"][1] == b["rng"][1]
    assert np.array_equal(a["rng"][2], b["rng"][2])


def test_sweep_restores_the_model_exactly():
    m = model()
    freeze(m, "stages:0", bn="frozen")  # frozen parts, BatchNorm held in eval behaviour
    m.train()
    m.drop.eval()  # a mode set by hand
    m.fc.weight.grad = torch.full_like(m.fc.weight, 0.5)  # a gradient left by the user
    before = state(m)
    result = lr_find(m, batches(), num_steps=30, device="cpu", channels_last=True,
                     freeze="none")  # the sweep unfreezes everything and trains channels-last
    assert len(result.lrs) > 10
    assert_same(before, state(m))
    # The BatchNorm hook of the frozen mode is back: a training-mode forward leaves the
    # running statistics alone.
    stats = m.bn.running_mean.clone()
    m(torch.randn(4, 1, 6, 6))
    assert torch.equal(stats, m.bn.running_mean)


def test_sweep_is_restored_after_an_error_too():
    m = model()
    data = [(torch.randn(8, 1, 6, 6), torch.full((8,), 7))]  # label 7 of 3 classes
    before = state(m)
    with pytest.raises(DataError, match="7"):
        lr_find(m, data, num_steps=20, device="cpu")
    assert_same(before, state(m))


def test_sweep_lrs_grow_exponentially_with_the_body_at_its_ratio():
    m = model()
    result = lr_find(m, batches(2), start_lr=1e-6, end_lr=1e-1, num_steps=21, lr_ratio=0.25,
                     device="cpu")
    assert not result.diverged and len(result.lrs) == len(result.losses) == 21
    assert result.lrs == pytest.approx([1e-6 * 10 ** (i / 4) for i in range(21)])
    assert result.lr_ratio == {"body": 0.25, "body/no_decay": 0.25, "head": 1.0,
                               "head/no_decay": 1.0}  # the Trainer's default groups
    # The smoothed loss is fastai's: a bias-corrected moving average of the losses.
    average = 0.0
    for i, loss in enumerate(result.losses):
        average = 0.98 * average + 0.02 * loss
        assert result.smoothed[i] == pytest.approx(average / (1 - 0.98 ** (i + 1)))
    assert result.suggestion in result.lrs[2:16]  # a tenth left out at the start, 5 at the end


def test_gradient_accumulation_sweeps_the_same_lrs_in_optimizer_steps():
    result = lr_find(model(), batches(2), start_lr=1e-6, end_lr=1e-1, num_steps=21,
                     grad_accum=2, device="cpu")
    assert result.lrs == pytest.approx([1e-6 * 10 ** (i / 4) for i in range(21)])


def test_sweep_stops_early_when_the_loss_diverges(caplog):
    m = model()
    with caplog.at_level(logging.INFO, logger="transferkit"):
        result = lr_find(m, batches(), start_lr=1e-4, end_lr=1e4, num_steps=100, device="cpu")
    assert result.diverged and len(result.lrs) < 100
    assert result.smoothed[-1] > 4 * min(result.smoothed[:-1]) or not math.isfinite(
        result.smoothed[-1])
    assert all(s <= 4 * min(result.smoothed[: i + 1]) for i, s in enumerate(result.smoothed[:-1]))
    lines = [r.getMessage() for r in caplog.records if r.name == "transferkit.train.lr_finder"]
    assert lines == [result.describe()] and "'valley' rule" in lines[0]
    assert "the loss diverged" in lines[0]
    # The Trainer's own epoch line does not show up as a training epoch.
    assert not any(r.name == "transferkit.train.trainer" for r in caplog.records)


def test_sweep_works_on_a_frozen_body_and_through_a_view():
    m = model()
    freeze(m, "body")
    before = state(m)
    result = lr_find(EvalMode(m), batches(), num_steps=20, device="cpu", rule="steepest")
    assert result.rule == "steepest" and result.lr_ratio["head"] == 1.0
    assert len(set(result.losses)) > 1  # the head trained: the loss moved
    assert_same(before, state(m))


def test_suggestion_rules():
    lrs = [10.0 ** (i / 2 - 5) for i in range(9)]
    losses = [2.0, 1.9, 1.6, 1.0, 0.5, 0.4, 0.45, 1.0, 3.0]
    assert suggest_lr(lrs, losses, rule="steepest") == lrs[2]  # 1.6 -> 1.0
    assert suggest_lr(lrs, losses, rule="valley") == lrs[2]  # the middle of points 0..5
    # The valley is the longest decreasing stretch (points 1..5), not the lowest point (0).
    bumpy = [1.0, 5.0, 4.0, 3.0, 2.0, 1.5, 9.0]
    assert suggest_lr(list(range(1, 8)), bumpy, rule="valley") == 4  # point 3, the middle
    # Left-out points do not count: from point 4 on, the steepest fall is 0.5 -> 0.4.
    assert suggest_lr(lrs, losses, rule="steepest", skip_start=4) == lrs[4]
    with pytest.raises(ConfigError, match="rule='valey' is not valid.*Did you mean 'valley'"):
        suggest_lr(lrs, losses, rule="valey")
    with pytest.raises(ConfigError, match="1 finite point.*needs at least 3"):
        suggest_lr(lrs, losses, skip_start=4, skip_end=4)
    with pytest.raises(ConfigError, match="differ in length: 9 and 2"):
        suggest_lr(lrs, losses[:2])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"start_lr": 1.0, "end_lr": 0.1}, r"end_lr=0.1 must be larger than start_lr=1.0"),
    ({"num_steps": 5}, r"num_steps must be an integer >= 10, got 5"),
    ({"smoothing": 1.0}, r"smoothing=1.0 must lie in \[0, 1\)"),
    ({"diverge": 1}, r"diverge=1 must be a number > 1"),
    ({"rule": "steep"}, r"Did you mean 'steepest'"),
    ({"lr": 1e-3}, r"lr_find takes no argument 'lr'"),
    ({"epochs": 3}, r"lr_find takes no argument 'epochs'"),
    ({"device": "nope"}, r"device='nope' is not a device"),
])
def test_bad_arguments_fail_before_anything_changes(kwargs, match):
    m = model()
    before = state(m)
    with pytest.raises(ConfigError, match=match):
        lr_find(m, batches(), **kwargs)
    assert_same(before, state(m))
