"""Tests of transferkit._state_dict: every name and shape is checked before a tensor is copied."""

from __future__ import annotations

import torch
from torch import nn

from transferkit._state_dict import fitted, mismatch, strip_wrapper_prefixes


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def test_mismatch_names_the_first_problem():
    model = net()
    state = dict(model.state_dict())
    assert mismatch(model, state) is None
    assert mismatch(model, {**state, "0.weight": torch.zeros(3, 5)}) == (
        "tensor '0.weight' has shape (3, 5) in the file but (3, 2) in the model")
    assert mismatch(model, {**state, "0.bias": [0.0] * 3}) == (
        "entry '0.bias' is a list, not a tensor")
    partial = {k: v for k, v in state.items() if k != "1.num_batches_tracked"}
    assert mismatch(model, {**partial, "x": torch.zeros(1)}) == (
        "tensor names differ: 1 missing (first: '1.num_batches_tracked') and 1 unexpected "
        "(first: 'x')")
    assert mismatch(model, partial, optional_suffixes=("num_batches_tracked",)) is None


def test_wrapper_prefixes_are_stripped_only_when_every_key_has_one():
    assert strip_wrapper_prefixes({"module._orig_mod.a": 1, "module._orig_mod.b": 2}) == {
        "a": 1, "b": 2}
    assert strip_wrapper_prefixes({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}


def test_fitted_strips_prefixes_only_when_the_state_does_not_fit_as_it_is():
    class Holder(nn.Module):  # a model whose own submodule is called "module"
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)

    holder = Holder()
    own = dict(holder.state_dict())
    assert fitted(holder, own) == (own, None)
    compiled = {f"_orig_mod.{k}": v for k, v in own.items()}
    assert fitted(holder, compiled) == (own, None)
    model = net()
    state, problem = fitted(model, {"_orig_mod.x": torch.zeros(1)})
    assert list(state) == ["x"] and problem.startswith("tensor names differ")
