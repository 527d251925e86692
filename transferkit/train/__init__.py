"""Step 4 of fine-tuning: the training loop and everything it needs.

- :mod:`~transferkit.train.trainer`: :class:`Trainer` (fit, evaluate, predict, resume);
- :mod:`~transferkit.train.callbacks`: the events user code hooks into;
  :mod:`~transferkit.train.periodic_eval` (:class:`PeriodicEval`), a callback that
  evaluates a fixed slice every few steps, to see when an accuracy is reached;
- :mod:`~transferkit.train.checkpoint` and :mod:`~transferkit.train.state`: safe
  checkpoints and the Trainer's checkpoint format;
- :mod:`~transferkit.train.optim` and :mod:`~transferkit.train.schedules`: the default
  optimizer and warm-up + cosine schedule (the one builder the recipes use too);
- :mod:`~transferkit.train.unfreezing`: the plan of gradual unfreezing (by epoch or by
  optimizer step), its log lines and how a checkpoint resumes it;
- :mod:`~transferkit.train.batch_checks`, :mod:`~transferkit.train.history`,
  :mod:`~transferkit.train.metrics`, :mod:`~transferkit.train.devices`,
  :mod:`~transferkit.train.interrupts`, :mod:`~transferkit.train.distributed` (with
  :mod:`~transferkit.train.samplers`, each rank's share of a DataLoader): the parts of the
  loop.

This layer uses :mod:`transferkit.adaptation` (freezing, parameter groups) and knows nothing
about backbones: it never imports :mod:`transferkit.backbones`.
"""

from __future__ import annotations

from transferkit.train.callbacks import EVENTS, Callback
from transferkit.train.checkpoint import load_checkpoint, save_checkpoint
from transferkit.train.devices import select_device
from transferkit.train.distributed import cleanup
from transferkit.train.periodic_eval import PeriodicEval
from transferkit.train.schedules import WarmupCosine, warmup_cosine, warmup_cosine_scheduler
from transferkit.train.trainer import Trainer, check_trainer_args

__all__ = [
    "EVENTS",
    "Callback",
    "PeriodicEval",
    "Trainer",
    "WarmupCosine",
    "check_trainer_args",
    "cleanup",
    "load_checkpoint",
    "save_checkpoint",
    "select_device",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
