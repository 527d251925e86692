"""L2-SP: the penalty, its gradient and the loss wrapper."""

from __future__ import annotations

import pytest
import torch

import transferkit as tk
from transferkit.recipes.l2sp import L2SP, L2SPLoss


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tk.create("resnet18", 3, in_chans=1, pretrained=False)


def _move(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


def test_zero_at_start_with_zero_gradient(model):
    penalty = L2SP(model, alpha=0.1)
    value = penalty()
    assert value.item() == 0.0
    value.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_gradient_is_alpha_times_distance_to_the_anchor(model):
    alpha = 0.3
    penalty = L2SP(model, alpha=alpha)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    _move(model)
    value = penalty()
    value.backward()
    expected = 0.0
    for name, p in model.named_parameters():
        if name.startswith("fc."):
            assert p.grad is None  # the head has no anchor
            continue
        assert torch.equal(p.grad, alpha * (p.detach() - anchor[name]))  # exactly
        expected += alpha / 2 * (p.detach() - anchor[name]).pow(2).sum().item()
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert set(penalty.anchor) == {n for n, _ in model.named_parameters()} - {"fc.weight",
                                                                               "fc.bias"}


def test_anchor_is_a_detached_copy(model):
    penalty = L2SP(model, alpha=1.0)
    _move(model)
    assert not torch.equal(penalty.anchor["conv1.weight"], model.conv1.weight)
    assert not penalty.anchor["conv1.weight"].requires_grad


def test_beta_is_plain_l2_on_the_head_weight(model):
    penalty = L2SP(model, alpha=0.0, beta=0.5)
    penalty().backward()
    assert torch.allclose(model.fc.weight.grad, 0.5 * model.fc.weight.detach())
    assert model.fc.bias.grad is None and model.conv1.weight.grad is None


def test_frozen_parameters_are_skipped(model):
    penalty = L2SP(model, alpha=1.0)
    _move(model)
    tk.freeze(model, "body")
    assert penalty().item() == 0.0  # frozen body: nothing to pull
    tk.unfreeze(model)
    assert penalty().item() > 0


def test_loss_adds_penalty_in_training_only(model):
    loss_fn = L2SPLoss(model, alpha=1.0)
    _move(model)
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    base = torch.nn.functional.cross_entropy(logits, y)
    with torch.no_grad():
        assert loss_fn(logits, y).item() == pytest.approx(base.item())
    assert loss_fn(logits, y).item() == pytest.approx(base.item() + loss_fn.penalty().item())


@pytest.mark.parametrize("kw", [{"alpha": -1.0}, {"alpha": float("nan")}, {"beta": -0.1}])
def test_bad_strength_raises(model, kw):
    with pytest.raises(tk.ConfigError, match="finite number >= 0"):
        L2SP(model, **kw)
