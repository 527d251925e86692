"""Adapt the layers that read the input image to a new number of channels.

This replaces the seed notebook's ``torch.cat((X, X, X), 1)``: instead of
copying a grey image three times on every batch, the first layer's weights are
changed once. The rules follow timm's ``adapt_input_conv``:

* 1 channel: the new weight is the sum of the RGB weights, so a grey image gives
  the same activations as the same image copied into R, G and B.
* N channels (2 included): the RGB weights are repeated cyclically (R, G, B, R, ...),
  cut to N and scaled by 3/N, so the expected activation magnitude is kept.

Layers whose input channels are a multiple of 3 (space-to-depth stems such as
TResNet's, 16 x 3 channels with colour innermost) are adapted group by group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from transferkit.errors import InputAdaptationError

__all__ = ["adapt_input_weight", "adapt_channel_stats", "plan_input_layers"]


def adapt_input_weight(weight: torch.Tensor, in_chans: int, *, orig_chans: int = 3) -> torch.Tensor:
    """Return a copy of a conv weight ``(out, C, ...)`` adapted to ``in_chans`` colour channels.

    Args:
        weight: The weight; dim 1 holds ``G * orig_chans`` channels, colour innermost.
        in_chans: The new number of colour channels.
        orig_chans: The number of colour channels the weight was made for.

    Raises:
        InputAdaptationError: If dim 1 is not a multiple of ``orig_chans``.
    """
    out, chans = weight.shape[:2]
    if chans % orig_chans:
        raise InputAdaptationError(
            f"input layer weight has {chans} input channels, not a multiple of {orig_chans}"
        )
    groups = chans // orig_chans
    w = weight.detach().reshape(out, groups, orig_chans, *weight.shape[2:])
    if in_chans == 1:
        new = w.sum(dim=2, keepdim=True)
    else:
        repeat = math.ceil(in_chans / orig_chans)
        tiled = w.repeat(1, 1, repeat, *([1] * (w.ndim - 3)))[:, :, :in_chans]
        new = tiled * (orig_chans / in_chans)
    return new.reshape(out, groups * in_chans, *weight.shape[2:]).contiguous()


def adapt_channel_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Return per-channel normalisation values (mean or std) for ``in_chans`` channels.

    One channel gets the average of the RGB values; N channels repeat them cyclically,
    matching :func:`adapt_input_weight`.
    """
    values = tuple(float(v) for v in values)
    if in_chans == len(values):
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


def plan_input_layers(
    model: nn.Module, names: Sequence[str], in_chans: int, orig_chans: int
) -> list[tuple[nn.Module, nn.Parameter]]:
    """Compute the new weights of the input layers without changing the model.

    Returns:
        ``(module, new_weight)`` pairs to install.

    Raises:
        InputAdaptationError: If a layer is not a convolution that can be adapted.
    """
    modules = dict(model.named_modules())
    plan = []
    for name in names:
        module = modules[name]
        if not isinstance(module, nn.modules.conv._ConvNd) or module.transposed:
            raise InputAdaptationError(
                f"layer {name!r} ({type(module).__name__}) reads the input image but is not a "
                "convolution; transferkit adapts convolutional stems and patch embeddings only. "
                "Adapt it by hand or keep in_chans=3."
            )
        if module.groups != 1:
            raise InputAdaptationError(
                f"layer {name!r} reads the input with groups={module.groups}; only groups=1 "
                "can be adapted"
            )
        new = adapt_input_weight(module.weight, in_chans, orig_chans=orig_chans)
        plan.append((module, nn.Parameter(new, requires_grad=module.weight.requires_grad)))
    return plan
