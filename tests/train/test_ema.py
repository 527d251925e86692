"""Tests of transferkit.train.ema: the average, its warm-up, BatchNorm, checkpoints, fit."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from transferkit.errors import CheckpointError, ConfigError
from transferkit.train import ModelEma, Trainer, ema_decay
from transferkit.train.checkpoint import load_checkpoint, save_checkpoint
from transferkit.train.ema import check_ema


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    )


def data(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def trainer(model: nn.Module, out_dir: Path | None = None, **kwargs) -> Trainer:
    kwargs.setdefault("optimizer", torch.optim.AdamW(model.parameters(), lr=3e-2))
    kwargs.setdefault("epochs", 3)
    return Trainer(model, device="cpu", progress=False, out_dir=out_dir, topk=(1,), **kwargs)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ the average
def test_the_decay_warms_up_to_its_target():
    assert ema_decay(0, decay=0.999) == 0.0  # the first update copies
    assert ema_decay(1, decay=0.999) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema_decay(999, decay=0.999) == pytest.approx(0.99)  # 1 - 1000^(-2/3)
    assert ema_decay(10**6, decay=0.999) == 0.999  # capped at the target
    steps = [ema_decay(n, decay=0.99) for n in range(1200)]
    assert steps == sorted(steps) and steps[-1] == 0.99


def test_weights_follow_the_warmed_up_formula_and_batchnorm_statistics_are_copied():
    model = net()
    ema = ModelEma(model, decay=0.9)
    expected = None
    for step in range(5):
        model.train()
        model(torch.randn(8, 1, 6, 6))  # moves the BatchNorm statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        ema.update(model)
        now = {k: v.clone() for k, v in model.state_dict().items()}
        if expected is None:
            expected = now  # the first update copies
        else:
            d = ema_decay(step, decay=0.9)
            buffers = {n for n, _ in model.named_buffers()}
            expected = {k: now[k] if k in buffers else torch.lerp(expected[k], now[k], 1 - d)
                        for k in now}
    got = ema.module.state_dict()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k  # the same lerp, bitwise
    assert ema.updates == 5 and ema.current_decay() == ema_decay(4, decay=0.9)
    # the running statistics are the model's, bitwise; the weights are not
    for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(got[name], model.state_dict()[name]), name
    assert not torch.equal(got["1.weight"], model.state_dict()["1.weight"])
    assert got["1.num_batches_tracked"] == 5


def test_frozen_parameters_stay_bitwise_equal_to_the_models():
    model = net()
    model[:2].requires_grad_(False)  # a frozen body; its BatchNorm statistics still move
    before = copy.deepcopy(model.state_dict())
    t = trainer(model, ema=0.9, optimizer=torch.optim.AdamW(model[5].parameters(), lr=3e-2))
    t.fit(data())
    body = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert body == ["0.weight", "0.bias", "1.weight", "1.bias"]
    ema = t.ema.module.state_dict()
    for k in body:
        assert torch.equal(ema[k], before[k]), k
    assert not torch.equal(ema["5.weight"], before["5.weight"])


@pytest.mark.parametrize(("value", "message"), [
    (1.0, "ema=1.0 would never move from the first weights"),
    (0, r"ema must be a finite number > 0 and <= 1, got 0; e.g. ema=0.999"),
    (1.5, r"got 1.5"), ("0.9", r"got '0.9'"), (True, r"got True"),
])
def test_a_bad_decay_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match=message):
        check_ema(value)
    model = net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=message):
        trainer(model, ema=value)
    assert same_state(model.state_dict(), before)


# ------------------------------------------------------------------ fit
def test_validation_selection_and_the_final_weights_are_the_averages(tmp_path, caplog):
    model = net()
    t = trainer(model, tmp_path, ema=0.9, monitor="val_acc")
    with caplog.at_level(logging.INFO, logger="transferkit"):
        history = t.fit(data(), data(1, seed=7))
    assert "ema: validation, monitor, best.pt and the weights fit ends with" in caplog.text
    assert [r["ema_decay"] for r in history] == [ema_decay(n, decay=0.9) for n in (2, 5, 8)]
    best = t.restored_epoch
    assert best == max(history, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"]
    assert f"restored the EMA weights of epoch {best}" in caplog.text
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["epoch"] == best and saved["ema"]["updates"] == 3 * best
    assert same_state(model.state_dict(), saved["ema"]["model"])  # the best epoch's average
    assert not same_state(saved["ema"]["model"], saved["model"])
    assert t.evaluate(data(1, seed=7))["loss"] == history[best - 1]["val_loss"]
    last = load_checkpoint(tmp_path / "last.pt")["ema"]
    assert same_state(last["model"], t.ema.module.state_dict()) and last["updates"] == 9


@pytest.mark.parametrize("how", ["restore_best=False", "no validation"])
def test_without_a_best_epoch_the_model_ends_with_the_last_average(how, caplog):
    model = net()
    t = trainer(model, ema=0.9, restore_best=how != "restore_best=False")
    with caplog.at_level(logging.INFO, logger="transferkit"):
        t.fit(data(), data(1, seed=7) if how == "restore_best=False" else None)
    assert t.restored_epoch is None
    assert same_state(model.state_dict(), t.ema.module.state_dict())
    line = ("the model holds the EMA weights of the last step (9 updates" if
            how == "restore_best=False" else "kept the EMA weights of the last epoch (3)")
    assert line in caplog.text


def test_an_interrupted_fit_keeps_the_live_weights(tmp_path, interrupt_at):
    model = net()
    t = trainer(model, tmp_path, ema=0.9, callbacks=[interrupt_at(5)])
    t.fit(data(), data(1, seed=7))
    assert t.interrupted and t.restored_epoch is None
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert same_state(model.state_dict(), ckpt["model"])
    assert same_state(t.ema.module.state_dict(), ckpt["ema"]["model"])
    assert not same_state(ckpt["model"], ckpt["ema"]["model"])


# ------------------------------------------------------------------ checkpoints
def snapshot(t: Trainer) -> dict:
    return {"model": copy.deepcopy(t.model.state_dict()),
            "ema": copy.deepcopy(t.ema.module.state_dict()) if t.ema else None,
            "updates": t.ema.updates if t.ema else None,
            "optimizer": copy.deepcopy(t.optimizer.state_dict()),
            "counters": (t.epoch, t.step, list(t.history))}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize(("edit", "message"), [
    (lambda e: e["model"].update({"5.weight": torch.zeros(7, 16)}),
     r"its EMA weights do not fit this model: tensor '5.weight' has shape \(7, 16\) in the "
     r"file but \(3, 16\) in the model\. Nothing was loaded"),
    (lambda e: e["model"].pop("1.running_var"),
     r"its EMA weights do not fit this model: tensor names differ: 1 missing"),
    (lambda e: e.update(updates="9"), r"its 'ema' entry is malformed"),
], ids=["shape", "missing", "malformed"])
def test_an_ema_entry_that_does_not_fit_loads_nothing(tmp_path, edit, message):
    trainer(net(), tmp_path / "a", ema=0.9, epochs=1).fit(data())
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    edit(state["ema"])
    bad = save_checkpoint(state, tmp_path / "bad.pt")
    other = trainer(net(seed=3), tmp_path / "b", ema=0.9, epochs=1)
    other.fit(data())
    before = snapshot(other)
    with pytest.raises(CheckpointError, match=message):
        other.fit(data(), epochs=2, resume=bad)
    assert same(snapshot(other), before)


def test_an_old_checkpoint_without_ema_still_resumes(tmp_path):
    trainer(net(), tmp_path, epochs=1).fit(data())
    state = load_checkpoint(tmp_path / "last.pt")
    del state["ema"]  # as written before the entry existed
    old = save_checkpoint(state, tmp_path / "old.pt")
    plain = trainer(net(seed=3), tmp_path / "plain", epochs=2)
    plain.fit(data(), resume=old)
    assert plain.step == 6
    averaged = trainer(net(seed=3), tmp_path / "ema", epochs=2, ema=0.9)
    with pytest.warns(UserWarning, match=r"holds no EMA weights .* the average restarts from "
                                         r"the resumed weights, its warm-up included"):
        averaged.fit(data(), resume=old)
    assert averaged.ema.updates == 3  # restarted at the resumed step
    # the average never changes the training itself
    assert same_state(load_checkpoint(tmp_path / "plain" / "last.pt")["model"],
                      load_checkpoint(tmp_path / "ema" / "last.pt")["model"])


def test_an_average_the_trainer_does_not_keep_or_keeps_otherwise_warns(tmp_path):
    trainer(net(), tmp_path, epochs=1, ema=0.9).fit(data())
    with pytest.warns(UserWarning, match=r"holds EMA weights \(ema=0\.9, 3 updates\) that this "
                                         r"Trainer \(ema=None\) does not use\. HINT: pass "
                                         r"Trainer\(\.\.\., ema=0\.9\)"):
        trainer(net(), epochs=2).fit(data(), resume=tmp_path / "last.pt")
    other = trainer(net(), epochs=2, ema=0.99)
    with pytest.warns(UserWarning, match=r"averaged with ema=0\.9 but this Trainer has "
                                         r"ema=0\.99"):
        other.fit(data(), resume=tmp_path / "last.pt")
    assert other.ema.updates == 6
