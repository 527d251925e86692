"""Tests of transferkit.train.batch_checks: what the first-batch check reads off a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.recipes import HeadOnFeatures
from transferkit.train.batch_checks import model_in_chans


def adapted() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    return tk.adapt(net, 2, in_chans=1)


@pytest.mark.parametrize(
    "wrap",
    [lambda m: m, nn.DataParallel, lambda m: torch.compile(m, backend="eager")],
    ids=["plain", "data-parallel", "compiled"],
)
def test_a_wrapped_view_declares_its_own_input_channels(wrap):
    # A view on cached features takes 8 feature channels, not the model's 1 image channel;
    # torch.compile must not hide the view (which unwrap(model) would see through).
    model = adapted()
    view = HeadOnFeatures(model, (8,))
    assert model_in_chans(wrap(view)) == 8
    assert model_in_chans(wrap(model)) == 1
