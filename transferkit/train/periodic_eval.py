"""Evaluate a fixed validation slice every few optimizer steps, during the epoch.

The Trainer validates after each epoch; on a short run that is too coarse to see when an
accuracy is first reached. :class:`PeriodicEval` is a callback that evaluates a small,
fixed set of batches every ``every`` optimizer steps and records when (wall clock) and
what (accuracy, loss), plus how long each evaluation itself took, so that a time to
accuracy can leave the evaluations out (``benchmarks/time_to_accuracy.py``).

While a phase of ``fine_tune`` trains a view on cached inputs (``freeze_stages=``, the
linear probe), the trainer's model takes cached tensors, not images: the callback then
evaluates the model behind the view (:func:`~transferkit.adaptation.core.unwrap`) on the
images, through a Trainer of its own that only evaluates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import torch

from transferkit import _validate
from transferkit.adaptation.core import unwrap
from transferkit.train.callbacks import Callback
from transferkit.train.trainer import Trainer

__all__ = ["PeriodicEval"]

log = logging.getLogger(__name__)


class PeriodicEval(Callback):
    """Evaluate ``data`` every ``every`` optimizer steps and record the accuracy over time.

    Every module's train/eval mode is restored exactly after each evaluation, so training
    continues as if nothing happened (the random number streams are not touched either:
    evaluation draws no random numbers).

    Args:
        data: A small fixed set of ``(images, labels)`` batches (e.g. 1,000 validation
            images in a ``TensorLoader``), evaluated as the Trainer evaluates.
        every: Optimizer steps between two evaluations.
        start: The ``time.time()`` that ``seconds`` counts from (e.g. the process's start);
            default: when ``fit`` starts.

    Attributes:
        records: One dict per evaluation: ``step`` (optimizer steps so far), ``epoch``
            (0-based) and ``batch`` (batches of it trained), ``seconds`` (since
            ``start``), ``time`` (``time.time()``), ``acc``, ``loss``, ``eval_s`` (this
            evaluation's duration) and ``eval_total_s`` (all evaluations so far, this one
            included).
        fit_started_at: ``time.time()`` when ``fit`` started (after any caching of
            ``fine_tune``), or ``None`` before.
        first_step_at: ``time.time()`` when the first optimizer step ended, or ``None``.

    Raises:
        ConfigError: ``every`` is not a positive int.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from transferkit.train import Trainer
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> data = [(torch.randn(8, 1, 2, 2), torch.arange(8) % 2)] * 4
        >>> cb = PeriodicEval(data[:1], every=2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> _ = Trainer(model, epochs=1, optimizer=opt, device="cpu", callbacks=[cb]).fit(data)
        >>> [r["step"] for r in cb.records]
        [2, 4]
    """

    def __init__(self, data: Iterable[Any], *, every: int, start: float | None = None) -> None:
        self.every = _validate.positive_int("every", every, example=50)
        self.data, self.start = data, start
        self.records: list[dict[str, Any]] = []
        self.fit_started_at: float | None = None
        self.first_step_at: float | None = None
        self._evaluator: Trainer | None = None
        self._total = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        """Note when training starts (the default origin of ``seconds``)."""
        self.fit_started_at = time.time()
        if self.start is None:
            self.start = self.fit_started_at

    def on_batch_end(self, trainer: Trainer) -> None:
        """Evaluate ``data`` when ``trainer.step`` is a multiple of ``every``."""
        if self.first_step_at is None:
            self.first_step_at = time.time()
        if trainer.step % self.every:
            return
        began, clock = time.time(), time.perf_counter()
        origin = began if self.start is None else self.start
        result = self._evaluate(trainer)
        seconds = time.perf_counter() - clock
        self._total += seconds
        self.records.append({
            "step": trainer.step, "epoch": trainer.epoch, "batch": trainer.batch_in_epoch,
            "seconds": round(began - origin, 3), "time": began,
            "acc": result["acc"], "loss": result["loss"], "eval_s": round(seconds, 3),
            "eval_total_s": round(self._total, 3),
        })
        log.info("step %d: acc %.4f, loss %.4f (%d images, %.1f s)", trainer.step,
                 result["acc"], result["loss"], result["count"], seconds)

    def _evaluate(self, trainer: Trainer) -> dict[str, float]:
        model = unwrap(trainer.model, views=False)
        source = unwrap(model)
        modes = {m: m.training for m in source.modules()}
        modes.update({m: m.training for m in model.modules()})
        try:
            if source is model:
                return trainer.evaluate(self.data)
            return self._source_evaluator(trainer, source).evaluate(self.data)
        finally:
            for module, mode in modes.items():
                module.training = mode

    def _source_evaluator(self, trainer: Trainer, source: torch.nn.Module) -> Trainer:
        """A Trainer over the model behind a view, built once, that only ever evaluates."""
        if self._evaluator is None or self._evaluator.model is not source:
            # The optimizer is never stepped; passing one skips building the default one.
            idle = torch.optim.SGD([next(source.parameters())], lr=0.0)
            self._evaluator = Trainer(
                source, epochs=1, optimizer=idle, device=trainer.device,
                precision=trainer.precision, channels_last=trainer.channels_last,
                topk=trainer.topk, progress=False)
        return self._evaluator
