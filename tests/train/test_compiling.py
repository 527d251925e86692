"""Tests of Trainer(compile=True) with the real inductor backend on the CPU (a tiny model).

The first compile in a fresh process takes tens of seconds; every test here reuses the
same architecture and batch shapes, so the later ones hit torch's caches.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.train import Trainer
from transferkit.train.checkpoint import load_checkpoint


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


def data(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


VAL = data(1, seed=7)


def trainer(model: nn.Module, out_dir: Path, **kwargs) -> Trainer:
    kwargs.setdefault("epochs", 2)
    return Trainer(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                   device="cpu", progress=False, out_dir=out_dir, topk=(1,), **kwargs)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_compile_runs_the_model_through_a_wrapper_and_keeps_its_names(tmp_path, caplog):
    model = net()
    t = trainer(model, tmp_path, compile=True)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        t.fit(data(), VAL)
    assert t.model is model and t._net._orig_mod is model  # the model object is untouched
    assert type(model) is nn.Sequential and not hasattr(model, "_orig_mod")
    assert list(load_checkpoint(tmp_path / "last.pt")["model"]) == list(model.state_dict())
    line = next(r.message for r in caplog.records if r.message.startswith("torch.compile"))
    assert line.startswith("torch.compile: on; the first step took ") and "of compiling" in line


def test_a_compiled_run_with_an_average_resumes_mid_epoch_exactly(tmp_path, interrupt_at):
    straight = trainer(net(), tmp_path / "a", compile=True, ema=0.9)
    straight.fit(data(), VAL)
    stopped = trainer(net(), tmp_path / "b", compile=True, ema=0.9, callbacks=[interrupt_at(5)])
    stopped.fit(data(), VAL)
    assert stopped.interrupted and stopped.step == 5 and stopped.batch_in_epoch == 2
    resumed = trainer(net(seed=5), tmp_path / "b", compile=True, ema=0.9)
    resumed.fit(data(), VAL, resume=True)
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.ema.module.state_dict(), resumed.ema.module.state_dict())
    strip = [{k: v for k, v in r.items() if k != "time"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in resumed.history]


@pytest.mark.parametrize("first_compiled", [True, False], ids=["compiled-to-plain",
                                                                "plain-to-compiled"])
def test_checkpoints_resume_across_compile(tmp_path, first_compiled):
    first = trainer(net(), tmp_path, epochs=1, compile=first_compiled)
    first.fit(data(), VAL)
    saved = load_checkpoint(tmp_path / "last.pt")
    again = trainer(net(seed=5), tmp_path, epochs=1, compile=not first_compiled)
    again.fit(data(), VAL, resume=True)  # the run is complete: it loads, trains nothing
    assert states_equal(again.model.state_dict(), saved["model"])
    more = trainer(net(seed=5), tmp_path, epochs=2, compile=not first_compiled)
    more.fit(data(), VAL, resume=True)
    assert more.step == 6 and len(more.history) == 2
    assert list(load_checkpoint(tmp_path / "last.pt")["model"]) == list(saved["model"])


def test_bad_compile_arguments_fail_before_anything_changes():
    model = net()
    wrapped = torch.compile(model)
    with pytest.raises(ConfigError, match=r"compile=True but the model is compiled already"):
        Trainer(wrapped, compile=True, device="cpu")
    with pytest.raises(ConfigError, match=r"compile must be True or False, got 'yes'"):
        Trainer(model, compile="yes", device="cpu")
