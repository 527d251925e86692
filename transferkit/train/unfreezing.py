"""The Trainer's gradual unfreezing: the plan of a run, its log lines, and resuming it.

``Trainer(unfreeze_every=k)`` opens one stage every ``k`` epochs; ``unfreeze_until=f``
opens them by optimizer step, evenly, all of them after ``f`` of the run
(:func:`~transferkit.adaptation.freezing.unfreeze_steps`), so that every stage opens
while the warm-up + cosine LR is still high. A plan is a
:class:`~transferkit.adaptation.freezing.GradualUnfreezing`: which stages train is a pure
function of the epoch or step, and a checkpoint stores when each stage opens.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from transferkit.adaptation.core import get_info
from transferkit.adaptation.freezing import GradualUnfreezing, freeze_state, unfreeze_steps
from transferkit.train.optim import schedule_steps

__all__ = ["lr_scale", "plan_record", "restored_plan", "unfreezing_plan"]

log = logging.getLogger(__name__)


def unfreezing_plan(model: nn.Module, *, every: int | None, until: float | None,
                    batches: int, epochs: int, grad_accum: int,
                    verbose: bool = True) -> GradualUnfreezing:
    """Return the run's plan, with the model's BatchNorm mode; log when each stage opens.

    Args:
        model: The model being trained.
        every: Epochs between two openings (``Trainer(unfreeze_every=)``), or ``None``.
        until: Fraction of the optimizer steps after which every stage is open
            (``Trainer(unfreeze_until=)``); used when ``every`` is ``None``.
        batches: Batches per epoch (to count the optimizer steps).
        epochs: Epochs of the run.
        grad_accum: Micro-batches per optimizer step.
        verbose: Log the plan, and warn about stages that would never train.
    """
    bn = freeze_state(model)["bn"]
    if until is None:
        plan, end, arg = GradualUnfreezing(model, every=every, bn=bn), epochs, f"every={every}"
    else:
        end = schedule_steps(batches, epochs, grad_accum=grad_accum, interval="step")
        steps = unfreeze_steps(len(get_info(model).stages), end, until=until)
        plan, arg = GradualUnfreezing(model, steps=steps, bn=bn), f"until={until}"
    if verbose:
        names = [s.name for s in reversed(get_info(model).stages)]
        log.info("unfreeze_%s: each stage opens after this many %ss of %d: %s", arg, plan.unit,
                 end, ", ".join(f"{n} {t}" for n, t in zip(names, plan.at, strict=True)))
        late = [n for n, t in zip(names, plan.at, strict=True) if t >= end]
        if late:
            log.warning("unfreeze_%s: %d of %d stages never train in this run of %d %ss: %s",
                        arg, len(late), len(names), end, plan.unit, ", ".join(late))
    return plan


def plan_record(plan: GradualUnfreezing | None) -> dict[str, Any] | None:
    """Return what a checkpoint stores of the plan: its unit and when each stage opens."""
    return None if plan is None else {"unit": plan.unit, "at": list(plan.at)}


def restored_plan(plan: GradualUnfreezing, saved: dict[str, Any] | None, *,
                  verbose: bool = True) -> None:
    """Give ``plan`` the checkpoint's opening times, so that no open stage closes again.

    A run resumed with more epochs would compute later openings than the checkpoint's; the
    checkpoint's keep the state a pure function of the step. A plan of another unit, or of
    another stage count, is left as it is.
    """
    if not saved or saved.get("unit") != plan.unit:
        return
    at = tuple(int(t) for t in saved["at"])
    if len(at) == len(plan.at) and at != plan.at:
        if verbose:
            log.info("resume: stages open at the checkpoint's %ss %s (this run's plan: %s)",
                     plan.unit, ", ".join(map(str, at)), ", ".join(map(str, plan.at)))
        plan.at = at


def lr_scale(optimizer: torch.optim.Optimizer) -> float:
    """Return the first group's LR as a multiple of its initial LR (1.0 without a scheduler)."""
    group = optimizer.param_groups[0]
    return float(group["lr"] / group.get("initial_lr", group["lr"]))
