"""Depthwise convolutions that skip the kernel taps which only ever see zero padding.

A ``k x k`` convolution on an input smaller than its kernel multiplies some taps with
padding alone: a 5x5 depthwise convolution on a 1x1 feature map (EfficientNet's last
stages at 32 px inputs) uses its centre tap only, on a 2x2 map its central 3x3. Those taps
add exact zeros to the output and get exact zero gradients, so dropping them changes no
result, only the work: on the CPU, oneDNN's depthwise backward pass is slowest exactly
there (a ``[256, 1152, 1, 1]`` 5x5 depthwise convolution took 1.1 s forward and backward,
the same cropped to 1x1 a few ms). :func:`crop_depthwise` makes a model's grouped
convolutions crop their kernel to the taps that can reach the input, per call, from the
input's size, and puts the modules back afterwards; the Trainer does it on the CPU.
Measured in ``benchmarks/throughput.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CroppedConv2d", "crop_depthwise", "used_taps"]


def used_taps(size: int, kernel: int, stride: int, padding: int,
              dilation: int = 1) -> tuple[int, int]:
    """Return the first and last kernel taps that reach the input along one axis.

    Tap ``i`` of output position ``o`` reads input position ``o * stride + i * dilation -
    padding``; a tap whose every read falls in the padding contributes nothing.

    Example:
        >>> used_taps(1, 5, 1, 2), used_taps(2, 5, 1, 2), used_taps(8, 5, 1, 2)
        ((2, 2), (1, 3), (0, 4))
    """
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    used = [i for i in range(kernel)
            if any(0 <= o * stride + i * dilation - padding < size for o in range(out))]
    if not used:  # an output made of padding alone: keep the kernel as it is
        return 0, kernel - 1
    return used[0], used[-1]


class CroppedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that crops its kernel to the taps reaching the input, per call.

    The same parameters, state-dict names and results as ``nn.Conv2d`` (the dropped taps
    multiply zero padding only); a crop that would not keep the output's size and
    position (an asymmetric one) runs the full kernel.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(self.padding, str) or self.padding_mode != "zeros" or input.dim() != 4:
            return super().forward(input)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        top, bottom = used_taps(input.shape[-2], kh, sh, ph, dh)
        left, right = used_taps(input.shape[-1], kw, sw, pw, dw)
        symmetric = top == kh - 1 - bottom and left == kw - 1 - right
        if (top, left) == (0, 0) or not symmetric or ph < top * dh or pw < left * dw:
            return super().forward(input)
        weight = self.weight[:, :, top:bottom + 1, left:right + 1]
        return F.conv2d(input, weight, self.bias, self.stride,
                        (ph - top * dh, pw - left * dw), self.dilation, self.groups)


@contextlib.contextmanager
def crop_depthwise(model: nn.Module, *, enabled: bool = True) -> Iterator[int]:
    """Run ``model``'s grouped ``nn.Conv2d`` layers as :class:`CroppedConv2d` inside the block.

    Only modules whose type is exactly ``nn.Conv2d`` with ``groups > 1`` change (their
    class, not their parameters); each gets its own class back on exit, also after an
    exception. Yields how many modules changed.

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
            if type(module) is nn.Conv2d and module.groups > 1:
                module.__class__ = CroppedConv2d
                swapped.append(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            module.__class__ = nn.Conv2d
