"""adapt(), get_info(), input-channel rules and bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import transferkit as tk


class TwoBranch(nn.Module):
    """A user model whose input is read by two parallel stems, and whose head is not last."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 5, padding=2)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classify = nn.Linear(8, 5)
        self.unused = nn.Linear(5, 5)  # declared last but not on the output path

    def forward(self, x):
        x = torch.cat([self.a(x), self.b(x)], 1)
        return self.classify(self.body(x).flatten(1))


class NoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.proj = nn.Parameter(torch.ones(3, 4))

    def forward(self, x):  # one value per image, from a bare Parameter, not from a layer
        # (an (N, D) output would be pooled features: adapt() puts a head on those,
        # tests/adaptation/test_headless.py)
        return (x.mean((2, 3)) @ self.proj).sum(1)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_generic_model_heads_and_all_input_branches():
    model = TwoBranch()
    tk.adapt(model, 3, in_chans=1)
    info = tk.get_info(model)
    assert info.heads == ("classify",)
    assert info.input_layers == ("a", "b")
    assert model.a.weight.shape == (4, 1, 3, 3) and model.b.weight.shape == (4, 1, 5, 5)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert info.original_num_classes == 5


def test_one_channel_is_rgb_sum_and_grey_equivalent():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    grey = torch.rand(2, 1, 32, 32)
    body = nn.Sequential(*list(model.children())[:-1])
    want = body(grey.repeat(1, 3, 1, 1))
    w = model.conv1.weight.clone()
    tk.adapt(model, 10, in_chans=1)
    assert torch.equal(model.conv1.weight, w.sum(1, keepdim=True))
    got = nn.Sequential(*list(model.children())[:-1])(grey)
    assert torch.allclose(got, want, atol=1e-4)


def test_n_channel_rule_and_stats():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    four = tk.adapt_input_weight(w, 4)
    assert torch.equal(four[:, :3], w * 0.75) and torch.equal(four[:, 3], w[:, 0] * 0.75)
    two = tk.adapt_input_weight(w, 2)
    assert torch.equal(two, w[:, :2] * 1.5)
    assert tk.adapt_channel_stats((0.1, 0.2, 0.3), 1) == pytest.approx((0.2,))
    assert tk.adapt_channel_stats((0.1, 0.2, 0.3), 4) == (0.1, 0.2, 0.3, 0.1)


def test_inception_transform_input_is_disabled_and_recorded():
    model = torchvision.models.inception_v3(init_weights=False, transform_input=True)
    tk.adapt(model, 4, in_chans=1)
    info = tk.get_info(model)
    assert model.transform_input is False and info.mean == (0.5,) and info.std == (0.5,)
    assert set(info.aux_heads) == {"AuxLogits.fc"} and model.AuxLogits.fc.out_features == 4


def test_explicit_head_override():
    model = TwoBranch()
    tk.adapt(model, 2, head="classify")
    assert model.classify.out_features == 2
    with pytest.raises(tk.HeadNotFoundError, match="classfy.*Did you mean 'classify'"):
        tk.adapt(TwoBranch(), 2, head="classfy")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 0}, tk.ConfigError, "num_classes must be a positive integer, got 0"),
        ({"num_classes": 2.5}, tk.ConfigError, "num_classes"),
        ({"num_classes": True}, tk.ConfigError, "num_classes"),
        ({"num_classes": 3, "in_chans": 0}, tk.ConfigError,
         "in_chans must be a positive integer, got 0"),
        ({"num_classes": 3, "mean": (0.5,)}, tk.ConfigError, "mean and std together"),
    ],
)
def test_bad_arguments_leave_model_unchanged(kwargs, error, match):
    model = torchvision.models.resnet18()
    before = _state(model)
    with pytest.raises(error, match=match):
        tk.adapt(model, **kwargs)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(model, "transferkit_info")


def test_no_head_lists_candidates_and_errors_are_typed():
    model = NoHead()
    with pytest.raises(tk.HeadNotFoundError, match="Candidates: \\['conv'\\].*head="):
        tk.adapt(model, 3)
    assert isinstance(tk.HeadNotFoundError("x"), LookupError)
    assert model.conv.out_channels == 4


def test_failed_adaptation_is_rolled_back():
    class LinearStem(nn.Module):  # the input is read by a Linear: cannot be adapted
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(3, 4)
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return self.fc(self.stem(x.mean((2, 3))))

    model = LinearStem()
    before = _state(model)
    with pytest.raises(tk.InputAdaptationError, match="'stem'.*not a convolution"):
        tk.adapt(model, 2, in_chans=1)
    assert model.fc.out_features == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_get_info_does_not_change_the_model():
    model = torchvision.models.resnet18()
    model.train()
    before = _state(model)
    info = tk.get_info(model)
    assert info.heads == ("fc",) and info.num_classes == 1000 and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    names = [s.name for s in info.stages]
    assert names == ["0:stem", "1:layer1", "2:layer2", "3:layer3", "4:layer4"]


def test_adapt_twice_keeps_original_classes():
    model = tk.adapt(torchvision.models.resnet18(), 10)
    tk.adapt(model, 4)
    assert tk.get_info(model).original_num_classes == 1000 and model.fc.out_features == 4
