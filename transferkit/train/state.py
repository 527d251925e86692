"""The Trainer's checkpoint format: what a resumable run saves, and how it is read back.

A Trainer checkpoint is a dict of tensors and plain values (``weights_only``-loadable,
see :mod:`transferkit.train.checkpoint`) tagged with :data:`CHECKPOINT_FORMAT`. This module
knows the format; the Trainer knows its own attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.adaptation.freezing import freeze_state, load_freeze_state
from transferkit.errors import CheckpointError
from transferkit.train.checkpoint import load_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "freeze_record", "load_into", "read_state"]

CHECKPOINT_FORMAT = "transferkit.trainer/1"


def freeze_record(model: nn.Module) -> dict[str, Any]:
    """Return the model's freezing state to checkpoint (plain Python values)."""
    return freeze_state(model)


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Trainer checkpoint (on the CPU) and check its format.

    Raises:
        CheckpointError: The file cannot be read, or is not a Trainer checkpoint.
    """
    state = load_checkpoint(Path(path), map_location="cpu")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a Trainer checkpoint (format "
            f"{state.get('format')!r}, expected {CHECKPOINT_FORMAT!r})."
        )
    return state


def load_into(
    state: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    scaler: Any | None,
    path: str | os.PathLike[str],
) -> None:
    """Load a checkpoint's freezing state, weights, optimizer, scheduler and scaler state.

    Raises:
        CheckpointError: The checkpoint does not fit this model or optimizer.
    """
    try:
        if state["freeze"] is not None:
            load_freeze_state(model, state["freeze"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit this model or optimizer: {exc}"
        ) from exc
