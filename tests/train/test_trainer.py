"""Tests of transferkit.train.trainer: training, evaluation, early stopping, bad input, faults."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import transferkit as tk
from transferkit.adaptation import freeze, freeze_state, get_info
from transferkit.data import Augment, TensorLoader
from transferkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    TransferKitError,
)
from transferkit.train import Trainer, select_device, warmup_cosine
from transferkit.train.callbacks import Callback
from transferkit.train.checkpoint import load_checkpoint
from transferkit.train.schedules import warming_up, warmup_cosine_scheduler

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "train_tiny.py"


def tiny_cnn(in_chans: int = 1, num_classes: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_chans, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


def batches(n: int = 2, size: int = 8, chans: int = 1, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, chans, 6, 6, generator=g),
            torch.randint(0, classes, (size,), generator=g),
        )
        for _ in range(n)
    ]


def make(model: nn.Module, **kwargs) -> Trainer:
    opt = kwargs.pop("optimizer", None) or torch.optim.AdamW(model.parameters(), lr=1e-2)
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("progress", False)
    return Trainer(model, optimizer=opt, **kwargs)


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------ training
def test_overfits_two_batches():
    torch.manual_seed(0)
    model = tiny_cnn()
    data = batches(2)
    history = make(model, epochs=60, topk=(1, 2)).fit(data)
    assert len(history) == 60
    assert history[-1]["train_loss"] < 0.2 * history[0]["train_loss"]
    assert history[-1]["train_acc"] == 1.0
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_acc", "train_top2", "time"}


def test_evaluate_and_predict_use_eval_mode_and_no_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(36, 3))
    data = batches(3)
    trainer = make(model)
    model.train()
    first, second = trainer.evaluate(data), trainer.evaluate(data)
    assert first == second  # dropout off: deterministic
    assert first["count"] == 24 and set(first) == {"loss", "acc", "top5", "count"}
    assert model.training  # mode restored
    x = torch.cat([b[0] for b in data])
    expected = model.eval()(x).softmax(-1)
    model.train()
    probs = trainer.predict(data)
    assert probs.shape == (24, 3) and not probs.requires_grad
    torch.testing.assert_close(probs, expected.detach())
    logits = trainer.predict([b[0] for b in data], probs=False)
    torch.testing.assert_close(logits.softmax(-1), probs)


def test_history_files_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn()
    trainer = make(model, epochs=3, out_dir=tmp_path)
    history = trainer.fit(batches(2), batches(1, seed=1))
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "history.csv", "history.json", "last.pt"]
    assert json.loads((tmp_path / "history.json").read_text()) == history
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["val_loss"]) == pytest.approx(history[-1]["val_loss"])
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["step"] == 6 and last["history"] == history
    for k, v in model.state_dict().items():
        assert torch.equal(last["model"][k], v)


def test_early_stopping_keeps_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn()
    # lr 0: validation loss never improves after epoch 1, so patience 2 stops at epoch 3.
    trainer = make(
        model,
        epochs=10,
        patience=2,
        out_dir=tmp_path,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
    )
    history = trainer.fit(batches(2), batches(1, seed=1))
    assert len(history) == 3
    assert trainer.best["epoch"] == 1
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3


def test_monitor_accuracy_is_maximised():
    trainer = make(tiny_cnn(), monitor="val_acc", patience=1)
    trainer.monitor = "val_acc"
    trainer._update_best({"epoch": 1, "val_acc": 0.5})
    trainer._update_best({"epoch": 2, "val_acc": 0.7})
    assert trainer.best["epoch"] == 2 and not trainer.should_stop
    trainer._update_best({"epoch": 3, "val_acc": 0.6})
    assert trainer.should_stop


def test_grad_accum_matches_one_big_batch():
    data = batches(1, size=8)
    x, y = data[0]
    small = [(x[:4], y[:4]), (x[4:], y[4:])]
    torch.manual_seed(0)
    a = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    b = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    b.load_state_dict(a.state_dict())
    ta = make(a, epochs=2, optimizer=torch.optim.SGD(a.parameters(), lr=0.5))
    tb = make(b, epochs=2, grad_accum=2, optimizer=torch.optim.SGD(b.parameters(), lr=0.5))
    ta.fit(data)
    tb.fit(small)
    assert ta.step == tb.step == 2
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_grad_accum_flushes_a_partial_window():
    trainer = make(tiny_cnn(), epochs=1, grad_accum=2)
    trainer.fit(batches(3))
    assert trainer.step == 2  # windows [0, 1] and [2]


def test_grad_clip_bounds_the_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    before = params(model)
    trainer = make(
        model, epochs=1, grad_clip=1e-3, optimizer=torch.optim.SGD(model.parameters(), lr=1.0)
    )
    trainer.fit(batches(1))
    change = torch.cat([(p - q).flatten() for p, q in zip(params(model), before, strict=True)])
    assert 0 < change.norm() <= 1e-3 + 1e-6


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(precision):
    torch.manual_seed(0)
    model = tiny_cnn()
    if precision == "fp16":  # CPU: no GradScaler, the user is told
        with pytest.warns(UserWarning, match="GradScaler.*HINT: use precision='bf16'"):
            trainer = make(model, epochs=2, precision=precision, channels_last=True)
    else:
        trainer = make(model, epochs=2, precision=precision, channels_last=True)
    history = trainer.fit(batches(2))
    assert trainer.scaler is None  # GradScaler only for fp16 on CUDA
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_set_epoch_called_every_epoch():
    class Loader:
        def __init__(self):
            self.epochs: list[int] = []
            self.data = batches(2)

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(self.data)

        def __len__(self):
            return len(self.data)

    loader = Loader()
    make(tiny_cnn(), epochs=3).fit(loader)
    assert loader.epochs == [0, 1, 2]


def test_dataloader_shuffle_is_a_function_of_seed_and_epoch():
    ds = TensorDataset(torch.randn(20, 1, 6, 6), torch.randint(0, 3, (20,)))
    seen = []

    class Record(Callback):
        def on_epoch_end(self, trainer):
            seen.append(trainer.last_loss)

    def run(seed, disturb):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
        seen.clear()
        t = make(model, epochs=2, seed=seed, callbacks=[Record()])
        # Disturb the global RNG: the order must not depend on it.
        torch.rand(disturb)
        t.fit(DataLoader(ds, batch_size=4, shuffle=True))
        return list(seen)

    assert run(0, disturb=1) == run(0, disturb=7)
    assert run(0, disturb=1) != run(1, disturb=1)


def test_default_schedule_is_warmup_then_cosine():
    assert warmup_cosine(0, warmup_steps=4, total_steps=20) == pytest.approx(0.25)
    assert warmup_cosine(3, warmup_steps=4, total_steps=20) == pytest.approx(1.0)
    assert warmup_cosine(12, warmup_steps=4, total_steps=20) == pytest.approx(0.5)
    assert warmup_cosine(20, warmup_steps=4, total_steps=20, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(99, warmup_steps=4, total_steps=20) == pytest.approx(0.0)


def test_warming_up_is_known_only_for_the_default_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = warmup_cosine_scheduler(opt, total_steps=20, warmup=0.2)  # 4 steps
    assert [warming_up(sched, n) for n in (0, 3, 4, 5, 20)] == [4, 4, 4, None, None]
    one_step = warmup_cosine_scheduler(opt, total_steps=1, warmup=0.5)
    assert warming_up(one_step, 1) is None  # the run's last step never warms up
    assert warming_up(torch.optim.lr_scheduler.StepLR(opt, 5), 0) is None
    assert warming_up(None, 0) is None


def test_default_optimizer_keeps_discriminative_lrs():
    torch.manual_seed(0)
    model = tiny_cnn()
    trainer = Trainer(
        model, epochs=2, lr=1e-2, body_lr=1e-3, warmup=0.25, device="cpu", progress=False
    )
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    trainer.fit(batches(2))
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    initial = [g["initial_lr"] for g in trainer.optimizer.param_groups]
    assert max(initial) == pytest.approx(1e-2)
    ratios = {round(lr / i, 9) for lr, i in zip(lrs, initial, strict=True)}
    assert len(ratios) == 1  # one multiplier for every group: ratios survive the schedule


def test_device_auto_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="transferkit.train.trainer"):
        trainer = Trainer(tiny_cnn(), optimizer=torch.optim.SGD(tiny_cnn().parameters(), lr=0.1))
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert trainer.device.type == expected == select_device("auto").type
    assert sum("device:" in r.message for r in caplog.records) == 1


def test_one_log_line_per_epoch_without_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="transferkit.train.trainer"):
        make(tiny_cnn(), epochs=2).fit(batches(2), batches(1))
    lines = [r.message for r in caplog.records if r.message.startswith("epoch ")]
    assert len(lines) == 2 and "val_acc" in lines[1] and lines[1].startswith("epoch 2/2")


def test_sigint_handler_restored_after_fit():
    before = signal.getsignal(signal.SIGINT)
    make(tiny_cnn(), epochs=1).fit(batches(1))
    assert signal.getsignal(signal.SIGINT) is before


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "empty"),
        ([(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 7]))], "labels include 7"),
        ([(torch.randn(4, 1, 6, 6), torch.tensor([0, -1, 2, 1]))], "labels include -1"),
        ([(torch.randn(4, 6, 6), torch.zeros(4, dtype=torch.long))], r"shape \(4, 6, 6\)"),
        ([(torch.randn(4, 3, 6, 6), torch.zeros(4, dtype=torch.long))], "cannot run"),
        ([(torch.zeros(4, 1, 6, 6, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))], "uint8"),
        ([(torch.randn(4, 1, 6, 6), torch.zeros(3, dtype=torch.long))], "targets of shape"),
        ([(torch.randn(0, 1, 6, 6), torch.zeros(0, dtype=torch.long))], "batch size 0"),
        ([torch.randn(4, 1, 6, 6)], r"\(inputs, targets\)"),
    ],
)
def test_bad_data_fails_before_training(tmp_path, data, match):
    torch.manual_seed(0)
    model = tiny_cnn()
    before = params(model)
    with pytest.raises(DataError, match=match):
        make(model, epochs=1, out_dir=tmp_path).fit(data)
    assert all(torch.equal(p, q) for p, q in zip(params(model), before, strict=True))
    assert os.listdir(tmp_path) == []


def test_bad_validation_data_fails_before_training():
    model = tiny_cnn()
    before = params(model)
    with pytest.raises(DataError, match="val labels include 5"):
        make(model).fit(batches(1), [(torch.randn(2, 1, 6, 6), torch.tensor([0, 5]))])
    assert all(torch.equal(p, q) for p, q in zip(params(model), before, strict=True))


def test_channel_mismatch_names_adapt_when_input_layer_is_known():
    model = tiny_cnn(in_chans=1)
    try:
        get_info(model)
    except TransferKitError:
        pytest.skip("get_info does not know this tiny model")
    with pytest.raises(DataError, match="in_chans=3"):
        make(model).fit(batches(1, chans=3))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_non_positive_epochs_is_config_error(bad):
    with pytest.raises(ConfigError, match="epochs"):
        make(tiny_cnn(), epochs=bad)
    trainer = make(tiny_cnn())
    with pytest.raises(ConfigError, match="epochs"):
        trainer.fit(batches(1), epochs=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grad_accum": 0}, "grad_accum"),
        ({"precision": "fp8"}, "precision"),
        ({"lr": 0.0}, "lr"),
        ({"topk": (0,)}, "topk"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ],
)
def test_bad_config_is_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make(tiny_cnn(), **kwargs)


def test_monitor_keys_follow_topk():
    trainer = make(tiny_cnn(), epochs=1, topk=(2,), monitor="train_top2")
    history = trainer.fit(batches(1))
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_top2", "time"}
    with pytest.raises(ConfigError, match="train_acc"):
        make(tiny_cnn(), topk=(2,), monitor="train_acc").fit(batches(1))


def test_unknown_monitor_suggests_the_closest_key():
    trainer = make(tiny_cnn(), monitor="val_los")
    with pytest.raises(ConfigError, match="Did you mean 'val_loss'"):
        trainer.fit(batches(1), batches(1))


# ------------------------------------------------------------------ faults
class NaNAt:
    """Cross-entropy that returns NaN on call number ``at`` (1-based)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, logits, targets):
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, targets)
        return loss * float("nan") if self.calls == self.at else loss


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn()
    snapshot = {}

    class Snapshot(Callback):
        def on_epoch_start(self, trainer):
            if trainer.epoch == 1:
                snapshot["bytes"] = (tmp_path / "last.pt").read_bytes()

        def on_batch_end(self, trainer):
            snapshot["params"] = params(trainer.model)

    trainer = make(model, epochs=3, out_dir=tmp_path, loss_fn=NaNAt(5), callbacks=[Snapshot()])
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 5 \(batch 2 of the epoch\)"):
        trainer.fit(batches(3))
    assert (tmp_path / "last.pt").read_bytes() == snapshot["bytes"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    # The NaN step was never applied: the weights are those after step 4.
    assert all(torch.equal(p, q) for p, q in zip(params(model), snapshot["params"], strict=True))


def test_resume_from_corrupt_checkpoint_names_the_path(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt"):
        make(tiny_cnn(), out_dir=tmp_path).fit(batches(1), resume=True)


def run_script(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
        **kwargs,
    )


def outcome(folder: Path) -> tuple[dict, list]:
    weights = torch.load(folder / "final.pt", weights_only=True)
    history = json.loads((folder / "history.json").read_text())
    for record in history:
        record.pop("time")
    return weights, history


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[dict, list]:
    folder = tmp_path_factory.mktemp("straight")
    run_script(str(folder), "--epochs", "4")
    return outcome(folder)


def assert_same(a: tuple[dict, list], b: tuple[dict, list]) -> None:
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k  # bitwise
    assert a[1] == b[1]


def test_exact_resume_in_a_new_process(tmp_path, straight):
    first = run_script(str(tmp_path), "--epochs", "4", "--stop-after", "2")
    assert first.stdout.splitlines()[-1] == "DONE 2 14"
    second = run_script(str(tmp_path), "--epochs", "4", "--resume")
    assert second.stdout.splitlines()[-1] == "DONE 4 28"
    assert_same(outcome(tmp_path), straight)


def test_sigint_checkpoints_mid_epoch_and_resumes_exactly(tmp_path, straight):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path), "--epochs", "4", "--delay", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "STEP 10":  # epoch 2, batch 3 of 7
            os.kill(proc.pid, signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    last_line = out.splitlines()[-1]
    assert last_line.startswith("INTERRUPTED 1 "), out
    assert "interrupted at epoch 2" in err and "resume" in err
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and 0 < ckpt["batch_in_epoch"] < 7
    assert ckpt["step"] == 7 + ckpt["batch_in_epoch"]
    resumed = run_script(str(tmp_path), "--epochs", "4", "--resume")
    assert resumed.stdout.splitlines()[-1] == "DONE 4 28"
    assert_same(outcome(tmp_path), straight)


# ------------------------------------------------------------------ transferkit's loader
def tensor_loader(**kwargs):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (30, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    return TensorLoader(
        images,
        labels,
        batch_size=4,
        shuffle=True,
        seed=1,
        mean=(0.5,),
        std=(0.25,),
        augment=Augment(crop_padding=1, hflip=0.5),
        **kwargs,
    )


class InterruptAt(Callback):
    """Act as if Ctrl-C arrived during optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer):
        if trainer.step == self.step - 1:
            trainer._sigint = True


def dropout_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16, 3),
    )


def run_tensor_loader(tmp_path: Path, callbacks=(), resume=None) -> Trainer:
    model = dropout_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer = make(model, epochs=3, optimizer=opt, out_dir=tmp_path, callbacks=callbacks, topk=(1,))
    trainer.fit(tensor_loader(), resume=resume)
    return trainer


def test_tensor_loader_resumes_mid_epoch_exactly(tmp_path):
    straight = run_tensor_loader(tmp_path / "a")
    assert straight.step == 24 and len(straight.history) == 3  # 8 batches x 3 epochs
    # Interrupted during step 13 (epoch 2, batch 5), then resumed by a fresh Trainer.
    stopped = run_tensor_loader(tmp_path / "b", callbacks=[InterruptAt(13)])
    assert stopped.interrupted and stopped.step == 13 and stopped.batch_in_epoch == 5
    resumed = run_tensor_loader(tmp_path / "b", resume=True)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in resumed.history]


def run_ema(tmp_path: Path, callbacks=(), resume=None) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer = make(model, epochs=3, optimizer=opt, out_dir=tmp_path, callbacks=callbacks,
                   topk=(1,), ema=0.9, monitor="val_acc")
    g = torch.Generator().manual_seed(5)
    val = [(torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g))] * 2
    trainer.fit(tensor_loader(), val, resume=resume)
    return trainer


def test_ema_resumes_mid_epoch_exactly(tmp_path):
    straight = run_ema(tmp_path / "a")
    assert straight.ema.updates == 24 and straight.restored_epoch is not None
    stopped = run_ema(tmp_path / "b", callbacks=[InterruptAt(13)])
    assert stopped.interrupted and stopped.batch_in_epoch == 5 and stopped.ema.updates == 13
    resumed = run_ema(tmp_path / "b", resume=True)
    assert resumed.restored_epoch == straight.restored_epoch
    for a, b in ((straight.model, resumed.model), (straight.ema.module, resumed.ema.module)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k  # bitwise, the average's BatchNorm included
    strip = [{k: v for k, v in r.items() if k != "time"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in resumed.history]
    assert "ema_decay" in strip[0]


def test_resume_with_another_seed_warns(tmp_path):
    make(tiny_cnn(), epochs=1, out_dir=tmp_path, seed=1).fit(batches(1))
    with pytest.warns(UserWarning, match="seed=1.*HINT"):
        make(tiny_cnn(), epochs=2, out_dir=tmp_path, seed=2).fit(batches(1), resume=True)


def test_default_schedule_stepped_per_epoch_spans_the_epochs():
    # Its length is counted in the scheduler's steps: 4 epochs, not 4 x 4 batches (with
    # 16 the cosine had barely started when training ended).
    trainer = Trainer(tiny_cnn(), epochs=4, lr=0.1, scheduler_interval="epoch", device="cpu",
                      progress=False)
    trainer.fit(batches(4))
    fn = trainer.scheduler.lr_lambdas[0]
    assert fn.total_steps == 4
    expected = [0.1 * warmup_cosine(e, warmup_steps=fn.warmup_steps, total_steps=4)
                for e in range(4)]
    assert [r["lr"] for r in trainer.history] == pytest.approx(expected)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0


class LRLog(Callback):
    def __init__(self) -> None:
        self.lrs: list[tuple[int, float]] = []

    def on_batch_end(self, trainer: Trainer) -> None:
        self.lrs.append((trainer.step, trainer.optimizer.param_groups[0]["lr"]))


def test_resume_with_more_epochs_stretches_the_schedule(tmp_path, caplog):
    # A finished 1-epoch run resumed to 2 epochs: the checkpoint's cosine had reached
    # zero, so without stretching, epoch 2 would train at LR 0 without a word.
    torch.manual_seed(0)
    Trainer(tiny_cnn(), epochs=1, lr=0.1, out_dir=tmp_path, device="cpu", progress=False).fit(
        batches(4)
    )
    torch.manual_seed(0)
    lrs = LRLog()
    trainer = Trainer(tiny_cnn(), epochs=2, lr=0.1, out_dir=tmp_path, device="cpu",
                      progress=False, callbacks=[lrs])
    with caplog.at_level(logging.WARNING, logger="transferkit.train.trainer"):
        trainer.fit(batches(4), resume=True)
        before = params(trainer.model)
    fn = trainer.scheduler.lr_lambdas[0]
    assert fn.total_steps == 8  # 2 epochs x 4 batches, was 4
    assert [step for step, _ in lrs.lrs] == [5, 6, 7, 8]
    expected = [0.1 * warmup_cosine(s, warmup_steps=fn.warmup_steps, total_steps=8)
                for s in (5, 6, 7, 8)]
    assert [lr for _, lr in lrs.lrs] == pytest.approx(expected)
    assert lrs.lrs[0][1] > lrs.lrs[1][1] > lrs.lrs[2][1] > 0 == lrs.lrs[3][1]
    assert "schedule ends at step 4, this run (epochs=2) at step 8" in caplog.text
    # Resuming the finished 2-epoch run again changes nothing and says nothing.
    caplog.clear()
    torch.manual_seed(0)
    again = Trainer(tiny_cnn(), epochs=2, lr=0.1, out_dir=tmp_path, device="cpu",
                    progress=False)
    with caplog.at_level(logging.WARNING, logger="transferkit.train.trainer"):
        again.fit(batches(4), resume=True)
    assert "schedule ends" not in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(params(again.model), before, strict=True))


# ------------------------------------------------------------------ freezing integration
def resnet(num_classes: int = 3) -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(num_classes=num_classes)


def rgb_batches(n: int = 2):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g))
        for _ in range(n)
    ]


def test_freeze_policy_trains_only_the_head_and_is_checkpointed(tmp_path):
    model = resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    make(model, epochs=1, optimizer=opt, freeze="body", out_dir=tmp_path).fit(rgb_batches())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert torch.equal(model.conv1.weight, before["conv1.weight"])
    assert not torch.equal(model.fc.weight, before["fc.weight"])
    state = torch.load(tmp_path / "last.pt", weights_only=True)["freeze"]
    assert state == freeze_state(model)
    fresh = resnet()
    make(
        fresh, epochs=1, optimizer=torch.optim.SGD(fresh.parameters(), lr=0.1), out_dir=tmp_path
    ).fit(rgb_batches(), resume=True)  # already done: nothing to train
    assert [p.requires_grad for p in fresh.parameters()] == [
        p.requires_grad for p in model.parameters()
    ]


def test_freeze_policy_keeps_the_models_batchnorm_mode(tmp_path):
    model = resnet()
    freeze(model, "none", bn="frozen")
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    make(model, epochs=1, optimizer=opt, freeze="body").fit(rgb_batches())
    assert freeze_state(model)["bn"] == "frozen"  # was reset to "train" before
    assert all(torch.equal(stats[n], b) for n, b in model.named_buffers() if "running" in n)


def test_gradual_unfreezing_resumes_exactly(tmp_path):

    class Trainable(Callback):
        def __init__(self):
            self.counts: list[int] = []

        def on_epoch_start(self, trainer):
            self.counts.append(sum(p.requires_grad for p in trainer.model.parameters()))

    class StopAt(Callback):
        def on_epoch_end(self, trainer):
            trainer.should_stop = trainer.epoch == 2

    def run(folder, callbacks, resume=None):
        model = resnet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        trainer = make(
            model,
            epochs=4,
            optimizer=opt,
            freeze="body",
            unfreeze_every=1,
            out_dir=folder,
            callbacks=callbacks,
        )
        trainer.fit(rgb_batches(), resume=resume)
        return model

    counts = Trainable()
    straight = run(tmp_path / "a", [counts])
    assert counts.counts == sorted(counts.counts) and counts.counts[-1] > counts.counts[0]
    run(tmp_path / "b", [StopAt()])
    resumed_counts = Trainable()
    resumed = run(tmp_path / "b", [resumed_counts], resume=True)
    assert resumed_counts.counts == counts.counts[2:]
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert p.requires_grad == q.requires_grad, name
        assert torch.equal(p, q), name


def test_gradual_unfreezing_warns_when_the_optimizer_lacks_parameters():
    model = resnet()
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="lacks .* parameters.*include_frozen=True"):
        make(model, epochs=1, optimizer=opt, freeze="body", unfreeze_every=1).fit(rgb_batches(1))


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()
            if n.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def test_freeze_body_keeps_the_frozen_bodys_batchnorm_statistics(tmp_path):
    # Before: freeze="body" left BatchNorm to model.train(), so every training batch moved
    # the running statistics of the frozen body (and a resumed run restored "train").
    model = resnet()
    stats = bn_buffers(model)
    make(model, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
         freeze="body", out_dir=tmp_path).fit(rgb_batches())
    assert freeze_state(model)["bn"] == "auto"
    assert all(torch.equal(stats[n], b) for n, b in bn_buffers(model).items())
    assert torch.load(tmp_path / "last.pt", weights_only=True)["freeze"]["bn"] == "auto"
    make(model, epochs=3, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
         out_dir=tmp_path).fit(rgb_batches(), resume=True)  # the mode comes back with it
    assert all(torch.equal(stats[n], b) for n, b in bn_buffers(model).items())


class OpenLog(Callback):
    """Record, after every optimizer step, the step and the trainable parameter count."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.open: list[tuple[int, int]] = []
        self.stop_at = stop_at

    def on_batch_end(self, trainer: Trainer) -> None:
        self.open.append((trainer.step, sum(p.requires_grad for p in trainer.model.parameters())))
        if trainer.step == self.stop_at:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: the Trainer stops after one more step


def test_gradual_unfreezing_by_step_resumes_exactly_mid_epoch(tmp_path):
    def run(folder, log, resume=None):
        torch.manual_seed(0)
        model = resnet()
        Trainer(model, epochs=3, lr=1e-2, freeze="body", unfreeze_until=0.5, out_dir=folder,
                callbacks=[log], device="cpu", progress=False).fit(rgb_batches(4), resume=resume)
        return model

    straight_log = OpenLog()
    straight = run(tmp_path / "a", straight_log)
    # 12 steps; stages open after round(j * 0.5 * 12 / 5) steps: layer4 1 ... stem 6
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["unfreeze"] == {
        "unit": "step", "at": [1, 2, 4, 5, 6]}
    counts = [count for _, count in straight_log.open]
    assert counts == sorted(counts) and counts[5:] == [62] * 7  # all 62 open from step 6 on
    first = OpenLog(stop_at=4)
    run(tmp_path / "b", first)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["batch_in_epoch"] == 1  # step 5 of 12
    second = OpenLog()
    resumed = run(tmp_path / "b", second, resume=True)
    assert first.open + second.open == straight_log.open
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert p.requires_grad == q.requires_grad and torch.equal(p, q), name
    resumed_stats = bn_buffers(resumed)
    for name, b in bn_buffers(straight).items():
        assert torch.equal(b, resumed_stats[name]), name


def test_resume_with_more_epochs_keeps_the_checkpoints_unfreezing_plan(tmp_path, caplog):
    def run(epochs, resume=None):
        torch.manual_seed(0)
        model = resnet()
        Trainer(model, epochs=epochs, lr=1e-2, freeze="body", unfreeze_until=0.5,
                out_dir=tmp_path, device="cpu", progress=False).fit(rgb_batches(4), resume=resume)

    run(1)  # 4 steps: open after 0.4, 0.8, ... 2 steps, rounded and at least 1
    assert load_checkpoint(tmp_path / "last.pt")["unfreeze"]["at"] == [1, 1, 1, 2, 2]
    with caplog.at_level(logging.INFO, logger="transferkit.train.unfreezing"):
        run(2, resume=True)  # this run's own plan would be 1, 2, 2, 3, 4: stages would close
    assert load_checkpoint(tmp_path / "last.pt")["unfreeze"]["at"] == [1, 1, 1, 2, 2]
    assert "resume: stages open at the checkpoint's steps 1, 1, 1, 2, 2" in caplog.text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"unfreeze_until": 0}, r"unfreeze_until=0 would open every stage before the head"),
    ({"unfreeze_until": 1.5}, "unfreeze_until"),
    ({"unfreeze_until": 0.5, "unfreeze_every": 1}, "cannot be combined with unfreeze_every=1"),
])
def test_unfreeze_until_is_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(resnet(), device="cpu", **kwargs)


def test_unfreeze_until_needs_data_with_a_length():
    model = resnet()
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ConfigError, match="no len\\(\\).*unfreeze_every=k"):
        Trainer(model, epochs=1, freeze="body", unfreeze_until=0.5, device="cpu",
                progress=False).fit(iter(rgb_batches()))
    assert [p.requires_grad for p in model.parameters()] == before  # nothing changed


def test_fit_discovers_the_model_once_at_most(monkeypatch):
    # Before: the default optimizer and the train and val channel checks each ran a dummy
    # forward pass through get_info's discovery, three for a plain Trainer(model).fit().
    import transferkit.adaptation.core as core

    calls = []
    real = core.trace
    monkeypatch.setattr(core, "trace", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))]
    Trainer(tiny_cnn(in_chans=3), epochs=1, device="cpu", progress=False).fit(data, data)
    assert len(calls) == 1  # the default optimizer finds the head once
    calls.clear()
    make(tiny_cnn(in_chans=3), epochs=1).fit(data, data)
    assert calls == []  # the user's optimizer: nothing to discover
    adapted = tk.adapt(tiny_cnn(in_chans=3), 3)
    calls.clear()
    Trainer(adapted, epochs=1, device="cpu", progress=False).fit(data, data)
    assert calls == []  # recorded at adapt(): nothing to discover
