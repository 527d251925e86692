"""fine_tune(lr="find"): the sweep runs on what each recipe's phase trains, and sets its LRs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import transferkit as tk
import transferkit.recipes.lr_search as lr_search
from transferkit.adaptation.core import unwrap
from transferkit.errors import ConfigError
from transferkit.recipes import PROBE_LR, fine_tune
from transferkit.recipes.views import EvalMode, HeadOnFeatures


class Tiny(nn.Module):
    """Two stages and a head, small enough for a 100-step sweep in a fraction of a second."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer1(self.stem(x))).flatten(1))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return tk.adapt(Tiny(), 3, in_chans=1)


def tensors(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
            torch.arange(n) % 3)


@pytest.fixture
def sweeps(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every sweep fine_tune runs: the module, its head then, and the arguments."""
    calls: list[dict] = []
    real = lr_search.lr_find

    def spy(net, data, **kwargs):
        head = unwrap(net).fc.weight.detach().clone()
        result = real(net, data, **kwargs)
        calls.append({"net": net, "head": head, "kwargs": kwargs, "result": result})
        return result

    monkeypatch.setattr(lr_search, "lr_find", spy)
    return calls


def head_lrs(result) -> dict[str, float]:
    return {g["name"]: g["initial_lr"] for g in result.trainer.optimizer.param_groups}


def test_full_trains_at_the_found_lr_with_the_body_at_the_recipes_ratio(sweeps):
    result = fine_tune(tiny(), tensors(), tensors(24, 1), recipe="full", lr="find", epochs=1,
                       device="cpu", progress=False)
    (call,) = sweeps
    found = result.lr_find.suggestion
    assert call["result"] is result.lr_find and call["kwargs"]["lr_ratio"] == pytest.approx(0.1)
    assert call["kwargs"]["freeze"] == "none" and call["kwargs"]["device"] == "cpu"
    lrs = head_lrs(result)
    assert lrs["head"] == pytest.approx(found) and lrs["body"] == pytest.approx(found * 0.1)
    chosen = {c.name: c for c in result.settings}
    assert chosen["lr"].value == found and "'valley' rule" in chosen["lr"].why
    assert chosen["body_lr"].value == pytest.approx(found * 0.1)


def test_lp_ft_sweeps_after_its_probe(sweeps):
    model = tiny()
    before = model.fc.weight.detach().clone()
    result = fine_tune(model, tensors(), tensors(24, 1), recipe="lp_ft", lr="find", epochs=2,
                       device="cpu", progress=False)
    (call,) = sweeps
    assert not torch.equal(call["head"], before)  # the head the probe trained
    assert call["net"] is model
    assert [c.value for c in result.settings if c.name == "probe lr"] == [PROBE_LR]
    assert head_lrs(result)["head"] == pytest.approx(result.lr_find.suggestion)


@pytest.mark.parametrize(("recipe", "net", "freeze", "ratio"), [
    ("linear_probe", HeadOnFeatures, None, 1.0),  # the head on cached features
    ("gradual", Tiny, "none", 0.1),  # every stage open, as most of the run
    ("bitfit", Tiny, "bitfit", 1.0),
])
def test_each_recipe_sweeps_what_its_phase_trains(sweeps, recipe, net, freeze, ratio):
    fine_tune(tiny(), tensors(), recipe=recipe, lr="find", epochs=1, device="cpu",
              progress=False)
    (call,) = sweeps
    assert isinstance(call["net"], net)
    assert call["kwargs"].get("freeze") == freeze
    assert call["kwargs"]["lr_ratio"] == pytest.approx(ratio)


def test_uncached_linear_probe_sweeps_through_the_eval_mode_view(sweeps):
    result = fine_tune(tiny(), tensors(), recipe="linear_probe", lr="find", epochs=1,
                       device="cpu", progress=False, cache_features=False)
    assert isinstance(sweeps[0]["net"], EvalMode)
    assert result.history[0]["lr"] < result.lr_find.suggestion  # the cosine from it


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lr": "fnd"}, r"lr='fnd' is not a number nor 'find'"),
    ({"lr": "find", "body_lr": 1e-4}, r"remove body_lr=0.0001 or pass a numeric lr"),
    ({"lr": "find", "resume": True, "recipe": "full"}, r"would sweep again"),
])
def test_bad_find_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fine_tune(tiny(), tensors(), epochs=1, device="cpu", out_dir=tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []
