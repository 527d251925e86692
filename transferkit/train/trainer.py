"""A minimal, complete training loop for fine-tuning classifiers, in plain PyTorch.

Reads straight through: :meth:`Trainer.fit` checks the data, sets up the schedule, maybe
resumes, then loops over epochs; each epoch trains (:meth:`Trainer._train_epoch`),
validates, updates the history and writes checkpoints. Events (see
:mod:`transferkit.train.callbacks`) let user code hook in without subclassing.

The Trainer knows nothing about backbones: it works with any ``nn.Module`` that maps a
``(N, C, H, W)`` float batch to ``(N, num_classes)`` logits and any iterable of
``(inputs, targets)`` batches, including a plain ``torch.utils.data.DataLoader``.

The loop is here; its parts live in their own modules of :mod:`transferkit.train`:
``batch_checks`` (the first-batch checks, ``set_epoch``), ``targets`` (the task of the
targets, its loss, class weights), ``mixing`` (mixup, CutMix), ``history`` (best epoch,
early stopping, history files), ``state`` (the checkpoint format), ``schedules``, ``optim``,
``unfreezing`` (the gradual unfreezing plan), ``devices``, ``depthwise`` (CPU speed path),
``distributed``, ``metrics``, ``interrupts`` (Ctrl-C), ``ema`` (the average of the
weights), ``compiling`` (``compile=True``) and ``tta`` (test-time augmentation).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from transferkit import _validate
from transferkit._io import atomic_write_bytes
from transferkit.adaptation.core import unwrap
from transferkit.adaptation.freezing import check_unfreeze_until, freeze, freeze_state
from transferkit.errors import ConfigError, DataError, NonFiniteLossError, closest
from transferkit.train.batch_checks import FirstBatch, check_first_batch, data_len, set_data_epoch
from transferkit.train.best_weights import BestWeights, is_validation_metric
from transferkit.train.callbacks import Callback, CallbackList
from transferkit.train.checkpoint import get_rng_state, save_checkpoint, set_rng_state
from transferkit.train.compiling import CompileWarmup, check_compile, compiled
from transferkit.train.depthwise import crop_depthwise
from transferkit.train.devices import PRECISION_DTYPES, Precision, autocast, select_device
from transferkit.train.distributed import (
    DistInfo,
    all_reduce_sum,
    check_same_draw,
    check_same_length,
    raise_together,
    setup,
    shard_for_evaluation,
    shard_for_training,
)
from transferkit.train.ema import EMA_WARMUP_POWER, ModelEma, check_ema
from transferkit.train.heap import keep_heap
from transferkit.train.history import (
    format_epoch,
    new_best,
    resolve_monitor,
    update_best,
    write_history,
)
from transferkit.train.interrupts import sigint_requests_stop
from transferkit.train.metrics import MetricSums, metric_sums
from transferkit.train.mixing import batch_mixer, check_mix_alphas
from transferkit.train.multilabel_metrics import MultiLabelSums
from transferkit.train.optim import default_optimizer, head_body_lrs, schedule_steps
from transferkit.train.schedules import stretch_schedule, warming_up, warmup_cosine_scheduler
from transferkit.train.state import (
    CHECKPOINT_FORMAT,
    freeze_record,
    load_into,
    model_state,
    read_state,
)
from transferkit.train.targets import (
    check_same_task,
    check_target_options,
    class_weights_for,
    task_loss,
)
from transferkit.train.tta import check_tta, tta_logits, tta_probs
from transferkit.train.unfreezing import lr_scale, plan_record, restored_plan, unfreezing_plan

__all__ = ["Trainer", "check_trainer_args"]

log = logging.getLogger(__name__)


class Trainer:
    """Train, evaluate and checkpoint a classifier.

    Args:
        model: Any module mapping ``(N, C, H, W)`` floats to ``(N, num_classes)`` logits.
        epochs: Epochs to train (``fit(epochs=...)`` overrides it).
        lr: Learning rate of the head (of everything when the model has no known head).
        body_lr: Learning rate of the rest; default ``lr * lr_ratio``.
        lr_ratio: ``body_lr / lr`` when ``body_lr`` is not given.
        layer_decay: Layer-wise LR decay of the default optimizer: body stage ``i``
            counted back from the head gets ``body_lr * layer_decay**i`` (``None``: off).
        weight_decay: AdamW weight decay (not applied to biases, norms and what the model's
            ``no_weight_decay()`` names, see ``param_groups``).
        warmup: Fraction of the optimizer steps spent in linear warm-up (default schedule).
        optimizer: Any torch optimizer; default AdamW over
            ``param_groups(model, lr, body_lr, weight_decay=..., include_frozen=True)``.
        scheduler: Any torch LR scheduler; default warm-up + cosine when the optimizer is
            the default one, no scheduler otherwise.
        scheduler_interval: Step the scheduler per optimizer ``"step"`` or per ``"epoch"``.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; default: the task's loss,
            cross-entropy (single-label) or BCE-with-logits (multi-label), see
            :func:`~transferkit.train.targets.task_loss`.
        task: ``"single_label"`` (class indices or soft targets) or ``"multi_label"``
            (multi-hot targets); ``None`` infers it from the first train batch and refuses
            an ambiguous one (:func:`~transferkit.train.targets.check_targets`). Before
            ``fit``, ``predict`` takes ``None`` as single-label (softmax).
        label_smoothing: Label smoothing of the default loss (single-label: toward the
            uniform distribution; multi-label: each target toward 0.5).
        class_weights: ``"balanced"``: inverse class frequency of the train labels,
            computed by ``fit`` and logged (``trainer.class_weights``); or one weight per
            class. Weights the default loss (multi-label: BCE's ``pos_weight``).
        mixup: MixUp's ``alpha`` on training batches (0: off), torchvision's
            ``transforms.v2.MixUp``; see :mod:`~transferkit.train.mixing`.
        cutmix: CutMix's ``alpha`` (0: off); with ``mixup`` each batch gets one of the two.
        threshold: Multi-label: a class is predicted at ``sigmoid(logit) >= threshold``
            (``*_f1``).
        penalty: A regulariser ``penalty() -> scalar`` added to the training loss (not to
            evaluation), e.g. :class:`~transferkit.recipes.l2sp.L2SP`.
        device: ``"auto"`` (CUDA > MPS > CPU) or a device.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast (GradScaler for fp16 on CUDA).
        grad_clip: Clip the gradient norm to this value.
        grad_accum: Micro-batches per optimizer step.
        channels_last: Use the channels-last memory format for model and inputs.
        crop_kernels: Run grouped convolutions on only the kernel taps that reach their
            input (:func:`~transferkit.train.depthwise.crop_depthwise`: the same results,
            faster on small feature maps); default (``None``): on the CPU.
        keep_memory: On the CPU, keep the memory a step frees in the process for the next
            step during ``fit``, ``evaluate`` and ``predict`` instead of glibc handing it
            back to the OS and faulting it in again
            (:func:`~transferkit.train.heap.keep_heap`: steps 2.4x faster at 224 px and
            1.5x at 64 px, a peak 10-18% higher); given back when they return. Default
            (``None``): on the CPU where the C library is glibc; ``True`` elsewhere logs
            that it cannot apply.
        compile: Run the model's forward passes through ``torch.compile`` (the model
            object and its checkpoint names are unchanged); one log line says what the
            first step's compiling cost.
        topk: The ``k`` of the top-k accuracies reported (``k=1`` is ``*_acc``), single-label;
            multi-label runs report ``*_map`` (validation) and ``*_f1`` instead.
        monitor: History key that decides the best epoch; default ``"val_loss"``
            (``"train_loss"`` without validation data). Keys with ``acc``/``top``/``map``/
            ``f1`` are maximised. With the default schedule, an epoch that ends within its
            warm-up is not a candidate for the best epoch (one log line says so): its
            weights were never trained at the full LR, and on a small validation split
            its score can still be the run's best by chance.
        patience: Stop after this many epochs without improvement (``None``: never);
            epochs within the warm-up do not count.
        restore_best: When ``fit`` returns normally (not after Ctrl-C), the model holds
            the weights of the best epoch by a validation ``monitor`` (``val_*``), kept
            in memory as one CPU copy (after a resume, read from ``best.pt``) and logged in
            one line; ``trainer.restored_epoch`` names it. ``False``: the last epoch's.
        ema: Keep an exponential moving average of the weights with this decay (e.g.
            0.999, warmed up: :func:`~transferkit.train.ema.ema_decay`) and validate it
            instead of the weights: ``val_*``, ``monitor``, ``best.pt`` and
            ``restore_best`` are the average's, and ``fit`` ends with the average's
            weights (of the best epoch, else of the last step). ``None``: off.
        freeze: A freezing policy applied at the start of ``fit`` (see
            :func:`transferkit.freeze`); the model's BatchNorm mode (``bn`` of
            ``freeze_state(model)``) is kept.
        unfreeze_every: Gradual unfreezing by epoch: one more stage every this many epochs
            (a stage opening late in the run trains at the cosine's decayed LR).
        unfreeze_until: Gradual unfreezing by optimizer step: the stages open one at a
            time, evenly, last stage first, the stem after this fraction of the run's
            optimizer steps (:func:`~transferkit.adaptation.freezing.unfreeze_steps`).
            Not with ``unfreeze_every``; the train data needs a ``len()``.
        callbacks: :class:`~transferkit.train.callbacks.Callback` instances.
        out_dir: Folder for ``last.pt``, ``best.pt``, ``history.json`` and ``history.csv``.
        seed: Seed of the per-epoch shuffling of DataLoaders (a pure function of seed and
            epoch). The global RNGs are not reseeded: call ``torch.manual_seed`` yourself.
        progress: Show a tqdm bar; default: when stderr is a terminal.

    Attributes:
        restored_epoch: After ``fit``, the epoch (1-based) whose weights the model holds
            as the best one (``restore_best``); ``None`` when it holds the last epoch's
            (``restore_best=False``, no validation monitor, an interruption, or
            ``best.pt`` unreadable after a resume: the log line says which).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> data = [(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,)))] * 2
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> history = Trainer(model, epochs=2, optimizer=opt, device="cpu").fit(data)
        >>> len(history)
        2
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        epochs: int = 10,
        lr: float = 1e-3,
        body_lr: float | None = None,
        lr_ratio: float = 0.1,
        layer_decay: float | None = None,
        weight_decay: float = 0.05,
        warmup: float = 0.05,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        task: Literal["single_label", "multi_label"] | None = None,
        label_smoothing: float = 0.0,
        class_weights: str | Sequence[float] | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        threshold: float = 0.5,
        penalty: Callable[[], torch.Tensor] | None = None,
        device: str | torch.device = "auto",
        precision: Precision = "fp32",
        grad_clip: float | None = None,
        grad_accum: int = 1,
        channels_last: bool = False,
        crop_kernels: bool | None = None,
        keep_memory: bool | None = None,
        compile: bool = False,
        topk: Sequence[int] = (1, 5),
        monitor: str | None = None,
        patience: int | None = None,
        restore_best: bool = True,
        ema: float | None = None,
        freeze: str | None = None,
        unfreeze_every: int | None = None,
        unfreeze_until: float | None = None,
        callbacks: Iterable[Callback] = (),
        out_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        checked = _check_config(**{k: v for k, v in locals().items() if k not in ("self", "model")})
        epochs, grad_accum, topk = checked["epochs"], checked["grad_accum"], checked["topk"]
        patience, unfreeze_every = checked["patience"], checked["unfreeze_every"]
        unfreeze_until = checked["unfreeze_until"]

        check_compile(model, compile)
        self.device = select_device(device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        self.dist: DistInfo = setup(self.device)
        if self.dist.is_main:
            log.info("device: %s (precision %s)", self.device, precision)
        self.model = model.to(self.device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.epochs, self.lr, self.weight_decay, self.warmup = epochs, lr, weight_decay, warmup
        self.layer_decay = layer_decay
        self.body_lr = body_lr if body_lr is not None else lr * lr_ratio
        self.precision, self.grad_clip, self.grad_accum = precision, grad_clip, grad_accum
        self.channels_last, self.topk, self.seed = channels_last, tuple(topk), seed
        self.crop_kernels = self.device.type == "cpu" if crop_kernels is None else crop_kernels
        self.keep_memory = self.device.type == "cpu" if keep_memory is None else keep_memory
        self._keep_memory_said, self._keep_memory_asked = False, keep_memory is True
        self.task, self.threshold, self.penalty = task, checked["threshold"], penalty
        self.label_smoothing = checked["label_smoothing"]
        self.mixup, self.cutmix = checked["mixup"], checked["cutmix"]
        self._class_weights_arg, self._own_loss = checked["class_weights"], loss_fn is not None
        self.class_weights: torch.Tensor | None = None  # the default loss's, once resolved
        self.num_classes: int | None = None
        self._mixer: Any = None
        self.loss_fn = loss_fn if loss_fn is not None else task_loss(
            task or "single_label", label_smoothing=label_smoothing)
        self.monitor, self._monitor_arg, self.patience = monitor, monitor, patience
        self.restore_best = restore_best
        self.freeze_policy, self.unfreeze_every = freeze, unfreeze_every
        self.unfreeze_until = unfreeze_until
        self.callbacks = CallbackList([*callbacks, *([CompileWarmup()] if compile else [])])
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.scheduler_interval = scheduler_interval
        self.optimizer = optimizer if optimizer is not None else self._default_optimizer()
        self.ema = ModelEma(self.model, decay=checked["ema"]) if ema is not None else None
        self.compile = compile
        self._net = compiled(self.model) if compile else self.model  # the forward passes
        self._ema_net = (compiled(self.ema.module) if compile else self.ema.module
                         ) if self.ema is not None else None
        self.scheduler = scheduler
        self._default_schedule = optimizer is None and scheduler is None
        use_scaler = precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        if precision == "fp16" and not use_scaler:
            warnings.warn(
                f"precision='fp16' on {self.device.type} runs without a GradScaler, so small "
                "gradients can underflow to zero. HINT: use precision='bf16' here.",
                stacklevel=2,
            )

        # Training state; all of it goes into checkpoints.
        self.epoch = 0  # the epoch being (or about to be) trained, 0-based
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches of the current epoch already trained
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = new_best()
        self.should_stop = False
        self.interrupted = False
        self.last_loss: float = float("nan")
        self._sigint = False
        self._unfreezer: Any = None
        self._ddp: nn.Module | None = None
        self._ddp_net: nn.Module | None = None  # self._ddp, compiled with compile=True
        self._ddp_trainable: tuple[bool, ...] = ()
        self._resume: dict[str, Any] | None = None
        self._epoch_rng: dict[str, Any] | None = None
        self._partial: torch.Tensor | None = None
        self.restored_epoch: int | None = None
        self._best_weights = BestWeights()
        self._best_file: Path | None = None  # best.pt beside the checkpoint resumed from

    # ----------------------------------------------------------------- public API
    def fit(
        self,
        train: Iterable[Any],
        val: Iterable[Any] | None = None,
        *,
        epochs: int | None = None,
        resume: str | os.PathLike[str] | bool | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs, validating after each, and return the history.

        When it returns normally, the model holds the best epoch's weights by the
        validation ``monitor`` (``restore_best``; ``self.restored_epoch`` says which).

        Args:
            train: Iterable of ``(inputs, targets)`` batches (re-iterated every epoch).
            val: Validation batches, evaluated after every epoch.
            epochs: Total epochs, counting those of a resumed run; default ``self.epochs``.
            resume: A checkpoint path, or ``True`` for ``<out_dir>/last.pt``.

        Returns:
            One record per epoch: epoch, lr, train/val loss and accuracies, time.

        Raises:
            DataError: The first batch of ``train`` or ``val`` is empty or malformed.
            ConfigError: ``epochs`` is not positive or ``monitor`` is unknown.
            CheckpointError: ``resume`` cannot be read.
            NonFiniteLossError: A loss became NaN or infinite (no checkpoint is written).
            CallbackError: A callback raised.
        """
        epochs = self.epochs if epochs is None else _validate.positive_int("epochs", epochs)
        train_data = shard_for_training(train, self.dist, seed=self.seed)
        check_same_length(train_data, self.dist)
        check_same_draw(train_data, self.dist, "train")
        val_data = None if val is None else shard_for_evaluation(val, self.dist, seed=self.seed)
        if val_data is not None:
            check_same_draw(val_data, self.dist, "val")
        error, first = None, FirstBatch(0, None)
        try:  # every rank checks its own first batch; all raise if one fails
            first = self._check_data(train_data, "train", self.task)
            if val_data is not None:
                self._check_data(val_data, "val", first.task)
        except DataError as exc:
            error = exc
        raise_together(error, self.dist)
        check_same_task(str(first.task), self.dist, self.device)
        self._check_monitor(val is not None, first.task)
        if self.unfreeze_until is not None and data_len(train_data) is None:
            raise ConfigError(
                f"unfreeze_until={self.unfreeze_until} opens stages by optimizer step, which "
                "needs the run's step count: the train data has no len(). Pass "
                "unfreeze_every=k (epochs) instead."
            )
        self._setup_targets(train, first)  # the loss (class weights), the mixer
        self._setup_schedule(train_data, epochs)
        if self.freeze_policy is not None:
            # Keep the BatchNorm mode the model has (freeze(..., bn="frozen") before fit).
            freeze(self.model, self.freeze_policy, bn=freeze_state(self.model)["bn"])
        if self._unfreezer is None and (self.unfreeze_every or self.unfreeze_until):
            self._unfreezer = unfreezing_plan(
                self.model, every=self.unfreeze_every, until=self.unfreeze_until,
                batches=data_len(train_data) or 1, epochs=epochs, grad_accum=self.grad_accum,
                verbose=self.dist.is_main)
            held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
            named = unwrap(self.model, views=False).named_parameters()  # no _orig_mod. names
            missing = [n for n, p in named if id(p) not in held]
            if missing:
                warnings.warn(
                    f"{self._unfreeze_arg()} but the optimizer lacks "
                    f"{len(missing)} parameters (e.g. {missing[0]!r}); they will never train "
                    "after unfreezing. HINT: build it over param_groups(..., "
                    "include_frozen=True), or leave optimizer=None.",
                    stacklevel=2,
                )
        if resume:
            self._restore(resume)
            self._fit_schedule_to(train_data, epochs)

        self.should_stop = self.interrupted = self._sigint = False
        self.restored_epoch = None
        if self.ema is not None and self.dist.is_main:
            log.info("ema: validation, monitor, best.pt and the weights fit ends with are those "
                     "of an exponential moving average of the weights (decay min(%g, 1 - (1 + "
                     "n)^-%.3g) after n updates; BatchNorm statistics copied from the model)",
                     self.ema.decay, EMA_WARMUP_POWER)
        try:
            with self._sigint_handler(), self._kernel_paths(), self._heap(say=True):
                self._fit_epochs(train_data, val_data, epochs)
        finally:
            # Drop the DDP wrapper: it holds the process group, whose Gloo threads must be
            # joined by destroy_process_group() while Python is alive (a group left to
            # interpreter shutdown can abort the process).
            self._ddp = self._ddp_net = None
        return self.history

    def _fit_epochs(
        self, train_data: Iterable[Any], val_data: Iterable[Any] | None, epochs: int
    ) -> None:
        self.callbacks.fire("on_fit_start", self)
        while self.epoch < epochs and not self.should_stop:
            self._open_stages(force=True)
            self.callbacks.fire("on_epoch_start", self)
            start = time.perf_counter()
            train_sums = self._train_epoch(train_data)
            if self.interrupted:
                self._save_interrupted()
                break
            record: dict[str, Any] = {"epoch": self.epoch + 1,
                                      **head_body_lrs(self.optimizer)}
            record.update(self._reduce(train_sums).result("train"))
            if val_data is not None:
                record.update(self._run_eval(val_data, ema=True).result("val"))
            if self.ema is not None:  # val_* are the average's: say with which decay
                record["ema_decay"] = self.ema.current_decay()
            record["time"] = time.perf_counter() - start
            self.history.append(record)
            self._update_best(record)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self.epoch += 1
            self.batch_in_epoch = 0
            self.callbacks.fire("on_epoch_end", self)
            self._log_epoch(record, epochs)
            improved = self.best["epoch"] == record["epoch"]
            self._write_epoch_files(improved=improved)
            if improved and self.restore_best and is_validation_metric(self.monitor):
                self._best_weights.keep(self._evaluated(), record["epoch"])
        if not self.interrupted and self.restore_best:
            self.restored_epoch = self._best_weights.restore(
                self.model, best=self.best, history=self.history, monitor=self.monitor,
                file=self._best_file, dist=self.dist, ema=self.ema)
        elif not self.interrupted and self.ema is not None and self.history:
            self.ema.copy_to(self.model, say=self.dist.is_main)
        self.callbacks.fire("on_fit_end", self)

    @torch.no_grad()
    def evaluate(self, data: Iterable[Any], *, tta: str = "none") -> dict[str, float]:
        """Return ``loss``, ``acc``, ``top<k>`` and ``count`` on ``data`` (eval mode, no grad).

        Multi-label: ``loss``, ``map``, ``f1`` and ``count``. Under DDP every rank evaluates
        its own share and the sums are all-reduced (the logits gathered for mAP), so each
        sample counts exactly once. A Trainer that has not been fit reads the task from
        the first batch of ``data``. The model is evaluated as it is (after ``fit``: the
        weights it ended with), never its average.

        Args:
            data: Batches of ``(inputs, targets)``.
            tta: Test-time augmentation, one of :data:`~transferkit.train.tta.TTA_MODES`:
                the probabilities (softmax, or sigmoids for multi-label) are averaged over
                the views and ``loss`` is the loss of the logits of that average.

        Raises:
            ConfigError: Not fit yet and ``class_weights="balanced"``: there are no train
                labels to weigh by.
        """
        tta = check_tta(tta)
        data = shard_for_evaluation(data, self.dist, seed=self.seed)
        check_same_draw(data, self.dist, "evaluation")
        if self.num_classes is None:
            if self._class_weights_arg == "balanced" and not self._own_loss:
                raise ConfigError("class_weights='balanced' counts the train labels in fit(); "
                                  "call fit first, or pass one weight per class.")
            first = self._check_data(data, "evaluation", self.task)
            check_same_task(str(first.task), self.dist, self.device)
            self._setup_targets(data, first)
        with self._kernel_paths(), self._heap():
            sums = self._run_eval(data, tta=tta)
        out = sums.result("")
        out["count"] = sums.count
        return out

    @torch.no_grad()
    def predict(self, data: Iterable[Any], *, probs: bool = True,
                tta: str = "none") -> torch.Tensor:
        """Return the probabilities (or logits) for every sample, in order, on CPU.

        Probabilities are the softmax of the logits, or their sigmoid for a multi-label
        task (each class on its own).

        Args:
            data: Batches of inputs, or of ``(inputs, targets)``.
            probs: Return probabilities; ``False`` returns the raw logits (with ``tta``:
                the logits of the averaged probabilities, see ``tta_logits``).
            tta: Test-time augmentation, one of :data:`~transferkit.train.tta.TTA_MODES`:
                the probabilities are averaged over the views.
        """
        tta = check_tta(tta)
        was_training = self.model.training
        self.model.eval()
        outs = []
        try:
            with self._heap():
                for batch in data:
                    x = batch[0] if isinstance(batch, (tuple, list)) else batch
                    with self._autocast(), self._kernel_paths():
                        out = (tta_probs if probs else tta_logits)(
                            self._net, self._inputs(x), tta,
                            multi_label=self.task == "multi_label")
                    outs.append(out.float().cpu())
        finally:
            self.model.train(was_training)
        if not outs:
            raise DataError("predict() got no batches; pass a non-empty iterable of inputs.")
        return torch.cat(outs)

    # ----------------------------------------------------------------- one epoch
    def _train_epoch(self, data: Iterable[Any]) -> MetricSums:
        model = self._train_module()
        model.train()
        sums = self._new_sums()
        skip, resume = self.batch_in_epoch, self._resume
        if resume is not None:
            # Mid-epoch resume: replay the epoch's start exactly, skip what was trained.
            set_rng_state(resume["epoch_rng"])
            if self.dist.is_main:
                sums.load(resume["partial"])
        self._epoch_rng = get_rng_state()
        skipped = set_data_epoch(data, self.epoch, start_batch=skip)
        batches: Iterator[Any] = iter(data)
        for _ in range(skip - skipped):  # loaders that cannot start mid-epoch: replay
            next(batches)
        if resume is not None:
            set_rng_state(resume["rng"])
            self._resume = None
        n = data_len(data)
        accum, pending = self.grad_accum, False
        bar = self._bar(n, skip)
        for i, (x, y) in enumerate(batches, start=skip):
            x, y = self._batch(x, y, mix=True)
            window_start = i - i % accum
            window = accum if n is None else min(accum, n - window_start)
            last = i - window_start == window - 1
            sync = contextlib.nullcontext()
            if self._ddp is not None and not last:
                sync = self._ddp.no_sync()  # all-reduce gradients once per optimizer step
            with sync:
                with self._autocast():
                    logits = model(x)
                    loss = self.loss_fn(logits, y)
                    if self.penalty is not None:
                        loss = loss + self.penalty().to(loss.dtype)
                stop = self._check_loss(loss, i)
                self._backward(loss / window if window > 1 else loss)
            sums.update(loss, logits, y)
            pending = True
            if last:
                self._optimizer_step()
                if self._open_stages():  # a stage opened at this step: DDP must see it
                    model = self._train_module()
                pending = False
                self.batch_in_epoch = i + 1
                if bar is not None:
                    bar.update(window)
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", refresh=False)
                self.callbacks.fire("on_batch_end", self)
                if stop:
                    self.interrupted = True
                    # Whole-run sums of the partial epoch; on resume rank 0 alone restores them.
                    self._partial = self._reduce(sums).packed()
                    break
        if pending:  # an iterable without len() ended inside an accumulation window
            self._optimizer_step()
        if bar is not None:
            bar.close()
        return sums

    def _check_loss(self, loss: torch.Tensor, batch: int) -> bool:
        # One host sync per batch: names the exact step on NaN/Inf and, under DDP, lets all
        # ranks agree to stop (or to raise) together instead of hanging in a collective.
        value = loss.item()
        nonfinite, stop = not math.isfinite(value), self._sigint
        if self.dist.enabled:
            flags = torch.tensor([float(nonfinite), float(stop)], device=loss.device)
            nonfinite, stop = (bool(v) for v in all_reduce_sum(flags, self.dist).tolist())
        if nonfinite:
            raise NonFiniteLossError(
                f"The loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1} "
                f"(batch {batch + 1} of the epoch); training stopped and no checkpoint was "
                f"written, so the last good one in {str(self.out_dir)!r} is untouched. Try a "
                "lower lr, grad_clip=1.0 or precision='fp32', and check the data for NaN."
            )
        self.last_loss = value
        return stop

    def _backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.step += 1

    def _run_eval(self, data: Iterable[Any], *, ema: bool = False,
                  tta: str = "none") -> MetricSums | MultiLabelSums:
        # The unwrapped model: no DDP collectives, so ranks may hold different batch counts.
        # ema: validation during fit, of the average when there is one.
        net = self._ema_net if ema and self._ema_net is not None else self._net
        was_training = self.model.training
        self.model.eval()
        sums = self._new_sums(evaluation=True)
        try:
            with torch.no_grad():
                for x, y in data:
                    x, y = self._batch(x, y)
                    with self._autocast():
                        logits = tta_logits(net, x, tta, multi_label=self.task == "multi_label")
                        loss = self.loss_fn(logits, y)
                    sums.update(loss.float(), logits.float(), y)
        finally:
            self.model.train(was_training)
        return self._reduce(sums)

    # ----------------------------------------------------------------- helpers
    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.precision)

    def _kernel_paths(self) -> contextlib.AbstractContextManager[int]:
        # The taps dropped multiply zero padding only (train/depthwise.py).
        return crop_depthwise(self.model, enabled=self.crop_kernels)

    @contextlib.contextmanager
    def _heap(self, *, say: bool = False) -> Iterator[None]:
        # Freed memory stays for the next step (train/heap.py); said once per Trainer.
        with keep_heap(self.keep_memory) as kept:
            if not self._keep_memory_said and self.dist.is_main and (
                    (kept and say) or (not kept and self._keep_memory_asked)):
                self._keep_memory_said = True
                if kept:
                    log.info("keep_memory: freed memory stays in the process for the next "
                             "step (glibc: no mmap, trim past 2 GiB), given back after "
                             "fit/evaluate/predict; keep_memory=False turns it off")
                else:
                    log.warning("keep_memory=True has no effect here: the C library is not "
                                "glibc (no mallopt), so freed memory goes back to the OS as "
                                "usual")
            yield

    def _reduce(self, sums: MetricSums | MultiLabelSums) -> MetricSums | MultiLabelSums:
        sums.reduce(self.dist)
        return sums

    def _batch(self, x: torch.Tensor, y: torch.Tensor, *,
               mix: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a batch to the device, mixed (training, ``mixup``/``cutmix``) on it."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if mix and self._mixer is not None:
            x, y = self._mixer(x, y)
        return self._inputs(x), y

    def _new_sums(self, *, evaluation: bool = False) -> MetricSums | MultiLabelSums:
        return metric_sums(self.task, topk=self.topk, num_classes=self.num_classes or 0,
                           threshold=self.threshold, device=self.device, evaluation=evaluation)

    def _setup_targets(self, train: Iterable[Any], first: FirstBatch) -> None:
        """Fix the task, the default loss (class weights counted on ``train``), the mixer."""
        self.task, self.num_classes = first.task, first.num_classes
        if not self._own_loss:
            self.class_weights = class_weights_for(
                self._class_weights_arg, train, num_classes=first.num_classes,
                task=str(first.task), verbose=self.dist.is_main)
            weight = None if self.class_weights is None else self.class_weights.to(self.device)
            self.loss_fn = task_loss(str(first.task), label_smoothing=self.label_smoothing,
                                     weight=weight)
        self._mixer = batch_mixer(mixup=self.mixup, cutmix=self.cutmix,
                                  num_classes=first.num_classes)

    def _train_module(self) -> nn.Module:
        if not self.dist.enabled:
            return self._net
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self._ddp is None or trainable != self._ddp_trainable:
            # DDP only syncs parameters that required grad when wrapped: rewrap after
            # (gradual) unfreezing changes that set.
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)
            self._ddp_net = compiled(self._ddp) if self.compile else self._ddp
            self._ddp_trainable = trainable
        return self._ddp_net  # type: ignore[return-value]

    def _evaluated(self) -> nn.Module:
        """The module validation runs (the average, or the model), under its own names."""
        return self.ema.module if self.ema is not None else unwrap(self.model, views=False)

    def _unfreeze_arg(self) -> str:
        if self.unfreeze_until is not None:
            return f"unfreeze_until={self.unfreeze_until}"
        return f"unfreeze_every={self.unfreeze_every}"

    def _open_stages(self, *, force: bool = False) -> bool:
        """Open the stages that gradual unfreezing has due now; return whether any opened.

        Called at the start of every epoch (``force``: the plan is applied again) and after
        every optimizer step; the time is the epoch or the step, as the plan counts.
        """
        plan = self._unfreezer
        if plan is None:
            return False
        time = self.epoch if plan.unit == "epoch" else self.step
        opened = plan.update(time, force=force)
        if opened and self.dist.is_main:
            log.info("after %d %ss: unfroze %s (LR %.2fx of its peak)", time, plan.unit,
                     ", ".join(opened), lr_scale(self.optimizer))
        return bool(opened)

    def _default_optimizer(self) -> torch.optim.Optimizer:
        return default_optimizer(self.model, self.lr, self.body_lr, weight_decay=self.weight_decay,
                                 layer_decay=self.layer_decay)

    def _schedule_steps(self, data: Iterable[Any], epochs: int) -> int | None:
        """Return the scheduler steps of ``epochs`` epochs of ``data`` (``None``: no len())."""
        n = data_len(data)
        if n is None:
            return None
        return schedule_steps(n, epochs, grad_accum=self.grad_accum,
                              interval=self.scheduler_interval)

    def _fit_schedule_to(self, data: Iterable[Any], epochs: int) -> None:
        """After a resume, end a restored warm-up + cosine schedule at this run's last step."""
        total = self._schedule_steps(data, epochs)
        if self.scheduler is None or total is None:
            return
        previous = stretch_schedule(self.scheduler, total)
        if previous is not None and self.dist.is_main:
            log.warning(
                "resume: the checkpoint's LR schedule ends at step %d, this run (epochs=%d) "
                "at step %d; the cosine now decays from step %d to %d",
                previous, epochs, total, self.scheduler.last_epoch, total,
            )

    def _setup_schedule(self, data: Iterable[Any], epochs: int) -> None:
        if not self._default_schedule or self.scheduler is not None:
            return
        total = self._schedule_steps(data, epochs)
        if total is None:
            log.warning("train data has no len(): constant LR (pass scheduler= to change it)")
            self._default_schedule = False
            return
        self.scheduler = warmup_cosine_scheduler(
            self.optimizer, total_steps=total, warmup=self.warmup
        )

    def _bar(self, total: int | None, initial: int) -> Any:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not (show and self.dist.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=f"epoch {self.epoch + 1}", leave=False)

    def _sigint_handler(self) -> contextlib.AbstractContextManager[None]:
        def request() -> None:
            self._sigint = True

        return sigint_requests_stop(request, lambda: self._sigint)

    # ----------------------------------------------------------------- bookkeeping
    def _check_monitor(self, has_val: bool, task: str | None) -> None:
        self.monitor = resolve_monitor(self._monitor_arg, self.topk, has_val=has_val, task=task)

    def _update_best(self, record: dict[str, Any]) -> None:
        done = self.scheduler.last_epoch + (self.scheduler_interval == "epoch") \
            if self.scheduler is not None else 0
        warmup = warming_up(self.scheduler, done)
        if warmup is not None:
            if record["epoch"] == 1 and self.dist.is_main:
                log.info("epochs that end within the LR warm-up (its first %d %ss) are not "
                         "candidates for the best epoch", warmup, self.scheduler_interval)
            return
        if update_best(self.best, record, monitor=self.monitor, patience=self.patience):
            self.should_stop = True
            if self.dist.is_main:
                log.info(
                    "early stopping: %s did not improve for %d epochs (best %.4g at epoch %d)",
                    self.monitor,
                    self.patience,
                    self.best["value"],
                    self.best["epoch"],
                )

    def _log_epoch(self, record: dict[str, Any], epochs: int) -> None:
        if self.dist.is_main:
            log.info(format_epoch(record, epochs))

    def _write_epoch_files(self, *, improved: bool) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        last = save_checkpoint(self.state_dict(), self.out_dir / "last.pt")
        if improved:
            atomic_write_bytes(self.out_dir / "best.pt", last.read_bytes())
        write_history(self.out_dir, self.history)

    def _save_interrupted(self) -> None:
        if not self.dist.is_main:
            return
        if self.out_dir is None:
            log.warning("interrupted at step %d; no out_dir, so no checkpoint", self.step)
            return
        path = save_checkpoint(self.state_dict(), self.out_dir / "last.pt")
        log.warning(
            "interrupted at epoch %d step %d; resume with fit(..., resume=%r)",
            self.epoch + 1,
            self.step,
            str(path),
        )

    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume, as tensors and plain values.

        ``"model"`` holds the tensors of the model without its ``torch.compile`` or DDP
        wrapper (their names have no ``_orig_mod.``/``module.`` prefix), so a checkpoint of
        a compiled run resumes into the plain model and the other way round.
        """
        mid_epoch = self.batch_in_epoch > 0
        return {
            "format": CHECKPOINT_FORMAT,
            "model": model_state(self.model),  # without torch.compile/DDP wrappers
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": get_rng_state(),
            "epoch_rng": self._epoch_rng if mid_epoch else None,
            "partial": self._partial.cpu() if mid_epoch and self._partial is not None else None,
            "freeze": freeze_record(self.model),
            "unfreeze": plan_record(self._unfreezer),
            "history": self.history,
            "best": dict(self.best),
            "seed": self.seed,
        }

    def _restore(self, resume: str | os.PathLike[str] | bool) -> None:
        if resume is True:
            if self.out_dir is None:
                raise ConfigError("resume=True needs out_dir; pass resume='path/to/last.pt'.")
            resume = self.out_dir / "last.pt"
        path = Path(resume)  # type: ignore[arg-type]
        state = read_state(path)
        self._best_file = path.parent / "best.pt"  # holds a best epoch that predates the resume
        load_into(
            state,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            path=path,
            ema=self.ema,
        )
        if state.get("seed", self.seed) != self.seed:
            warnings.warn(
                f"The checkpoint was trained with seed={state['seed']} but this Trainer has "
                f"seed={self.seed}, so the data order changes from here. HINT: pass "
                f"Trainer(..., seed={state['seed']}) for an exact resume.",
                stacklevel=3,
            )
        self.epoch, self.step = state["epoch"], state["step"]
        if self._unfreezer is not None:
            restored_plan(self._unfreezer, state.get("unfreeze"), verbose=self.dist.is_main)
        self.batch_in_epoch = state["batch_in_epoch"]
        self.history, self.best = list(state["history"]), dict(state["best"])
        if self.batch_in_epoch:
            self._resume = {
                "rng": state["rng"],
                "epoch_rng": state["epoch_rng"],
                "partial": state["partial"],
            }
        else:
            set_rng_state(state["rng"])
        if self.dist.is_main:
            log.info("resumed from %s at epoch %d, step %d", path, self.epoch + 1, self.step)

    def _check_data(self, data: Iterable[Any], split: str, task: str | None) -> FirstBatch:
        """Check the first batch before any training; return its class count and task."""
        return check_first_batch(
            self.model,
            data,
            split,
            to_device=self._inputs,
            autocast=self._autocast,
            allow_empty=split != "train" and self.dist.enabled,
            task=task,
        )


def _check_config(**values: Any) -> dict[str, Any]:
    """Check the Trainer's arguments (all but the model); return the normalised ones."""
    v = dict(values)
    for name in ("epochs", "grad_accum"):
        v[name] = _validate.positive_int(name, v[name])
    for name in ("patience", "unfreeze_every"):
        v[name] = _validate.optional_positive_int(name, v[name])
    if v["unfreeze_until"] is not None:
        v["unfreeze_until"] = check_unfreeze_until(v["unfreeze_until"], name="unfreeze_until")
        if v["unfreeze_every"] is not None:
            raise ConfigError(
                f"unfreeze_until={v['unfreeze_until']} (by optimizer step) cannot be combined "
                f"with unfreeze_every={v['unfreeze_every']} (by epoch): pass one of them."
            )
    _validate.rate("lr", v["lr"], allow_zero=False, example=1e-3)
    if v["body_lr"] is not None:
        _validate.rate("body_lr", v["body_lr"], allow_zero=False, example=1e-4)
    _validate.rate("lr_ratio", v["lr_ratio"], allow_zero=False, example=0.1)
    if v["layer_decay"] is not None:
        _validate.rate("layer_decay", v["layer_decay"], allow_zero=False, upper=1.0, example=0.7)
    _validate.rate("weight_decay", v["weight_decay"], example=0.05)
    _validate.probability("warmup", v["warmup"])
    if v["grad_clip"] is not None:
        _validate.rate("grad_clip", v["grad_clip"], allow_zero=False, example=1.0)
    _validate.choice("precision", v["precision"], PRECISION_DTYPES)
    _validate.choice("scheduler_interval", v["scheduler_interval"], ("step", "epoch"))
    topk = tuple(v["topk"]) if isinstance(v["topk"], Iterable) else ()
    if not topk or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1
                       for k in topk):
        raise ConfigError(f"topk must be positive integers, got {v['topk']!r}; e.g. topk=(1, 5).")
    v["topk"] = tuple(int(k) for k in topk)
    v.update(check_target_options(task=v["task"], label_smoothing=v["label_smoothing"],
                                  class_weights=v["class_weights"], threshold=v["threshold"],
                                  loss_fn=v["loss_fn"]))
    v["mixup"], v["cutmix"] = check_mix_alphas(v["mixup"], v["cutmix"])
    if v["penalty"] is not None and not callable(v["penalty"]):
        raise ConfigError(f"penalty must be a callable returning a scalar, e.g. "
                          f"L2SP(model), got {v['penalty']!r}.")
    _validate.flag("channels_last", v["channels_last"])
    for name in ("crop_kernels", "keep_memory"):
        if v[name] is not None:
            _validate.flag(name, v[name])
    _validate.flag("restore_best", v["restore_best"])
    _validate.flag("compile", v["compile"])
    v["ema"] = check_ema(v["ema"])
    try:
        select_device(v["device"])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"device={v['device']!r} is not a device: {exc}; e.g. 'cpu'.") from exc
    CallbackList(v["callbacks"])  # raises ConfigError on a bad callback
    return v


def check_trainer_args(*, has_val: bool | None = None, **kwargs: Any) -> None:
    """Check keyword arguments for :class:`Trainer` without building one (nothing changes).

    Args:
        has_val: Whether validation data will be passed to ``fit`` (to check ``monitor``);
            ``None`` skips that check.
        **kwargs: Trainer arguments (all but ``model``).

    Raises:
        ConfigError: An unknown argument (the closest one is named) or a bad value.

    Example:
        >>> check_trainer_args(epochs=2, lr=1e-3, monitor="val_acc", has_val=True)
    """
    params = inspect.signature(Trainer.__init__).parameters
    names = [n for n in params if n not in ("self", "model")]
    for key in kwargs:
        if key not in names:
            raise ConfigError(f"Trainer takes no argument {key!r}; it takes {sorted(names)}."
                              + closest(key, names))
    values = {**{n: params[n].default for n in names}, **kwargs}
    checked = _check_config(**values)
    if has_val is not None:
        resolve_monitor(checked["monitor"], checked["topk"], has_val=has_val,
                        task=checked["task"])
