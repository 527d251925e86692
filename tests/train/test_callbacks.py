"""Tests of transferkit.callbacks: event order, ordering, error wrapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit.errors import CallbackError, ConfigError
from transferkit.train.callbacks import EVENTS, Callback, CallbackList
from transferkit.train.trainer import Trainer


class Recorder(Callback):
    def __init__(self, log: list, name: str = "r", order: int = 0) -> None:
        self.log, self.name, self.order = log, name, order

    def on_fit_start(self, trainer):
        self.log.append((self.name, "fit_start"))

    def on_epoch_start(self, trainer):
        self.log.append((self.name, "epoch_start", trainer.epoch))

    def on_batch_end(self, trainer):
        self.log.append((self.name, "batch_end", trainer.step))

    def on_epoch_end(self, trainer):
        self.log.append((self.name, "epoch_end", trainer.history[-1]["epoch"]))

    def on_fit_end(self, trainer):
        self.log.append((self.name, "fit_end"))


def tiny_fit(callbacks, epochs=2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    data = [(torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 0]))] * 2
    trainer = Trainer(
        model,
        epochs=epochs,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device="cpu",
        callbacks=callbacks,
        progress=False,
    )
    trainer.fit(data)
    return trainer


def test_events_fire_in_order():
    log: list = []
    tiny_fit([Recorder(log)])
    assert log == [
        ("r", "fit_start"),
        ("r", "epoch_start", 0),
        ("r", "batch_end", 1),
        ("r", "batch_end", 2),
        ("r", "epoch_end", 1),
        ("r", "epoch_start", 1),
        ("r", "batch_end", 3),
        ("r", "batch_end", 4),
        ("r", "epoch_end", 2),
        ("r", "fit_end"),
    ]
    assert EVENTS == (
        "on_fit_start",
        "on_epoch_start",
        "on_batch_end",
        "on_epoch_end",
        "on_fit_end",
    )


def test_callbacks_run_by_order_then_given_order():
    log: list = []
    tiny_fit(
        [
            Recorder(log, "late", order=10),
            Recorder(log, "a"),
            Recorder(log, "b"),
            Recorder(log, "early", order=-1),
        ],
        epochs=1,
    )
    assert [name for name, *_ in log[:4]] == ["early", "a", "b", "late"]


def test_callback_can_stop_training():
    class Stop(Callback):
        def on_epoch_end(self, trainer):
            trainer.should_stop = True

    assert len(tiny_fit([Stop()], epochs=5).history) == 1


def test_error_in_callback_names_callback_and_event():
    class Broken(Callback):
        def on_batch_end(self, trainer):
            raise KeyError("oops")

    with pytest.raises(CallbackError, match="Broken failed in on_batch_end") as info:
        tiny_fit([Broken()])
    assert isinstance(info.value.__cause__, KeyError)


def test_non_callbacks_are_rejected():
    with pytest.raises(ConfigError, match="Pass an instance"):
        CallbackList([Recorder])
    with pytest.raises(ConfigError, match="Callback instances"):
        CallbackList([print])
    assert len(CallbackList([Callback(), Callback()])) == 2
