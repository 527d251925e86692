"""Tests of transferkit.train.periodic_eval: evaluations every K steps, training untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import transferkit as tk
from transferkit.data.pipeline import TensorLoader
from transferkit.errors import ConfigError
from transferkit.train import PeriodicEval, Trainer

STATS = {"mean": (0.5,), "std": (0.25,)}


def _net() -> nn.Module:
    # Dropout and BatchNorm: a mode left wrong after an evaluation changes the training.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(16, 3))


def _batches(n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 1, 4, 4, generator=g), torch.arange(6) % 3) for _ in range(n)]


def _fit(callbacks, epochs: int = 2) -> tuple[nn.Module, Trainer]:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, epochs=epochs, optimizer=opt, device="cpu", callbacks=callbacks,
                      progress=False, restore_best=False)
    trainer.fit(_batches())
    return model, trainer


def test_evaluates_every_k_steps_and_records_when():
    data = _batches(2)
    cb = PeriodicEval(data, every=3)
    model, trainer = _fit([cb])
    assert [(r["step"], r["epoch"], r["batch"]) for r in cb.records] == [
        (3, 0, 3), (6, 1, 1), (9, 1, 4)]
    assert cb.fit_started_at <= cb.first_step_at <= cb.records[0]["time"]
    assert [r["seconds"] for r in cb.records] == sorted(r["seconds"] for r in cb.records)
    assert cb.records[0]["seconds"] >= 0
    totals = [r["eval_total_s"] for r in cb.records]
    assert totals[-1] == pytest.approx(sum(r["eval_s"] for r in cb.records), abs=2e-3)
    for r in cb.records:
        assert 0.0 <= r["acc"] <= 1.0 and r["loss"] > 0
    assert trainer.step == 10  # 2 epochs of 5 batches; 10 is no multiple of 3


def test_the_last_record_equals_trainer_evaluate_after_the_same_steps():
    data = _batches(2)
    cb = PeriodicEval(data, every=5)
    _, trainer = _fit([cb])
    assert cb.records[-1]["step"] == trainer.step == 10
    assert cb.records[-1]["acc"] == trainer.evaluate(data)["acc"]
    assert cb.records[-1]["loss"] == pytest.approx(trainer.evaluate(data)["loss"], abs=1e-6)


def test_start_sets_the_origin_of_seconds():
    cb = PeriodicEval(_batches(1), every=5, start=0.0)
    _fit([cb], epochs=1)
    assert cb.records[0]["seconds"] == pytest.approx(cb.records[0]["time"], abs=1e-3)


def test_evaluations_leave_training_bitwise_unchanged():
    plain, _ = _fit([])
    watched, _ = _fit([PeriodicEval(_batches(2), every=1)])
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name
    assert watched.training  # the Trainer's own mode after fit, as without the callback


def test_a_view_on_cached_inputs_is_evaluated_through_its_model():
    # fine_tune(freeze_stages=) trains a StageTail on cached inputs: the callback evaluates
    # the whole model on images, and training is the same as without it.
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 16, 16), generator=g, dtype=torch.uint8)
    data = TensorLoader(images, torch.arange(24) % 10, batch_size=8, shuffle=True, seed=3,
                        **STATS)
    val = TensorLoader(images[:8], torch.arange(8) % 10, batch_size=8, **STATS)
    common = dict(recipe="full", epochs=2, device="cpu", progress=False, seed=3,
                  freeze_stages=2, restore_best=False)
    torch.manual_seed(0)
    model = tk.create("resnet18", 10, in_chans=1, pretrained=False)
    cb = PeriodicEval(val, every=2)
    result = tk.fine_tune(model, data, **common, callbacks=[cb])
    torch.manual_seed(0)
    plain = tk.create("resnet18", 10, in_chans=1, pretrained=False)
    tk.fine_tune(plain, data, **common)
    assert [r["step"] for r in cb.records] == [2, 4, 6]
    assert cb.records[-1]["acc"] == result.trainer.evaluate(val)["acc"]
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("every", [0, -2, 1.5, True])
def test_every_must_be_a_positive_int(every):
    with pytest.raises(ConfigError, match=f"every.*{every!r}"):
        PeriodicEval(_batches(1), every=every)
