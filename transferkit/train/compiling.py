"""``Trainer(compile=True)``: the forward passes run through ``torch.compile``.

The Trainer keeps the user's module as ``trainer.model`` and runs it through a
``torch.compile`` wrapper (:func:`compiled`): the model object is never changed, its
checkpoints and history are under its own names (``model_state`` sees through the
wrapper), and a compiled run resumes into a plain Trainer and the other way round.

Compiling costs time once: the first training step compiles the forward and backward
passes, the first evaluation compiles the eval-mode graph, and a batch of another size
(the last, smaller one) compiles once more. :class:`CompileWarmup` measures the first
part and says it in one log line.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.train.callbacks import Callback

if TYPE_CHECKING:
    from transferkit.train.trainer import Trainer

__all__ = ["CompileWarmup", "check_compile", "compiled"]

log = logging.getLogger(__name__)


def check_compile(model: nn.Module, compile: bool) -> None:
    """Raise when ``compile=True`` would compile a model that is compiled already.

    Raises:
        ConfigError: ``model`` is a ``torch.compile`` wrapper and ``compile`` is true.
    """
    if compile and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        raise ConfigError(
            "compile=True but the model is compiled already (a torch.compile wrapper); pass "
            "the plain model with compile=True, or the compiled one with compile=False.")


def compiled(module: nn.Module) -> nn.Module:
    """Return ``torch.compile(module)`` (inductor, default mode); ``module`` is unchanged."""
    return torch.compile(module)


class CompileWarmup(Callback):
    """Time the run's first two optimizer steps and log what compiling cost, once.

    The Trainer adds it to its callbacks when ``compile=True``. The line reads
    ``torch.compile: on; the first step took 26.4 s, the second 0.002 s: about 26.4 s of
    compiling`` (or only the first step's time when the run has one step).
    """

    order = -1_000_000  # before the user's callbacks: they may take time

    def __init__(self) -> None:
        self._marks: list[float] = []
        self._said = False

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Start the clock at the first epoch this process trains."""
        if not self._marks:
            self._marks.append(time.perf_counter())

    def on_batch_end(self, trainer: Trainer) -> None:
        """Record the first two steps' end; log once both are known."""
        if len(self._marks) < 3:
            self._marks.append(time.perf_counter())
        if len(self._marks) == 3:
            self._say(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        """Log the first step's time when the run had a single step."""
        if len(self._marks) == 2:
            self._say(trainer)

    def _say(self, trainer: Trainer) -> None:
        if self._said or not trainer.dist.is_main:
            return
        self._said = True
        first = self._marks[1] - self._marks[0]
        if len(self._marks) < 3:
            log.info("torch.compile: on; the only step took %.1f s, compiling included", first)
            return
        second = self._marks[2] - self._marks[1]
        log.info("torch.compile: on; the first step took %.1f s, the second %.3f s: about "
                 "%.1f s of compiling (evaluation compiles its graph once more)", first,
                 second, max(0.0, first - second))
