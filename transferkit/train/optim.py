"""The Trainer's default optimizer and the length of its schedule, for every caller.

The head trains at ``lr`` and the body at ``body_lr`` (see
:func:`~transferkit.adaptation.groups.param_groups`, optionally with layer-wise decay); a
model without a recognisable head gets one group at ``lr``. :func:`schedule_steps` counts
the scheduler steps of a run the same way for a new run and for a resumed one. Recipes
never build their own: they pass ``lr``, ``body_lr`` and ``layer_decay`` to the Trainer.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from transferkit.adaptation.core import unwrap
from transferkit.adaptation.groups import no_weight_decay_names, param_groups
from transferkit.errors import HeadNotFoundError, TransferKitError

__all__ = ["default_optimizer", "head_body_lrs", "schedule_steps"]

log = logging.getLogger(__name__)


def default_optimizer(
    model: nn.Module,
    lr: float,
    body_lr: float,
    *,
    weight_decay: float,
    layer_decay: float | None = None,
) -> torch.optim.Optimizer:
    """Build AdamW with the head at ``lr`` and the body at ``body_lr``.

    Frozen parameters are included (with no gradient they are skipped by AdamW), so that
    gradual unfreezing trains them later without rebuilding the optimizer. Biases, norm
    parameters and what the model's ``no_weight_decay()`` names get no weight decay (see
    :func:`~transferkit.adaptation.groups.no_weight_decay_names`), with or without a head.

    Args:
        model: The model to optimise (a view trains its source model's parameters).
        lr: Learning rate of the head (of everything when no head is recognised).
        body_lr: Learning rate of the rest (of the last stage with ``layer_decay``).
        weight_decay: AdamW weight decay of the decayed parameters.
        layer_decay: Per-stage LR multiplier counted back from the head (``None``: off).
    """
    # Read before the fallback below, so that a bad no_weight_decay() is never swallowed.
    exempt = no_weight_decay_names(model) if weight_decay else frozenset()
    try:
        groups = param_groups(model, lr, body_lr, weight_decay=weight_decay,
                              layer_decay=layer_decay, include_frozen=True)
        # A backbone without a classifier has no heads (get_info: heads == ()), and
        # param_groups puts every parameter in the body, at body_lr.
        heads = any(str(g.get("name", "")).split("/")[0] == "head" for g in groups)
        why = None if heads else "the model has no recognisable head"
    except TransferKitError as exc:
        if layer_decay is not None:
            raise
        why = str(exc)
    if why is not None:
        if layer_decay is not None:
            raise HeadNotFoundError(f"layer_decay={layer_decay} counts stages back from the "
                                    f"head, but {why}; adapt the model first "
                                    "(transferkit.adapt(model, num_classes)).")
        log.info("one learning rate for all parameters, lr=%g (%s)", lr, why)
        named = list(unwrap(model).named_parameters())
        split = {
            "all": [p for n, p in named if n not in exempt],
            "all/no_decay": [p for n, p in named if n in exempt],
        }
        groups = [
            {"params": params, "lr": lr, "weight_decay": 0.0 if "/" in key else weight_decay,
             "name": key}
            for key, params in split.items()
            if params
        ]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def schedule_steps(batches: int, epochs: int, *, grad_accum: int, interval: str) -> int:
    """Return the scheduler steps of ``epochs`` epochs of ``batches`` batches each.

    Args:
        batches: Batches per epoch.
        epochs: Epochs of the whole run.
        grad_accum: Micro-batches per optimizer step.
        interval: ``"step"`` (one scheduler step per optimizer step) or ``"epoch"``.
    """
    per_epoch = math.ceil(batches / grad_accum) if interval == "step" else 1
    return epochs * per_epoch


def head_body_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Return the head's LR as ``lr`` and the body's as ``body_lr`` when it trains at its own.

    Groups named by ``param_groups`` say which is the head; a user's own optimizer's
    first group is reported as ``lr``. A frozen body (a linear probe) has no ``body_lr``.
    With layer-wise decay, ``body_lr`` is the LR of the stage next to the head.

    Example:
        >>> from torch import nn
        >>> opt = default_optimizer(nn.Linear(2, 2), 0.1, 0.01, weight_decay=0.0)
        >>> head_body_lrs(opt)     # no recognisable head: one LR
        {'lr': 0.1}
    """
    groups = optimizer.param_groups
    role = [str(g.get("name", "")).split("/")[0] for g in groups]  # "head/no_decay"...
    head = [g for g, r in zip(groups, role) if r == "head"]
    body = [g for g, r in zip(groups, role) if r not in ("", "head")
            and any(p.requires_grad for p in g["params"])]
    lrs = {"lr": float((head or groups)[0]["lr"])}
    if head and body:
        lrs["body_lr"] = float(body[-1]["lr"])  # the stage next to the head (llrd)
    return lrs
