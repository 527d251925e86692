"""Step 4 of fine-tuning: the training loop and everything it needs.

- :mod:`~transferkit.train.trainer`: :class:`Trainer` (fit, evaluate, predict, resume);
- :mod:`~transferkit.train.callbacks`: the events user code hooks into;
  :mod:`~transferkit.train.periodic_eval` (:class:`PeriodicEval`), a callback that
  evaluates a fixed slice every few steps, to see when an accuracy is reached;
- :mod:`~transferkit.train.checkpoint` and :mod:`~transferkit.train.state`: safe
  checkpoints and the Trainer's checkpoint format;
- :mod:`~transferkit.train.optim` and :mod:`~transferkit.train.schedules`: the default
  optimizer and warm-up + cosine schedule (the one builder the recipes use too);
- :mod:`~transferkit.train.lr_finder`: :func:`lr_find`, a short LR sweep that suggests a
  head LR and leaves the model exactly as it was;
- :mod:`~transferkit.train.loggers`: experiment logging callbacks (CSV, TensorBoard, your own);
- :mod:`~transferkit.train.unfreezing`: the plan of gradual unfreezing (by epoch or by
  optimizer step), its log lines and how a checkpoint resumes it;
- :mod:`~transferkit.train.targets`: what a target batch means (class indices, soft or
  multi-hot: the task), its loss, class weights; :mod:`~transferkit.train.mixing`: mixup
  and CutMix; :mod:`~transferkit.train.multilabel_metrics`: mAP and F1;
- :mod:`~transferkit.train.ema` (``ema=``: an average of the weights, validated and kept),
  :mod:`~transferkit.train.compiling` (``compile=True``) and
  :mod:`~transferkit.train.tta` (test-time augmentation in ``evaluate``/``predict``);
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
from transferkit.train.ema import ModelEma, ema_decay
from transferkit.train.loggers import CSVLogger, MetricLogger, TensorBoardLogger
from transferkit.train.lr_finder import LRFindResult, lr_find, suggest_lr
from transferkit.train.mixing import batch_mixer
from transferkit.train.multilabel_metrics import average_precision
from transferkit.train.periodic_eval import PeriodicEval
from transferkit.train.schedules import WarmupCosine, warmup_cosine, warmup_cosine_scheduler
from transferkit.train.targets import TASKS, check_targets, task_loss
from transferkit.train.trainer import Trainer, check_trainer_args
from transferkit.train.tta import TTA_MODES, tta_probs, tta_views

__all__ = [
    "EVENTS",
    "CSVLogger",
    "TASKS",
    "Callback",
    "LRFindResult",
    "MetricLogger",
    "ModelEma",
    "PeriodicEval",
    "TTA_MODES",
    "TensorBoardLogger",
    "Trainer",
    "WarmupCosine",
    "average_precision",
    "batch_mixer",
    "check_targets",
    "check_trainer_args",
    "cleanup",
    "ema_decay",
    "load_checkpoint",
    "lr_find",
    "save_checkpoint",
    "select_device",
    "suggest_lr",
    "task_loss",
    "tta_probs",
    "tta_views",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
