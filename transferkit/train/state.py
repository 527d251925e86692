"""The Trainer's checkpoint format: what a resumable run saves, and how it is read back.

A Trainer checkpoint is a dict of tensors and plain values (``weights_only``-loadable,
see :mod:`transferkit.train.checkpoint`) tagged with :data:`CHECKPOINT_FORMAT`. This module
knows the format; the Trainer knows its own attributes.

Its ``model`` entry is the state of the module the Trainer trains without the wrappers that
only change how it runs (``torch.compile``, DDP: ``unwrap(model, views=False)``), so a run
compiled or not resumes either way. Resuming is all or nothing: :func:`read_state` and
:func:`load_into` check every entry, name and shape before anything changes.

An optional ``ema`` entry holds the average of a run with ``ema=``
(:meth:`~transferkit.train.ema.ModelEma.state_dict`, ``None`` without one); checkpoints
written before it existed lack it and load as ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit._state_dict import fitted
from transferkit.adaptation.core import unwrap
from transferkit.adaptation.freezing import check_freeze_state, freeze_state, load_freeze_state
from transferkit.errors import CheckpointError, ConfigError
from transferkit.train.checkpoint import get_rng_state, load_checkpoint, set_rng_state
from transferkit.train.ema import ModelEma, resume_ema

__all__ = ["CHECKPOINT_FORMAT", "freeze_record", "load_into", "model_state", "read_state"]

CHECKPOINT_FORMAT = "transferkit.trainer/1"
_ENTRIES = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "batch_in_epoch",
            "rng", "epoch_rng", "partial", "freeze", "history", "best")


def freeze_record(model: nn.Module) -> dict[str, Any]:
    """Return the model's freezing state to checkpoint (plain Python values)."""
    return freeze_state(model)


def model_state(model: nn.Module) -> dict[str, Any]:
    """Return the model's tensors to checkpoint: those of ``unwrap(model, views=False)``."""
    return unwrap(model, views=False).state_dict()


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Trainer checkpoint (on the CPU) and check its format and entries.

    Every entry the Trainer reads is checked here, the random generator states included
    (they are set and put back), so a resume fails before it changes anything.

    Raises:
        CheckpointError: The file cannot be read or is corrupt, is not a Trainer
            checkpoint, or lacks an entry or holds one of the wrong kind.
    """
    state = load_checkpoint(Path(path), map_location="cpu")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a Trainer checkpoint (format "
            f"{state.get('format')!r}, expected {CHECKPOINT_FORMAT!r})."
        )
    missing = [k for k in _ENTRIES if k not in state]
    kinds = {"model": dict, "optimizer": dict, "freeze": (dict, type(None)), "history": list,
             "best": dict, "epoch": int, "step": int, "batch_in_epoch": int,
             "ema": (dict, type(None))}  # "ema" is optional
    wrong = [k for k, kind in kinds.items() if k in state and not isinstance(state[k], kind)]
    if missing or wrong:
        raise CheckpointError(
            f"Trainer checkpoint {str(path)!r} is incomplete: "
            + (f"missing {missing}" if missing else f"entries {wrong} have the wrong type")
            + f". It was not written by this version of transferkit ({CHECKPOINT_FORMAT}); "
            "use another checkpoint or start without resume."
        )
    before = get_rng_state()
    try:
        set_rng_state(state["rng"])
        if state["batch_in_epoch"]:
            set_rng_state(state["epoch_rng"])
    except CheckpointError as exc:
        raise CheckpointError(f"Trainer checkpoint {str(path)!r}: {exc}") from exc
    finally:
        set_rng_state(before)
    return state


def load_into(
    state: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    scaler: Any | None,
    path: str | os.PathLike[str],
    ema: ModelEma | None = None,
) -> None:
    """Load a checkpoint's freezing state, weights, optimizer, scheduler and scaler state.

    All or nothing: the freezing state and every tensor name and shape of the model (and
    of its average, for a Trainer with ``ema``) are checked first; the optimizer,
    scheduler and scaler states are then loaded (each one's state is saved first, and a
    failure, even half-way through one of them, puts back every one loaded so far); the
    model's tensors, its average and freezing come last, once nothing can fail.

    Raises:
        CheckpointError: The checkpoint does not fit this model, average or optimizer; then
            the model, average, optimizer, scheduler, scaler and freezing state are as they
            were.
    """
    target = unwrap(model, views=False)
    fix = ("Nothing was loaded: resume with the model it was saved from (same architecture, "
           "num_classes and in_chans).")
    weights, problem = fitted(target, state["model"])
    if problem is not None:
        raise CheckpointError(f"Checkpoint {str(path)!r} does not fit this model: {problem}. {fix}")
    if state["freeze"] is not None:
        try:
            check_freeze_state(target, state["freeze"])
        except ConfigError as exc:
            raise CheckpointError(f"Checkpoint {str(path)!r}: {exc} {fix}") from exc
    load_ema = resume_ema(ema, state.get("ema"), path=path)
    # A load_state_dict can fail half-way (GradScaler, LambdaLR): save each part's state
    # before loading it, and put back every part touched. Loading replaces a part's state,
    # it never edits the saved tensors in place, so what was saved stays intact.
    parts = [(optimizer, state["optimizer"])]
    parts += [(p, state[k]) for p, k in ((scheduler, "scheduler"), (scaler, "scaler"))
              if p is not None and state[k] is not None]
    loaded: list[tuple[Any, dict[str, Any]]] = []
    try:
        for part, new in parts:
            loaded.append((part, part.state_dict()))  # before: a load can fail half-way
            part.load_state_dict(dict(new))
    except Exception as exc:  # noqa: BLE001  # optimizers and schedulers raise many types
        failed = type(loaded[-1][0]).__name__
        for done, previous in reversed(loaded):
            done.load_state_dict(previous)
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit this {failed} "
            f"({type(exc).__name__}: {exc}). Nothing was loaded: resume with the optimizer and "
            "scheduler of the run that wrote it (same parameter groups, same scheduler type)."
        ) from exc
    target.load_state_dict(weights, strict=True)
    load_ema()
    if state["freeze"] is not None:
        load_freeze_state(target, state["freeze"])
