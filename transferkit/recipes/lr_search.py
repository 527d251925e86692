"""``fine_tune(lr="find")``: the head LR of a phase found by :func:`~transferkit.train.lr_find`.

The sweep runs on exactly what the phase's Trainer is about to train: the same module (a
view on cached features or stages included), the same batches, freezing, layer decay,
loss (L2-SP included) and precision, with the body at the recipe's ratio to the head. It
runs at the start of the phase whose head LR ``lr`` sets: the linear probe of
``linear_probe``, the fine-tuning phase of every other recipe (after the probe for
``lp_ft``). For ``gradual``, whose stages open during the first quarter of the run, it
sweeps with every stage open, as most of the run trains.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from torch import nn

from transferkit import _validate
from transferkit.errors import ConfigError
from transferkit.recipes.budget import Choice
from transferkit.train.lr_finder import TRAINER_ARGS, LRFindResult, lr_find

__all__ = ["FIND", "check_lr", "find_phase_lr"]

log = logging.getLogger(__name__)

#: The value of ``fine_tune(lr=...)`` that asks for an LR sweep.
FIND = "find"


def check_lr(lr: object, body_lr: object) -> float | str | None:
    """Return ``lr`` checked: ``None``, :data:`FIND` or a positive rate.

    Raises:
        ConfigError: Any other value, or ``body_lr`` given with ``lr="find"`` (the body
            follows the found LR at the recipe's ratio).
    """
    if lr is None:
        return None
    if isinstance(lr, str):
        if lr != FIND:
            raise ConfigError(f"lr={lr!r} is not a number nor {FIND!r}; pass lr=1e-3, or "
                              f"lr={FIND!r} to find it with lr_find.")
        if body_lr is not None:
            raise ConfigError(f"lr={FIND!r} sets the body LR at the recipe's ratio to the found "
                              f"head LR; remove body_lr={body_lr!r} or pass a numeric lr.")
        return FIND
    return _validate.rate("lr", lr, allow_zero=False, example=1e-3)


def find_phase_lr(net: nn.Module, data: Iterable[Any], base: dict[str, Any],
                  ) -> tuple[dict[str, Any], LRFindResult, list[Choice]]:
    """Sweep the head LR of a phase; return its Trainer arguments with the found LRs.

    Args:
        net: What the phase's Trainer trains.
        data: Its training batches.
        base: Its Trainer arguments (``lr`` and ``body_lr`` at the recipe's ratio).

    Returns:
        The arguments with ``lr`` and ``body_lr`` replaced, the sweep, and the two choices
        to report.
    """
    ratio = base["body_lr"] / base["lr"]
    args = {k: base[k] for k in TRAINER_ARGS if k in base}
    if "unfreeze_until" in base or "unfreeze_every" in base:
        args["freeze"] = "none"  # gradual: sweep what most of the run trains
    result = lr_find(net, data, lr_ratio=ratio, **args)
    head = result.suggestion
    why = (f"lr_find, the {result.rule!r} rule of the smoothed loss over {len(result.lrs)} "
           f"steps from {result.lrs[0]:.2g} to {result.lrs[-1]:.2g}")
    choices = [Choice("lr", head, why)]
    if base["body_lr"] != base["lr"]:
        choices.append(Choice("body_lr", head * ratio, f"found head LR x {ratio:g}, the "
                                                       "recipe's ratio"))
    for choice in choices:
        log.info("chose %s", choice)
    return {**base, "lr": head, "body_lr": head * ratio}, result, choices
