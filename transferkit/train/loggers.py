"""Experiment logging: callbacks that send the history to CSV files, TensorBoard or your own sink.

A :class:`MetricLogger` is a :class:`~transferkit.train.callbacks.Callback` that calls
:meth:`~MetricLogger.log_epoch` once per epoch with every numeric key of the epoch's history
record (``lr``, ``train_loss``, ``val_acc``, ``time``...) and, with ``every_step=True``,
:meth:`~MetricLogger.log_step` after every optimizer step with the batch ``loss`` and the
LRs (``lr``, ``body_lr``). A subclass overrides those two (and :meth:`~MetricLogger.flush`,
:meth:`~MetricLogger.close`) to write anywhere: :class:`CSVLogger` and
:class:`TensorBoardLogger` are two such subclasses, and ``docs/training-tools.md`` shows
MLflow and Weights & Biases in a few lines.

Epochs and steps are numbered continuously over every ``fit`` a logger sees: the phases of
``fine_tune(recipe="lp_ft")`` follow each other (as in its history), and a logger given to
a resumed run continues at the resumed epoch. Only rank 0 logs under DDP.
"""

from __future__ import annotations

import csv
import io
import logging
import numbers
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit._io import atomic_write_text
from transferkit.errors import ConfigError
from transferkit.train.callbacks import Callback
from transferkit.train.history import history_csv
from transferkit.train.optim import head_body_lrs

if TYPE_CHECKING:
    from transferkit.train.trainer import Trainer

__all__ = ["TENSORBOARD_MISSING", "CSVLogger", "MetricLogger", "TensorBoardLogger"]

log = logging.getLogger(__name__)

TENSORBOARD_MISSING = ("TensorBoardLogger needs the tensorboard package, which is not "
                       "installed: pip install tensorboard (or pip install "
                       "'transferkit[tensorboard]').")
"""The message of the error raised when tensorboard is missing."""

_STEP_FIELDS = ("step", "epoch", "loss", "lr", "body_lr")


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}


class MetricLogger(Callback):
    """Base class of the loggers: it decides what is logged, when, and under which number.

    Subclasses override :meth:`log_epoch`, :meth:`log_step` (with ``every_step=True``),
    and optionally :meth:`flush` (after every epoch) and :meth:`close` (when ``fit`` ends).
    They are called on rank 0 only.

    Args:
        every_step: Also log the loss and the LRs after every optimizer step.

    Example:
        >>> class PrintLogger(MetricLogger):
        ...     def log_epoch(self, values, *, epoch):
        ...         print(epoch, sorted(values))
        >>> import torch
        >>> from torch import nn
        >>> from transferkit.train import Trainer
        >>> data = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))]
        >>> _ = Trainer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), epochs=1, topk=(1,),
        ...             device="cpu", callbacks=[PrintLogger()]).fit(data)
        1 ['lr', 'time', 'train_acc', 'train_loss']
    """

    order = 100  # after the callbacks that may add keys to the epoch's record

    def __init__(self, *, every_step: bool = False) -> None:
        if not isinstance(every_step, bool):
            raise ConfigError(f"every_step must be True or False, got {every_step!r}.")
        self.every_step = every_step
        self.last_epoch = 0  # the number of the last epoch logged
        self.last_step = 0  # the number of the last step logged
        self._epoch_base = self._step_base = 0
        self._trainer: weakref.ref[Trainer] | None = None

    # ------------------------------------------------------------------ to override
    def log_epoch(self, values: dict[str, float], *, epoch: int) -> None:
        """Log the numeric values of epoch ``epoch`` (1-based, continuous over fits)."""

    def log_step(self, values: dict[str, float], *, step: int, epoch: int) -> None:
        """Log ``loss``, ``lr`` (and ``body_lr``) of optimizer step ``step`` (1-based)."""

    def flush(self) -> None:
        """Write out what is buffered (called after every epoch)."""

    def close(self) -> None:
        """Release files or connections (called when ``fit`` ends; logging may resume)."""

    # ------------------------------------------------------------------ the events
    def on_fit_start(self, trainer: Trainer) -> None:
        """Number this fit's epochs and steps after those already logged."""
        previous = self._trainer() if self._trainer is not None else None
        if previous is None and self._trainer is None:  # the first fit: the trainer's numbers
            self._epoch_base = self._step_base = 0
        elif previous is not trainer:  # a new phase: continue where the last one ended
            self._epoch_base = self.last_epoch - trainer.epoch
            self._step_base = self.last_step - trainer.step
        self._trainer = weakref.ref(trainer)
        if trainer.dist.is_main:
            self.start(trainer, epochs_done=self._epoch_base + trainer.epoch,
                       steps_done=self._step_base + trainer.step)

    def start(self, trainer: Trainer, *, epochs_done: int, steps_done: int) -> None:
        """Prepare to log after ``epochs_done`` epochs and ``steps_done`` steps (rank 0)."""

    def on_batch_end(self, trainer: Trainer) -> None:
        """Log the step's loss and LRs (``every_step``)."""
        if not (self.every_step and trainer.dist.is_main):
            return
        self.last_step = self._step_base + trainer.step
        values = {"loss": float(trainer.last_loss), **head_body_lrs(trainer.optimizer)}
        self.log_step(values, step=self.last_step, epoch=self._epoch_base + trainer.epoch + 1)

    def on_epoch_end(self, trainer: Trainer) -> None:
        """Log the epoch's history record, then flush."""
        self.last_step = self._step_base + trainer.step
        record = trainer.history[-1]
        self.last_epoch = self._epoch_base + int(record["epoch"])
        if trainer.dist.is_main:
            values = _numeric({k: v for k, v in record.items() if k != "epoch"})
            self.log_epoch(values, epoch=self.last_epoch)
            self.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        """Flush and close (also after an interruption or an early stop)."""
        self.last_step = self._step_base + trainer.step
        if trainer.dist.is_main:
            self.flush()
            self.close()


def _check_file(name: str, path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a file path, got {path!r}; e.g. {name}='runs/a.csv'.")
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"{name}={str(path)!r} is a folder; pass a file path inside it, e.g. "
                          f"{str(file / 'epochs.csv')!r}.")
    return file


def _kept_rows(path: Path, key: str, done: int) -> list[dict[str, str]]:
    """The rows of an existing CSV file numbered up to ``done`` (a resumed run keeps them)."""
    if done == 0 or not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = []
    for row in rows:
        try:
            if int(row.get(key) or 0) <= done:
                kept.append(row)
        except ValueError:
            continue
    return kept


class CSVLogger(MetricLogger):
    """Write one CSV row per epoch (every history key) and, optionally, one per step.

    The epoch file is rewritten atomically after every epoch, so it is always complete;
    its columns are ``epoch`` and the union of the history's keys. The step file
    (``step_path``) has the columns ``step, epoch, loss, lr, body_lr`` and gets each epoch's
    rows appended at the end of the epoch. A new run replaces existing files; a resumed run
    (a Trainer resumed at epoch ``k``) keeps their rows up to epoch ``k`` (step ``s``).

    Args:
        path: The epoch file, e.g. ``"runs/a/epochs.csv"`` (its folder is created).
        step_path: The step file, or ``None`` for no per-step rows.

    Raises:
        ConfigError: A path that is not a path, or is a folder.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch import nn
        >>> from transferkit.train import Trainer
        >>> folder = Path(tempfile.mkdtemp())
        >>> data = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))] * 3
        >>> logger = CSVLogger(folder / "epochs.csv", step_path=folder / "steps.csv")
        >>> _ = Trainer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), epochs=2, topk=(1,),
        ...             device="cpu", callbacks=[logger]).fit(data)
        >>> (folder / "epochs.csv").read_text().splitlines()[0]
        'epoch,lr,train_loss,train_acc,time'
        >>> len((folder / "steps.csv").read_text().splitlines())   # header + 2 x 3 steps
        7
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 step_path: str | os.PathLike[str] | None = None) -> None:
        file = _check_file("path", path)
        steps = None if step_path is None else _check_file("step_path", step_path)
        if steps is not None and steps.resolve() == file.resolve():
            raise ConfigError(f"path and step_path are the same file {str(path)!r}; give the "
                              "steps a file of their own, e.g. 'steps.csv'.")
        super().__init__(every_step=steps is not None)
        self.path, self.step_path = file, steps
        self.rows: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._started = False

    def start(self, trainer: Trainer, *, epochs_done: int, steps_done: int) -> None:
        """On the first fit, keep the rows a resumed run already logged; replace the rest."""
        if self._started:
            return
        self._started = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = list(_kept_rows(self.path, "epoch", epochs_done))
        if self.path.exists() and epochs_done:
            log.info("CSVLogger: %s exists; keeping its %d row(s) up to epoch %d (a resumed "
                     "run)", self.path, len(self.rows), epochs_done)
        elif self.path.exists():
            log.info("CSVLogger: replacing %s (a new run)", self.path)
        if self.step_path is not None:
            self.step_path.parent.mkdir(parents=True, exist_ok=True)
            kept = _kept_rows(self.step_path, "step", steps_done)
            atomic_write_text(self.step_path, _step_csv(kept, header=True))

    def log_epoch(self, values: dict[str, float], *, epoch: int) -> None:
        """Rewrite the epoch file with this epoch's row added."""
        self.rows.append({"epoch": epoch, **values})
        atomic_write_text(self.path, history_csv(self.rows))

    def log_step(self, values: dict[str, float], *, step: int, epoch: int) -> None:
        """Buffer the step's row (written by :meth:`flush`)."""
        self._pending.append({"step": step, "epoch": epoch, **values})

    def flush(self) -> None:
        """Append the buffered step rows to the step file."""
        if self.step_path is None or not self._pending:
            return
        with self.step_path.open("a", newline="") as f:
            f.write(_step_csv(self._pending, header=False))
        self._pending = []


def _step_csv(rows: list[dict[str, Any]], *, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_STEP_FIELDS, lineterminator="\n",
                            extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class TensorBoardLogger(MetricLogger):
    """Log to TensorBoard: ``epoch/<key>`` per epoch and ``step/loss``, ``step/lr``... per step.

    Uses ``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard``
    package (``pip install 'transferkit[tensorboard]'``). The writer is opened at the first
    ``fit`` on rank 0 and closed when ``fit`` ends (a later ``fit`` adds an event file to
    the same folder, which TensorBoard reads as one run). View with
    ``tensorboard --logdir LOG_DIR``.

    Args:
        log_dir: The folder of the event files (created).
        every_step: Also log the loss and the LRs after every optimizer step.

    Raises:
        ConfigError: tensorboard is not installed (the message names the pip command), or
            ``log_dir`` is not a path.
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, every_step: bool = True) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises it when tensorboard is missing
            raise ConfigError(TENSORBOARD_MISSING) from exc
        if not isinstance(log_dir, (str, os.PathLike)):
            raise ConfigError(f"log_dir must be a folder path, got {log_dir!r}; e.g. "
                              "log_dir='runs/a'.")
        super().__init__(every_step=every_step)
        self.log_dir = Path(log_dir)
        self._writer_class = SummaryWriter
        self._writer: Any = None

    def _open(self) -> Any:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir))
        return self._writer

    def log_epoch(self, values: dict[str, float], *, epoch: int) -> None:
        """Add one scalar per history key, at x = the epoch."""
        writer = self._open()
        for key, value in values.items():
            writer.add_scalar(f"epoch/{key}", value, epoch)

    def log_step(self, values: dict[str, float], *, step: int, epoch: int) -> None:
        """Add the step's loss and LRs, at x = the optimizer step."""
        writer = self._open()
        for key, value in values.items():
            writer.add_scalar(f"step/{key}", value, step)

    def flush(self) -> None:
        """Write the event file's buffer to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
