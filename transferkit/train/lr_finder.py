"""The learning-rate finder: a short sweep of growing LRs, a suggested head LR, the model as it was.

:func:`lr_find` trains for ``num_steps`` optimizer steps while the head's LR grows
exponentially from ``start_lr`` to ``end_lr``, with the body at ``lr_ratio`` of it (the
Trainer's own default optimizer, :func:`~transferkit.train.optim.default_optimizer`, so the
groups are the ones training will use, layer-wise decay included), records the loss of
every step and smooths it (an exponential moving average with bias correction, as fastai's
``lr_find``). The sweep stops early when the smoothed loss exceeds ``diverge`` times its
best (4, as fastai) or becomes NaN. :func:`suggest_lr` then picks a head LR by a named rule:

- ``"valley"`` (fastai's default): the longest stretch over which the smoothed loss keeps
  falling (a longest decreasing subsequence), and the LR half-way along it;
- ``"steepest"``: the LR where the smoothed loss falls fastest per decade of LR.

The first tenth of the points and the last five are left out of the rule (as fastai), so
neither the noisy start nor the divergence decides. Afterwards the model is exactly as it
was: every parameter and buffer (BatchNorm running statistics too) bit for bit, on its
device and in its memory format, the gradients, ``requires_grad`` flags, train/eval modes
and freezing state (:func:`~transferkit.adaptation.freezing.freeze_state`), and the global
random generators (torch, NumPy, Python). The sweep runs in one process.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from transferkit import _validate
from transferkit.adaptation.core import unwrap
from transferkit.adaptation.freezing import freeze_state, load_freeze_state
from transferkit.errors import ConfigError, NonFiniteLossError, closest
from transferkit.train.batch_checks import set_data_epoch
from transferkit.train.callbacks import Callback
from transferkit.train.checkpoint import get_rng_state, set_rng_state
from transferkit.train.distributed import DistInfo, shard_for_training
from transferkit.train.trainer import Trainer, check_trainer_args

__all__ = ["RULES", "TRAINER_ARGS", "LRFindResult", "lr_find", "suggest_lr"]

log = logging.getLogger(__name__)

#: The suggestion rules :func:`suggest_lr` knows.
RULES = ("valley", "steepest")
_SKIP_END = 5  # points left out at the end (fastai's skip_end): the divergence itself


@dataclass(frozen=True)
class LRFindResult:
    """What :func:`lr_find` measured and suggests.

    Attributes:
        lrs: The head LR of every step taken.
        losses: The training loss of every step.
        smoothed: The smoothed loss of every step (what the rule reads).
        suggestion: The suggested head LR.
        rule: The rule that chose it (``"valley"`` or ``"steepest"``).
        lr_ratio: Every parameter group's LR as a multiple of the head's, by group name
            (the body's is ``lr_ratio`` of :func:`lr_find`, stage by stage with
            ``layer_decay``).
        diverged: Whether the sweep stopped early because the loss diverged.
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggestion: float
    rule: str
    lr_ratio: dict[str, float]
    diverged: bool

    def describe(self) -> str:
        """Return the one line that :func:`lr_find` logs."""
        end = (f"stopped at {self.lrs[-1]:.3g}: the loss diverged" if self.diverged
               else f"up to {self.lrs[-1]:.3g}")
        return (f"lr_find: suggested head LR {self.suggestion:.3g} by the {self.rule!r} rule "
                f"of the smoothed loss ({len(self.lrs)} steps from {self.lrs[0]:.3g} {end})")


def _valley(smoothed: list[float]) -> int:
    # lds[i]: length of the longest strictly decreasing subsequence ending at point i.
    n = len(smoothed)
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and lds[j] + 1 > lds[i]:
                lds[i] = lds[j] + 1
    end = max(range(n), key=lambda i: (lds[i], -i))  # the first longest valley
    start = max(0, end - lds[end] + 1)
    return (start + end) // 2


def _steepest(lrs: list[float], smoothed: list[float]) -> int:
    slopes = [(smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
              for i in range(len(lrs) - 1)]
    return min(range(len(slopes)), key=slopes.__getitem__)


def suggest_lr(
    lrs: Iterable[float], smoothed: Iterable[float], *, rule: str = "valley",
    skip_start: int = 0, skip_end: int = 0,
) -> float:
    """Return the LR that ``rule`` picks from a sweep's smoothed losses (see the module).

    Args:
        lrs: The LR of every point, increasing.
        smoothed: The smoothed loss of every point.
        rule: ``"valley"`` or ``"steepest"``.
        skip_start: Points left out at the start.
        skip_end: Points left out at the end.

    Raises:
        ConfigError: An unknown rule, lists of different lengths, or fewer than 3 points
            left to choose from.

    Example:
        >>> lrs = [10.0 ** (i / 2 - 5) for i in range(9)]       # 1e-5 ... 1e-1
        >>> losses = [2.0, 1.9, 1.6, 1.0, 0.5, 0.4, 0.45, 1.0, 3.0]
        >>> f"{suggest_lr(lrs, losses, rule='steepest'):.0e}"  # 1.6 -> 1.0: the largest drop
        '1e-04'
        >>> f"{suggest_lr(lrs, losses, rule='valley'):.0e}"    # middle of 2.0 ... 0.4
        '1e-04'
    """
    rule = _validate.choice("rule", rule, RULES)
    lrs_, losses_ = [float(v) for v in lrs], [float(v) for v in smoothed]
    if len(lrs_) != len(losses_):
        raise ConfigError(f"lrs and smoothed differ in length: {len(lrs_)} and {len(losses_)}.")
    lrs_, losses_ = lrs_[skip_start:len(lrs_) - skip_end], losses_[skip_start:len(losses_)
                                                                   - skip_end]
    finite = next((i for i, v in enumerate(losses_) if not math.isfinite(v)), len(losses_))
    lrs_, losses_ = lrs_[:finite], losses_[:finite]
    if len(lrs_) < 3:
        raise ConfigError(
            f"{len(lrs_)} finite point(s) left after leaving out {skip_start} at the start and "
            f"{skip_end} at the end; the {rule!r} rule needs at least 3. Sweep more steps "
            "(num_steps=100) or start lower (start_lr=1e-7).")
    index = _valley(losses_) if rule == "valley" else _steepest(lrs_, losses_)
    return lrs_[index]


class _Sweep:
    """``steps`` batches of ``data``, re-iterated epoch after epoch, until told to stop."""

    def __init__(self, data: Iterable[Any], steps: int) -> None:
        self.data, self.steps, self.stop = data, steps, False

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Any]:
        taken, epoch = 0, 0
        while taken < self.steps:
            set_data_epoch(self.data, epoch)
            before = taken
            for batch in self.data:
                if taken >= self.steps or self.stop:
                    return
                yield batch
                taken += 1
            if taken == before:  # the Trainer has checked the first batch: nothing more
                return
            epoch += 1


class _Recorder(Callback):
    """Record every step's loss and smooth it; stop the sweep when it diverges."""

    def __init__(self, sweep: _Sweep, lr_at: Callable[[int], float], *, beta: float,
                 diverge: float) -> None:
        self.sweep, self.lr_at, self.beta, self.diverge = sweep, lr_at, beta, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.average, self.best, self.diverged = 0.0, math.inf, False

    def add(self, step: int, loss: float) -> None:
        """Record the loss of optimizer step ``step`` (0-based)."""
        self.average = self.beta * self.average + (1 - self.beta) * loss
        value = self.average / (1 - self.beta ** (step + 1))
        self.lrs.append(self.lr_at(step))
        self.losses.append(loss)
        self.smoothed.append(value)
        self.best = min(self.best, value)
        if not math.isfinite(value) or value > self.diverge * self.best:
            self.diverged = self.sweep.stop = True

    def on_batch_end(self, trainer: Any) -> None:
        self.add(trainer.step - 1, trainer.last_loss)


@dataclass
class _Snapshot:
    """Everything of a model the sweep may change, copied; :meth:`restore` puts it back."""

    tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]]
    modes: list[tuple[nn.Module, bool]]
    freezing: dict
    rng: dict[str, Any]

    @classmethod
    def take(cls, model: nn.Module) -> _Snapshot:
        source = unwrap(model)
        tensors = []
        seen: set[int] = set()
        for module in (model, source):  # a view may hold tensors of its own
            for t in [*module.parameters(), *module.buffers()]:
                if id(t) in seen:
                    continue
                seen.add(id(t))
                grad = t.grad.detach().clone() if t.grad is not None else None
                tensors.append((t, t.detach().clone(), grad, t.requires_grad))
        modes = [(m, m.training) for root in (model, source) for m in root.modules()]
        return cls(tensors, modes, freeze_state(source), get_rng_state())

    def restore(self, model: nn.Module) -> None:
        source = unwrap(model)
        if freeze_state(source) != self.freezing:
            load_freeze_state(source, self.freezing)  # BatchNorm hooks back as they were
        with torch.no_grad():
            for tensor, saved, grad, requires_grad in self.tensors:
                tensor.data = saved  # the copy: original values, device and memory format
                tensor.grad = grad
                if tensor.is_leaf:
                    tensor.requires_grad_(requires_grad)
        for module, training in self.modes:
            module.training = training
        set_rng_state(self.rng)


#: The Trainer arguments lr_find passes on; it sets the others (LRs, length, schedule) itself.
TRAINER_ARGS = ("layer_decay", "weight_decay", "loss_fn", "device", "precision", "channels_last",
                "grad_clip", "grad_accum", "freeze", "seed")


def _check(start_lr: float, end_lr: float, num_steps: int, smoothing: float, diverge: float,
           trainer_kwargs: dict[str, Any]) -> None:
    _validate.rate("start_lr", start_lr, allow_zero=False, example=1e-7)
    _validate.rate("end_lr", end_lr, allow_zero=False, example=10.0)
    if end_lr <= start_lr:
        raise ConfigError(f"end_lr={end_lr!r} must be larger than start_lr={start_lr!r}; e.g. "
                          "start_lr=1e-7, end_lr=10.")
    _validate.integer("num_steps", num_steps, minimum=10, example=100)
    if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
        raise ConfigError(f"smoothing={smoothing!r} must lie in [0, 1); e.g. smoothing=0.98.")
    if not (isinstance(diverge, (int, float)) and diverge > 1):
        raise ConfigError(f"diverge={diverge!r} must be a number > 1; e.g. diverge=4.")
    for key in trainer_kwargs:
        if key not in TRAINER_ARGS:
            raise ConfigError(f"lr_find takes no argument {key!r}: it sets the LRs, the length "
                              f"and the schedule itself; of the Trainer's arguments it takes "
                              f"{', '.join(TRAINER_ARGS)}." + closest(key, TRAINER_ARGS))
    check_trainer_args(**trainer_kwargs)
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise ConfigError("lr_find runs in one process; run it before launching torchrun "
                          "(or in a plain `python` run) and pass its suggestion as lr=.")


def lr_find(
    model: nn.Module,
    train: Iterable[Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    lr_ratio: float = 0.1,
    rule: Literal["valley", "steepest"] = "valley",
    smoothing: float = 0.98,
    diverge: float = 4.0,
    **trainer_kwargs: Any,
) -> LRFindResult:
    """Sweep the head LR up exponentially for a few steps and suggest one (see the module).

    The model is trained by a :class:`~transferkit.train.trainer.Trainer` with its default
    optimizer (AdamW over ``param_groups``, the head at the swept LR, the body at
    ``lr_ratio`` of it), then restored exactly, whatever happens. The rule is named in the
    result and in the one log line.

    Args:
        model: The model, or a recipe's view of it (:mod:`transferkit.recipes.views`).
        train: Training batches, as for ``Trainer.fit`` (re-iterated if shorter than
            ``num_steps``).
        start_lr: The head LR of the first step.
        end_lr: The head LR of the last step.
        num_steps: Optimizer steps of the sweep (at least 10).
        lr_ratio: Body LR over head LR, as training will use it (``fine_tune`` passes the
            recipe's).
        rule: ``"valley"`` or ``"steepest"``.
        smoothing: The ``beta`` of the loss's moving average (fastai's 0.98).
        diverge: Stop when the smoothed loss exceeds ``diverge`` times its best.
        **trainer_kwargs: The Trainer arguments that shape the sweep as training
            (:data:`TRAINER_ARGS`): ``layer_decay``, ``weight_decay``, ``loss_fn``,
            ``device``, ``precision``, ``channels_last``, ``grad_clip``, ``grad_accum``,
            ``freeze`` (a policy applied for the sweep only, e.g. ``"body"`` for a linear
            probe) and ``seed`` (of the data order).

    Returns:
        An :class:`LRFindResult`: LRs, losses, smoothed losses, the suggestion and its rule.

    Raises:
        ConfigError: A bad argument (before anything changes), or too few steps before
            the loss diverged to apply the rule (start lower).
        DataError: The first batch of ``train`` is empty or malformed.

    Example:
        >>> import torch, transferkit
        >>> model = transferkit.create("resnet18", 2, in_chans=1, pretrained=False)
        >>> data = [(torch.randn(8, 1, 32, 32), torch.arange(8) % 2)] * 4
        >>> before = [t.clone() for t in model.state_dict().values()]
        >>> result = lr_find(model, data, num_steps=20, device="cpu")
        >>> result.rule, len(result.lrs) <= 20, result.lrs[0] <= result.suggestion <= 10
        ('valley', True, True)
        >>> all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
        True
    """
    _check(start_lr, end_lr, num_steps, smoothing, diverge, trainer_kwargs)
    rule = _validate.choice("rule", rule, RULES)
    lr_ratio = _validate.rate("lr_ratio", lr_ratio, allow_zero=False, example=0.1)

    def lr_at(step: int) -> float:
        return start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))

    snapshot = _Snapshot.take(model)
    trainer_log = logging.getLogger("transferkit.train.trainer")
    level = trainer_log.level
    trainer_log.setLevel(logging.WARNING)  # its epoch line would read as a training epoch
    try:
        # num_steps optimizer steps: grad_accum batches each.
        sweep = _Sweep(shard_for_training(train, DistInfo(), seed=trainer_kwargs.get("seed", 0)),
                       num_steps * trainer_kwargs.get("grad_accum", 1))
        recorder = _Recorder(sweep, lr_at, beta=smoothing, diverge=diverge)
        # The Trainer's own default optimizer, at LR multipliers: head 1, body lr_ratio.
        trainer = Trainer(model, epochs=1, lr=1.0, lr_ratio=lr_ratio, topk=(1,),
                          restore_best=False, callbacks=[recorder], progress=False,
                          **trainer_kwargs)
        ratio = {str(g.get("name", i)): float(g["lr"])
                 for i, g in enumerate(trainer.optimizer.param_groups)}
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lr_at)
        try:
            trainer.fit(sweep)
        except NonFiniteLossError:  # the step's loss is NaN or infinite: diverged
            recorder.add(trainer.step, math.inf)
    finally:
        trainer_log.setLevel(level)
        snapshot.restore(model)
    suggestion = suggest_lr(recorder.lrs, recorder.smoothed, rule=rule,
                            skip_start=num_steps // 10, skip_end=_SKIP_END)
    result = LRFindResult(lrs=tuple(recorder.lrs), losses=tuple(recorder.losses),
                          smoothed=tuple(recorder.smoothed), suggestion=suggestion, rule=rule,
                          lr_ratio=ratio, diverged=recorder.diverged)
    log.info(result.describe())
    return result
