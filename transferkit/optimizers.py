"""The Trainer's default optimizer: AdamW over discriminative parameter groups.

The head trains at ``lr`` and the body at ``body_lr`` (see
:func:`transferkit.param_groups.param_groups`); a model without a recognisable head gets
one group at ``lr``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from transferkit.errors import TransferKitError

__all__ = ["default_optimizer"]

log = logging.getLogger(__name__)


def default_optimizer(
    model: nn.Module, lr: float, body_lr: float, *, weight_decay: float
) -> torch.optim.Optimizer:
    """Build AdamW with the head at ``lr`` and the body at ``body_lr``.

    Frozen parameters are included (with no gradient they are skipped by AdamW), so that
    gradual unfreezing trains them later without rebuilding the optimizer. Biases and
    norm parameters get no weight decay.

    Args:
        model: The model to optimise.
        lr: Learning rate of the head (of everything when no head is recognised).
        body_lr: Learning rate of the rest.
        weight_decay: AdamW weight decay of the decayed parameters.
    """
    from transferkit.param_groups import param_groups

    try:
        groups = param_groups(model, lr, body_lr, weight_decay=weight_decay, include_frozen=True)
    except TransferKitError as exc:  # e.g. no recognisable head: one group for all
        log.info("one parameter group at lr=%g (%s)", lr, exc)
        groups = [
            {
                "params": list(model.parameters()),
                "lr": lr,
                "weight_decay": weight_decay,
                "name": "all",
            }
        ]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
