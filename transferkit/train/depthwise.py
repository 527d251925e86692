"""Grouped convolutions that skip the kernel taps which only ever see zero padding.

A ``k x k`` convolution on an input smaller than its kernel multiplies some taps with
padding alone: a 5x5 depthwise convolution on a 1x1 feature map (EfficientNet's last
stages at 32 px inputs) uses its centre tap only, on a 2x2 map its central 3x3. Those taps
add exact zeros to the output and get exact zero gradients, so dropping them changes no
result, only the work: on the CPU, oneDNN's depthwise backward pass is slowest exactly
there (a ``[256, 1152, 1, 1]`` 5x5 depthwise convolution took about 1 s forward and
backward on one core, the same cropped to its centre tap a few ms).

:func:`crop_depthwise` makes a model's grouped convolutions crop their kernel, per call, to
the taps that can reach the input, from the input's size and the layer's padding rule, and
gives the modules their own class back afterwards; the Trainer does it on the CPU. The
padding rules are one table, :data:`PADDING_RULES`: PyTorch's symmetric ``padding`` and
timm's TensorFlow-style "same" padding (``Conv2dSame``, EfficientNet's strided layers).
Measured in ``benchmarks/throughput.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PADDING_RULES", "crop_depthwise", "cropped_conv2d", "used_taps"]

Pads = tuple[int, int, int, int]  # top, bottom, left, right


def _symmetric(module: nn.Conv2d, height: int, width: int) -> Pads | None:
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        return None  # "same"/"valid" strings and non-zero padding keep their own forward
    ph, pw = module.padding
    return ph, ph, pw, pw


def _tf_same(module: nn.Conv2d, height: int, width: int) -> Pads:
    def pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2

    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    return (*pad(height, kh, sh, dh), *pad(width, kw, sw, dw))


#: Convolution classes (module and qualified name) whose padding is known, and the rule
#: that gives a call's zero padding (top, bottom, left, right) from the input's size.
PADDING_RULES: dict[str, Callable[[nn.Conv2d, int, int], Pads | None]] = {
    "torch.nn.modules.conv.Conv2d": _symmetric,
    "timm.layers.conv2d_same.Conv2dSame": _tf_same,  # pad_same(), then padding 0
}


def used_taps(size: int, kernel: int, stride: int, before: int, after: int | None = None,
              dilation: int = 1) -> tuple[int, int]:
    """Return the first and last kernel taps that reach the input along one axis.

    Tap ``i`` of output position ``o`` reads input position ``o * stride + i * dilation -
    before``; a tap whose every read falls in the padding contributes nothing.

    Args:
        size: The input's length along the axis.
        kernel, stride, dilation: The convolution's, along the axis.
        before, after: Zero padding before and after the input (``after``: as ``before``).

    Example:
        >>> used_taps(1, 5, 1, 2), used_taps(2, 5, 1, 2), used_taps(8, 5, 1, 2)
        ((2, 2), (1, 3), (0, 4))
    """
    after = before if after is None else after
    out = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
    used = [i for i in range(kernel)
            if any(0 <= o * stride + i * dilation - before < size for o in range(out))]
    if not used:  # an output made of padding alone: keep the kernel as it is
        return 0, kernel - 1
    return used[0], used[-1]


def _axis(size: int, kernel: int, stride: int, dilation: int, before: int,
          after: int) -> tuple[slice, slice, tuple[int, int]]:
    """The taps to keep, the input to keep and the padding left, along one axis."""
    out = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
    first, last = used_taps(size, kernel, stride, before, after, dilation)
    before -= first * dilation
    # The last output's last kept tap reads the last position the cropped call needs.
    after = (out - 1) * stride + (last - first) * dilation - before - (size - 1)
    keep = slice(max(0, -before), size + min(0, after))
    return slice(first, last + 1), keep, (max(0, before), max(0, after))


def cropped_conv2d(module: nn.Conv2d, x: torch.Tensor, pads: Pads) -> torch.Tensor | None:
    """Return ``module(x)`` computed with only the kernel taps that reach ``x``.

    ``pads`` is the zero padding the module's own forward applies. Returns ``None`` when
    every tap reaches the input (nothing to crop): call the module's own forward then.
    """
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    rows, keep_h, (top, bottom) = _axis(x.shape[-2], kh, sh, dh, pads[0], pads[1])
    cols, keep_w, (left, right) = _axis(x.shape[-1], kw, sw, dw, pads[2], pads[3])
    if (rows.stop - rows.start, cols.stop - cols.start) == (kh, kw):
        return None
    x = x[..., keep_h, keep_w]
    if top == bottom and left == right:
        padding: tuple[int, int] = (top, left)
    else:
        x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
    return F.conv2d(x, module.weight[:, :, rows, cols], module.bias, module.stride, padding,
                    module.dilation, module.groups)


_CROPPED: dict[type, type] = {}  # a convolution class -> its cropping subclass


def _cropping_class(cls: type) -> type:
    if cls not in _CROPPED:
        rule = PADDING_RULES[f"{cls.__module__}.{cls.__qualname__}"]

        def forward(self: nn.Conv2d, input: torch.Tensor) -> torch.Tensor:
            pads = rule(self, input.shape[-2], input.shape[-1]) if input.dim() == 4 else None
            out = None if pads is None else cropped_conv2d(self, input, pads)
            return cls.forward(self, input) if out is None else out

        _CROPPED[cls] = type(f"Cropped{cls.__name__}", (cls,), {"forward": forward})
    return _CROPPED[cls]


@contextlib.contextmanager
def crop_depthwise(model: nn.Module, *, enabled: bool = True) -> Iterator[int]:
    """Run ``model``'s grouped convolutions on the kernel taps that reach their input.

    Inside the block, every module whose class is in :data:`PADDING_RULES` (exactly, not
    a subclass) and has ``groups > 1`` runs as a subclass that crops its kernel per call
    (:func:`cropped_conv2d`); its parameters, state-dict names and results stay the same.
    Each module gets its own class back on exit, also after an exception. Yields how
    many modules changed.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(4, 4, 5, padding=2, groups=4))
        >>> with crop_depthwise(net) as n:
        ...     n, type(net[0]).__name__, tuple(net(torch.ones(1, 4, 1, 1)).shape)
        (1, 'CroppedConv2d', (1, 4, 1, 1))
        >>> type(net[0]).__name__
        'Conv2d'
    """
    swapped = []
    if enabled:
        for module in model.modules():
            cls = type(module)
            if f"{cls.__module__}.{cls.__qualname__}" in PADDING_RULES and module.groups > 1:
                module.__class__ = _cropping_class(cls)
                swapped.append((module, cls))
    try:
        yield len(swapped)
    finally:
        for module, cls in swapped:
            module.__class__ = cls
