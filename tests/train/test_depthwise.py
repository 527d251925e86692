"""Grouped convolutions cropped to the kernel taps that reach the input give the same results."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transferkit.train import Trainer
from transferkit.train.depthwise import crop_depthwise, used_taps


@pytest.mark.parametrize("size,kernel,stride,padding,dilation,expected", [
    (1, 5, 1, 2, 1, (2, 2)),
    (2, 5, 1, 2, 1, (1, 3)),
    (3, 5, 1, 2, 1, (0, 4)),
    (1, 3, 1, 1, 1, (1, 1)),
    (1, 3, 2, 1, 1, (1, 1)),
    (2, 5, 2, 2, 1, (2, 3)),  # asymmetric: the module keeps the full kernel
    (1, 3, 1, 2, 2, (1, 1)),
    (1, 1, 1, 0, 1, (0, 0)),
])
def test_used_taps(size, kernel, stride, padding, dilation, expected):
    assert used_taps(size, kernel, stride, padding, dilation=dilation) == expected


def test_used_taps_with_asymmetric_padding():
    # timm's "same" padding of a 2-pixel input, 5 taps, stride 2: one before, two after.
    assert used_taps(2, 5, 2, 1, 2) == (1, 2)
    assert used_taps(3, 3, 2, 0, 1) == (0, 2)


CASES = list(itertools.product((1, 2, 3, 5), (3, 5, 7), (1, 2), (1, 2)))


@pytest.mark.parametrize("size,kernel,stride,dilation", CASES)
def test_cropped_conv_equals_conv(size, kernel, stride, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, kernel, stride=stride, padding=dilation * (kernel // 2),
                     dilation=dilation, groups=3)
    cropped = copy.deepcopy(conv)
    x = torch.randn(4, 6, size, size + 1)
    _check_same(conv, cropped, x)


@pytest.mark.parametrize("size,kernel,stride,dilation", CASES)
def test_cropped_tf_same_conv_equals_timm(size, kernel, stride, dilation):
    from timm.layers import create_conv2d

    torch.manual_seed(0)
    conv = create_conv2d(6, 6, kernel, stride=stride, dilation=dilation, groups=3,
                         padding="same", bias=True)
    if stride == 1:  # timm pads statically there: a plain nn.Conv2d
        assert type(conv) is nn.Conv2d
    else:
        assert type(conv).__name__ == "Conv2dSame"
    _check_same(conv, copy.deepcopy(conv), torch.randn(4, 6, size, size + 1))


def _check_same(conv: nn.Module, cropped: nn.Module, x: torch.Tensor) -> None:
    cls = type(cropped)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = conv(xa)
    with crop_depthwise(cropped) as n:
        assert n == 1
        yb = cropped(xb)
    assert type(cropped) is cls
    assert ya.shape == yb.shape
    torch.testing.assert_close(yb, ya, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cropped.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-5)
    if conv.bias is not None:
        torch.testing.assert_close(cropped.bias.grad, conv.bias.grad, rtol=1e-5, atol=1e-5)


def test_one_by_one_map_uses_the_centre_tap_exactly():
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8)
    x = torch.randn(3, 8, 1, 1)
    with crop_depthwise(conv):
        out = conv(x)
    # Exactly a 1x1 convolution with the centre tap; that is x * w + b up to one rounding
    # (a fused multiply-add on some CPUs, e.g. AMD EPYC, two roundings on others).
    assert torch.equal(out, F.conv2d(x, conv.weight[:, :, 2:3, 2:3], conv.bias, groups=8))
    expected = x * conv.weight[:, 0, 2, 2].view(1, 8, 1, 1) + conv.bias.view(1, 8, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


def test_unused_taps_get_zero_gradients():
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    with crop_depthwise(conv):
        conv(torch.randn(2, 4, 2, 2)).sum().backward()
    grad = conv.weight.grad
    assert grad[:, :, 0, :].abs().sum() == 0 and grad[:, :, :, 4].abs().sum() == 0
    assert grad[:, :, 1:4, 1:4].abs().sum() > 0


def test_only_plain_grouped_convs_change_and_come_back():
    class Same(nn.Conv2d):
        pass

    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                        Same(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 3, padding="same",
                                                                      groups=4))
    keys = list(net.state_dict())
    with pytest.raises(RuntimeError, match="boom"):
        with crop_depthwise(net) as n:
            assert n == 2
            assert [type(m).__name__ for m in net] == ["Conv2d", "CroppedConv2d", "Same",
                                                       "CroppedConv2d"]
            assert isinstance(net[1], nn.Conv2d)
            assert list(net.state_dict()) == keys
            raise RuntimeError("boom")
    assert [type(m) for m in net] == [nn.Conv2d, nn.Conv2d, Same, nn.Conv2d]
    with crop_depthwise(net, enabled=False) as n:
        assert n == 0 and type(net[1]) is nn.Conv2d


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8), nn.ReLU(),
                         nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def test_trainer_on_cpu_trains_exactly_as_the_plain_convolutions():
    data = [(torch.randn(6, 1, 4, 4), torch.arange(6) % 3) for _ in range(3)]
    plain = _net()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for x, y in data * 2:  # what the Trainer does, by hand, with the full kernels
        opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        opt.step()
    model = _net()
    trainer = Trainer(model, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      device="cpu", restore_best=False)
    trainer.fit(data)
    assert all(type(m) in (nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)
               for m in model)
    for a, b in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    probs = trainer.predict([x for x, _ in data])
    with torch.no_grad():
        expected = torch.cat([plain(x).softmax(-1) for x, _ in data])
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
