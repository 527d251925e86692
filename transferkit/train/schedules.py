"""Learning-rate schedules as pure functions of the optimizer step.

The default schedule of the :class:`~transferkit.train.trainer.Trainer` is a linear warm-up
followed by a cosine decay, applied through ``LambdaLR`` as a *multiplier*, so every
parameter group keeps its own LR ratio (discriminative learning rates survive it).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "WarmupCosine",
    "stretch_schedule",
    "warming_up",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]


def warmup_cosine(
    step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """Return the LR multiplier at ``step``: linear warm-up, then cosine decay.

    A pure function of the step, used through ``LambdaLR`` so that every parameter group
    keeps its own LR ratio (discriminative learning rates survive the schedule).

    Args:
        step: Optimizer steps taken so far.
        warmup_steps: Steps of linear warm-up from ``1 / warmup_steps`` to 1.
        total_steps: Step at which the multiplier reaches ``min_ratio``.
        min_ratio: The final multiplier.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Callable form of :func:`warmup_cosine` for ``LambdaLR`` (its state is checkpointed)."""

    def __init__(self, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(
            step,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            min_ratio=self.min_ratio,
        )


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Build the Trainer's default ``LambdaLR``: ``warmup`` of ``total_steps``, then cosine.

    Args:
        optimizer: The optimizer whose groups' LRs are scaled.
        total_steps: Optimizer steps of the whole run.
        warmup: Fraction of ``total_steps`` spent in linear warm-up (at least one step).
    """
    schedule = WarmupCosine(warmup_steps=max(1, round(warmup * total_steps)),
                            total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def stretch_schedule(scheduler: object, total_steps: int) -> int | None:
    """End a warm-up + cosine ``LambdaLR`` at ``total_steps``, keeping the steps taken.

    A checkpoint carries its schedule's length, so a run resumed with more epochs would
    otherwise train its extra epochs at the first run's final multiplier (zero). The
    warm-up is not repeated; the cosine continues from the current step to the new end,
    and the optimizer's LRs are set for the current step at once.

    Args:
        scheduler: Any scheduler; only a ``LambdaLR`` whose multipliers are all
            :class:`WarmupCosine` is changed.
        total_steps: The new length, in the scheduler's steps.

    Returns:
        The previous length if the schedule was changed, else ``None``.
    """
    fns = _warmup_cosines(scheduler)
    if fns is None or not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return None
    previous = fns[0].total_steps
    if all(fn.total_steps == total_steps for fn in fns):
        return None
    step = scheduler.last_epoch
    groups = scheduler.optimizer.param_groups
    for fn, group, base in zip(fns, groups, scheduler.base_lrs, strict=True):
        fn.total_steps = total_steps
        group["lr"] = base * fn(step)
    scheduler._last_lr = [group["lr"] for group in groups]  # what get_last_lr() returns
    return previous


def warming_up(scheduler: object, steps_done: int) -> int | None:
    """Return the warm-up's length if ``steps_done`` steps all fall within it, else ``None``.

    Only a warm-up + cosine ``LambdaLR`` (the Trainer's default schedule) has a warm-up
    that is known; the run's last step never counts as warming up, so a run always has an
    epoch after it (a warm-up as long as the run is at most one step).

    Args:
        scheduler: Any scheduler.
        steps_done: The scheduler steps taken so far.
    """
    fns = _warmup_cosines(scheduler)
    if fns is None:
        return None
    warmup = max(fn.warmup_steps for fn in fns)
    return warmup if steps_done <= warmup and steps_done < min(fn.total_steps for fn in fns) \
        else None


def _warmup_cosines(scheduler: object) -> list[WarmupCosine] | None:
    """The multipliers of a ``LambdaLR`` whose every one is a :class:`WarmupCosine`."""
    fns = getattr(scheduler, "lr_lambdas", None)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) or not fns:
        return None
    if not all(isinstance(fn, WarmupCosine) for fn in fns):
        return None
    return list(fns)
