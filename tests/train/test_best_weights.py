"""Tests of restore_best (transferkit.train.best_weights): fit ends with the best epoch's
weights, bitwise, with and without out_dir, after a resume, and not after an interruption."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from transferkit.errors import ConfigError, NonFiniteLossError
from transferkit.train import Trainer, check_trainer_args
from transferkit.train.callbacks import Callback
from transferkit.train.checkpoint import load_checkpoint

LOGGERS = ("transferkit.train.trainer", "transferkit.train.best_weights")


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 3))


def batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


# Validation labels unrelated to train's: over 6 epochs val_loss is best at epoch 2 and
# val_acc at epoch 4 (checked by every test below), so the best epoch is never the last.
TRAIN, VAL = batches(2, seed=0), batches(2, seed=1)


def make(**kwargs) -> Trainer:
    model = tiny_cnn()
    kwargs.setdefault("epochs", 6)
    return Trainer(model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                   device="cpu", progress=False, **kwargs)


def weights(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise


def assert_differ(a: dict, b: dict) -> None:
    assert any(not torch.equal(a[k], b[k]) for k in a)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in LOGGERS]


def restore_lines(caplog) -> list[str]:
    return [m for m in messages(caplog) if "the weights of" in m]


# ------------------------------------------------------------------ a full fit
@pytest.mark.parametrize(("monitor", "best"), [(None, 2), ("val_acc", 4)])
def test_fit_ends_with_the_best_epochs_weights(tmp_path, caplog, monitor, best):
    trainer = make(out_dir=tmp_path, monitor=monitor)
    with caplog.at_level(logging.INFO):
        history = trainer.fit(TRAIN, VAL)
    key = monitor or "val_loss"
    assert len(history) == 6 and trainer.best["epoch"] == best
    best_pt, last_pt = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best_pt["epoch"] == best and last_pt["epoch"] == 6
    assert_equal(trainer.model.state_dict(), best_pt["model"])
    assert_differ(trainer.model.state_dict(), last_pt["model"])
    assert trainer.restored_epoch == best
    value = history[best - 1][key]
    assert restore_lines(caplog) == [
        f"restored the weights of epoch {best} ({key} {value:.4g}), the best of 6"]
    # The checkpoints and the history stay those of the run.
    assert last_pt["history"] == history and trainer.epoch == 6


def test_without_out_dir_the_copy_in_memory_is_restored(tmp_path):
    with_files = make(out_dir=tmp_path)
    with_files.fit(TRAIN, VAL)
    in_memory = make()
    in_memory.fit(TRAIN, VAL)
    assert in_memory.restored_epoch == 2
    assert_equal(in_memory.model.state_dict(), load_checkpoint(tmp_path / "best.pt")["model"])


def test_restore_best_false_keeps_the_last_weights(tmp_path, caplog):
    trainer = make(out_dir=tmp_path, restore_best=False)
    with caplog.at_level(logging.INFO):
        trainer.fit(TRAIN, VAL)
    assert trainer.best["epoch"] == 2 and trainer.restored_epoch is None
    assert_equal(trainer.model.state_dict(), load_checkpoint(tmp_path / "last.pt")["model"])
    assert restore_lines(caplog) == []


def test_early_stopping_restores_the_best_epoch(tmp_path):
    trainer = make(out_dir=tmp_path, patience=2)
    history = trainer.fit(TRAIN, VAL)
    assert len(history) == 4 and trainer.restored_epoch == 2
    assert_equal(trainer.model.state_dict(), load_checkpoint(tmp_path / "best.pt")["model"])


def test_best_epoch_that_is_the_last_is_kept(caplog):
    trainer = make(epochs=2)  # val_loss improves at epoch 2
    with caplog.at_level(logging.INFO):
        history = trainer.fit(TRAIN, VAL)
    assert trainer.restored_epoch == 2
    assert restore_lines(caplog) == [
        f"kept the weights of epoch 2 (val_loss {history[1]['val_loss']:.4g}), the best of 2 "
        "and the last"]


def test_without_validation_the_last_weights_are_kept_and_said(tmp_path, caplog):
    trainer = make(epochs=3, out_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        trainer.fit(TRAIN)
    assert trainer.restored_epoch is None and trainer._best_weights.epoch is None  # no copy
    assert_equal(trainer.model.state_dict(), load_checkpoint(tmp_path / "last.pt")["model"])
    assert restore_lines(caplog) == [
        "kept the weights of the last epoch (3): monitor train_loss is not a validation "
        "metric, so there is no best epoch to restore"]


# ------------------------------------------------------------------ the warm-up
def warming(**kwargs) -> Trainer:
    """The default optimizer and schedule, half of it warm-up: epochs 1-3 of 6 (6 steps)."""
    return Trainer(tiny_cnn(), lr=1e-2, epochs=6, warmup=0.5, device="cpu", progress=False,
                   **kwargs)


def test_epochs_within_the_warm_up_are_not_candidates(tmp_path, caplog):
    # warmup=0.5 of 12 steps: epochs 1-3 end within it, and the lowest val_loss of the
    # whole run is one of theirs; the best epoch is the lowest of epochs 4-6.
    trainer = warming(out_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        history = trainer.fit(TRAIN, VAL)
    losses = [r["val_loss"] for r in history]
    assert losses.index(min(losses)) < 3  # else the test would show nothing
    best = 4 + losses[3:].index(min(losses[3:]))
    assert trainer.best["epoch"] == best and trainer.restored_epoch == best
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best
    assert_equal(trainer.model.state_dict(), load_checkpoint(tmp_path / "best.pt")["model"])
    assert "epochs that end within the LR warm-up (its first 6 steps) are not candidates " \
        "for the best epoch" in messages(caplog)


def test_patience_does_not_count_the_warm_up(tmp_path):
    # val_loss falls to epoch 3 (warming up), then rises: counted from epoch 3, patience 1
    # would stop after epoch 4; the first candidate is epoch 4, so the run stops after 5.
    trainer = warming(patience=1)
    history = trainer.fit(TRAIN, VAL)
    losses = [r["val_loss"] for r in history]
    assert losses[2] < losses[3] < losses[4]
    assert len(history) == 5 and trainer.best["epoch"] == 4


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer):
        trainer.should_stop = trainer.epoch >= self.epoch


def test_a_run_that_ends_within_the_warm_up_keeps_its_last_weights(caplog):
    trainer = warming(callbacks=[StopAfter(2)])
    with caplog.at_level(logging.INFO):
        history = trainer.fit(TRAIN, VAL)
    assert len(history) == 2 and trainer.best["epoch"] is None
    assert trainer.restored_epoch is None
    assert restore_lines(caplog) == [
        "kept the weights of the last epoch (2): every epoch ended within the LR warm-up, so "
        "there is no best epoch to restore"]


# ------------------------------------------------------------------ no restore on a stop
class InterruptAt(Callback):
    """Act as if Ctrl-C arrived during optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer):
        if trainer.step == self.step - 1:
            trainer._sigint = True


def test_an_interrupted_fit_keeps_the_last_weights(tmp_path, caplog):
    trainer = make(out_dir=tmp_path, callbacks=[InterruptAt(9)])  # epoch 5, batch 1
    with caplog.at_level(logging.INFO):
        trainer.fit(TRAIN, VAL)
    assert trainer.interrupted and trainer.best["epoch"] == 2 and trainer.restored_epoch is None
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["batch_in_epoch"] == 1 and last["step"] == 9
    assert_equal(trainer.model.state_dict(), last["model"])
    assert restore_lines(caplog) == []


def test_a_nan_stop_keeps_the_last_weights():
    calls = {"n": 0}

    def nan_at_step_9(logits, targets):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(logits, targets)
        # 4 epochs of 2 train and 2 val batches, then step 9, the first of epoch 5.
        return loss * float("nan") if calls["n"] == 4 * 4 + 1 else loss

    snapshot = {}

    class Snapshot(Callback):
        def on_batch_end(self, trainer):
            snapshot.update(weights(trainer.model.state_dict()))

    trainer = make(loss_fn=nan_at_step_9, callbacks=[Snapshot()])
    with pytest.raises(NonFiniteLossError, match=r"epoch 5, step 9 "):
        trainer.fit(TRAIN, VAL)
    assert trainer.best["epoch"] == 2 and trainer.restored_epoch is None
    assert_equal(trainer.model.state_dict(), snapshot)  # after step 8, not epoch 2's


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize(("first", "source"), [(3, "best.pt"), (1, "memory")])
def test_a_resumed_run_restores_the_best_epoch_of_the_whole_run(tmp_path, caplog, first,
                                                                 source):
    straight = make(out_dir=tmp_path / "straight")
    straight.fit(TRAIN, VAL)
    make(out_dir=tmp_path / "split", epochs=first).fit(TRAIN, VAL)
    resumed = make(out_dir=tmp_path / "split")
    with caplog.at_level(logging.INFO):
        resumed.fit(TRAIN, VAL, resume=True)
    assert resumed.restored_epoch == 2 and len(resumed.history) == 6
    assert_equal(resumed.model.state_dict(), straight.model.state_dict())
    assert_equal(resumed.model.state_dict(),
                 load_checkpoint(tmp_path / "split" / "best.pt")["model"])
    value = f"{straight.history[1]['val_loss']:.4g}"
    where = f", from {tmp_path / 'split' / 'best.pt'}" if source == "best.pt" else ""
    assert restore_lines(caplog)[-1] == (
        f"restored the weights of epoch 2 (val_loss {value}), the best of 6{where}")
    # The resume itself stayed exact: last.pt holds the same state as the straight run's.
    assert_equal(load_checkpoint(tmp_path / "split" / "last.pt")["model"],
                 load_checkpoint(tmp_path / "straight" / "last.pt")["model"])


def test_a_resume_without_best_pt_keeps_the_last_weights_and_warns(tmp_path, caplog):
    make(out_dir=tmp_path, epochs=3).fit(TRAIN, VAL)
    (tmp_path / "best.pt").unlink()
    resumed = make(out_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        resumed.fit(TRAIN, VAL, resume=True)
    assert resumed.restored_epoch is None and resumed.best["epoch"] == 2
    assert_equal(resumed.model.state_dict(), load_checkpoint(tmp_path / "last.pt")["model"])
    warning = [r for r in caplog.records if r.levelno == logging.WARNING and r.name in LOGGERS]
    assert len(warning) == 1
    assert re.fullmatch(
        r"kept the weights of the last epoch \(6\), not those of the best epoch 2 "
        r"\(val_loss [0-9.]+\): Checkpoint '.*best\.pt' does not exist\..*",
        warning[0].getMessage())


def test_a_best_pt_of_another_epoch_is_not_loaded(tmp_path, caplog):
    make(out_dir=tmp_path, epochs=3).fit(TRAIN, VAL)
    (tmp_path / "best.pt").write_bytes((tmp_path / "last.pt").read_bytes())  # epoch 3
    resumed = make(out_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        resumed.fit(TRAIN, VAL, resume=True)
    assert resumed.restored_epoch is None
    assert "holds epoch 3, not the best epoch 2" in restore_lines(caplog)[-1]


# ------------------------------------------------------------------ the argument
@pytest.mark.parametrize("bad", [1, "yes", None])
def test_restore_best_must_be_a_bool(bad):
    message = f"restore_best must be True or False, got {bad!r}."
    with pytest.raises(ConfigError, match=re.escape(message)):
        make(restore_best=bad)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_trainer_args(restore_best=bad)

