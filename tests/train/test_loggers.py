"""Experiment loggers: CSVLogger, TensorBoardLogger and the MetricLogger base."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.train import Callback, CSVLogger, MetricLogger, TensorBoardLogger, Trainer
from transferkit.train.distributed import DistInfo
from transferkit.train.optim import head_body_lrs


def data(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 2, 2, generator=g), torch.tensor([0, 1, 0, 1])) for _ in range(n)]


def trainer(*callbacks: Callback, epochs: int = 2, out_dir: Path | None = None) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    return Trainer(model, epochs=epochs, topk=(1,), device="cpu", progress=False,
                   out_dir=out_dir, callbacks=list(callbacks))


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class Steps(Callback):
    """What the step rows must hold, read from the trainer (runs before the loggers)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_batch_end(self, trainer) -> None:
        self.seen.append({"step": trainer.step, "loss": trainer.last_loss,
                          **head_body_lrs(trainer.optimizer)})


def test_csv_logger_writes_every_history_key_and_every_step(tmp_path):
    steps = Steps()
    logger = CSVLogger(tmp_path / "logs" / "epochs.csv", step_path=tmp_path / "steps.csv")
    t = trainer(steps, logger)
    history = t.fit(data(), data(1, seed=1))
    epochs = rows(tmp_path / "logs" / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    assert list(epochs[0]) == list(history[0])  # every key, in the history's order
    for row, record in zip(epochs, history, strict=True):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(
            {k: float(v) for k, v in record.items()})
    step_rows = rows(tmp_path / "steps.csv")
    assert list(step_rows[0]) == ["step", "epoch", "loss", "lr", "body_lr"]
    assert [int(r["epoch"]) for r in step_rows] == [1, 1, 1, 2, 2, 2]
    for row, seen in zip(step_rows, steps.seen, strict=True):
        assert int(row["step"]) == seen["step"]
        assert float(row["loss"]) == pytest.approx(seen["loss"])
        assert float(row["lr"]) == pytest.approx(seen["lr"])
        assert row["body_lr"] == ""  # one group: no body LR


def test_numbers_continue_over_fits_of_new_trainers(tmp_path):
    logger = CSVLogger(tmp_path / "e.csv", step_path=tmp_path / "s.csv")
    trainer(logger).fit(data())  # e.g. the probe of lp_ft
    trainer(logger, epochs=3).fit(data(2))  # then the fine-tuning phase
    assert [r["epoch"] for r in rows(tmp_path / "e.csv")] == ["1", "2", "3", "4", "5"]
    assert [r["step"] for r in rows(tmp_path / "s.csv")] == [str(i) for i in range(1, 13)]
    assert logger.last_epoch == 5 and logger.last_step == 12


def test_the_same_trainer_fit_again_keeps_its_numbers(tmp_path):
    logger = CSVLogger(tmp_path / "e.csv")
    t = trainer(logger)
    t.fit(data())
    t.fit(data(), epochs=3)  # continues at its epoch 3
    assert [r["epoch"] for r in rows(tmp_path / "e.csv")] == ["1", "2", "3"]


class Interrupt(Callback):
    def on_batch_end(self, trainer) -> None:
        if trainer.step == 4:
            trainer._sigint = True  # as Ctrl-C: it stops after step 5, mid-epoch 2


def test_a_resumed_run_keeps_the_rows_before_its_checkpoint(tmp_path):
    epochs_csv, steps_csv = tmp_path / "e.csv", tmp_path / "s.csv"
    trainer(CSVLogger(epochs_csv, step_path=steps_csv), Interrupt(), epochs=3,
            out_dir=tmp_path / "run").fit(data())
    assert [r["step"] for r in rows(steps_csv)] == ["1", "2", "3", "4", "5"]
    assert [r["epoch"] for r in rows(epochs_csv)] == ["1"]
    logger = CSVLogger(epochs_csv, step_path=steps_csv)  # a new process resumes
    trainer(logger, epochs=3, out_dir=tmp_path / "run").fit(data(), resume=True)
    assert [r["epoch"] for r in rows(epochs_csv)] == ["1", "2", "3"]
    # The checkpoint holds step 5; the resumed run goes on at 6: no step twice, none missing.
    assert [r["step"] for r in rows(steps_csv)] == [str(i) for i in range(1, 10)]
    # A new run (not resumed) replaces the files.
    trainer(CSVLogger(epochs_csv, step_path=steps_csv), epochs=1).fit(data())
    assert [r["epoch"] for r in rows(epochs_csv)] == ["1"]
    assert [r["step"] for r in rows(steps_csv)] == ["1", "2", "3"]


def test_only_rank_0_logs(tmp_path):
    logger = CSVLogger(tmp_path / "e.csv", step_path=tmp_path / "s.csv")
    class Rank1:  # what the events read of a Trainer, on rank 1 of 2
        dist, epoch, step, last_loss = DistInfo(1, 2), 0, 3, 0.5
        optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
        history = [{"epoch": 1, "lr": 0.1, "train_loss": 0.5}]

    rank1 = Rank1()
    for event in ("on_fit_start", "on_batch_end", "on_epoch_end", "on_fit_end"):
        getattr(logger, event)(rank1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "match"), [
    ((3,), r"path must be a file path, got 3"),
    ((".",), r"path='.' is a folder; pass a file path inside it"),
    (("a.csv",), None),
])
def test_csv_logger_checks_its_paths(tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    if match is None:
        with pytest.raises(ConfigError, match="path and step_path are the same file"):
            CSVLogger(*args, step_path=tmp_path / "a.csv")
    else:
        with pytest.raises(ConfigError, match=match):
            CSVLogger(*args)


def test_metric_logger_subclass_gets_numbers_only():
    calls = []

    class Sink(MetricLogger):
        def log_epoch(self, values, *, epoch):
            calls.append(("epoch", epoch, sorted(values)))

        def log_step(self, values, *, step, epoch):
            calls.append(("step", step, sorted(values)))

        def close(self):
            calls.append(("close",))

    trainer(Sink(every_step=True), epochs=1).fit(data(2))
    assert calls == [("step", 1, ["loss", "lr"]), ("step", 2, ["loss", "lr"]),
                     ("epoch", 1, ["lr", "time", "train_acc", "train_loss"]), ("close",)]
    with pytest.raises(ConfigError, match="every_step must be True or False, got 'yes'"):
        MetricLogger(every_step="yes")  # type: ignore[arg-type]


def test_tensorboard_missing_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"needs the tensorboard package.*pip install "
                                          r"tensorboard \(or pip install 'transferkit\["
                                          r"tensorboard\]'\)"):
        TensorBoardLogger("runs")


def test_tensorboard_logger_writes_epoch_and_step_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    history = trainer(logger).fit(data(), data(1, seed=1))
    trainer(logger, epochs=1).fit(data())  # a second phase: a second event file
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"epoch/{k}" for k in history[0] if k != "epoch"} <= tags
    assert {"step/loss", "step/lr"} <= tags
    val_loss = events.Scalars("epoch/val_loss")
    assert [e.step for e in val_loss] == [1, 2]
    assert [e.value for e in val_loss] == pytest.approx([r["val_loss"] for r in history])
    assert [e.step for e in events.Scalars("epoch/train_loss")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("step/loss")] == list(range(1, 10))
    with pytest.raises(ConfigError, match="log_dir must be a folder path, got None"):
        TensorBoardLogger(None)  # type: ignore[arg-type]
