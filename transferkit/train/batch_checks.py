"""The Trainer's contract with its data: first-batch checks, epochs and lengths.

The Trainer accepts any iterable of ``(inputs, targets)`` batches. Before it trains, it
checks the first batch (:func:`check_first_batch`) so that bad data fails with a message
that says how to fix it, before anything changes; every epoch it tells the data which
epoch it is (:func:`set_data_epoch`), so shuffling is a pure function of the epoch and a
run can resume mid-epoch.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from transferkit.adaptation.core import ModelView, get_info, recorded_info, unwrap
from transferkit.errors import DataError, TransferKitError
from transferkit.train.checkpoint import get_rng_state, set_rng_state
from transferkit.train.targets import check_targets

__all__ = ["FirstBatch", "check_first_batch", "data_len", "model_in_chans", "set_data_epoch"]


class FirstBatch(NamedTuple):
    """What the first batch told: the model's class count and the targets' task."""

    num_classes: int
    task: str | None  # None: no batch (an empty validation shard of a DDP rank)


def set_data_epoch(data: Any, epoch: int, *, start_batch: int = 0) -> int:
    """Select ``epoch`` on ``data`` (or its sampler); return the batches it will skip itself.

    Data modules expose ``set_epoch(epoch)`` (transferkit's loaders also take
    ``start_batch=`` to resume mid-epoch without replaying); DataLoaders via their sampler.
    """
    for obj in (
        data,
        getattr(data, "sampler", None),
        getattr(data, "batch_sampler", None),
        getattr(getattr(data, "batch_sampler", None), "sampler", None),
    ):
        if obj is not None and hasattr(obj, "set_epoch"):
            if start_batch and "start_batch" in inspect.signature(obj.set_epoch).parameters:
                obj.set_epoch(epoch, start_batch=start_batch)
                return start_batch
            obj.set_epoch(epoch)
            return 0
    return 0


def data_len(data: Any) -> int | None:
    """Return ``len(data)``, or ``None`` for an iterable without a length."""
    try:
        return len(data)
    except TypeError:
        return None


def check_first_batch(
    model: nn.Module,
    data: Iterable[Any],
    split: str,
    *,
    to_device: Callable[[torch.Tensor], torch.Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    allow_empty: bool = False,
    task: str | None = None,
) -> FirstBatch:
    """Check the first batch of ``data`` before any training; return its classes and task.

    Peeks at one batch without shifting any random stream, checks its structure, types,
    shapes and channel count, runs the model on two of its samples (in eval mode, no
    grad) and checks the targets against the model's outputs
    (:func:`~transferkit.train.targets.check_targets`: class indices, soft or multi-hot).

    Args:
        model: The model to train.
        data: The batches (re-iterable: the peeked batch is not consumed).
        split: ``"train"`` or ``"val"``, for the messages.
        to_device: Moves an input batch to the model's device and memory format.
        autocast: Returns the autocast context of the training precision.
        allow_empty: Return ``(0, None)`` for data without batches instead of raising (a
            DDP rank may hold no validation batch; the others count them all).
        task: The task the targets must fit; ``None`` infers it from them.

    Raises:
        DataError: The batch is missing or malformed, or does not fit the model.
    """
    rng = get_rng_state()  # peeking must not shift any random stream
    try:
        batch = next(iter(data), None)
    finally:
        set_rng_state(rng)
    if batch is None:
        if allow_empty:
            return FirstBatch(0, None)
        raise DataError(
            f"The {split} data is empty: it yielded no batch. Check the data "
            "set path and that batch_size <= the number of samples with drop_last."
        )
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError(
            f"The {split} data must yield (inputs, targets) batches; the first "
            f"batch is a {type(batch).__name__}. Use a DataLoader over a data "
            "set of (image, label) pairs, e.g. TensorDataset(images, labels)."
        )
    x, y = batch[0], batch[1]
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise DataError(
            f"The first {split} batch holds {type(x).__name__} inputs and "
            f"{type(y).__name__} targets; both must be tensors."
        )
    if x.dim() != 4 or not x.is_floating_point():
        raise DataError(
            f"The first {split} batch has inputs of shape {tuple(x.shape)} and "
            f"dtype {x.dtype}; expected floats of shape (batch, channels, "
            "height, width). Convert uint8 images with x.float() / 255 and "
            "normalise them; add a channel axis to (N, H, W) with x[:, None]."
        )
    if x.shape[0] == 0:
        raise DataError(
            f"The first {split} batch is empty (batch size 0); use batch_size >= 1."
        )
    if y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
        raise DataError(
            f"The first {split} batch has targets of shape {tuple(y.shape)} and "
            f"dtype {y.dtype} for {x.shape[0]} inputs; expected {x.shape[0]} "
            f"integer class indices, shape (batch,), or soft or multi-hot float targets, "
            f"shape (batch, num_classes)."
        )
    in_chans = model_in_chans(model)
    if in_chans is not None and x.shape[1] != in_chans:
        raise _channel_error(split, x.shape[1], in_chans)
    was_training = model.training
    model.eval()
    try:  # a 2-sample forward pass catches every other shape mismatch cheaply
        with torch.no_grad(), autocast():
            out = model(to_device(x[:2]))
    except RuntimeError as exc:
        model.train(was_training)
        if in_chans is None:  # only now is discovering the input layer worth a forward pass
            try:
                found = int(get_info(model).in_chans)
            except TransferKitError:
                found = x.shape[1]
            if found != x.shape[1]:
                raise _channel_error(split, x.shape[1], found) from exc
        raise DataError(
            f"The model cannot run on the first {split} batch (inputs of shape "
            f"{tuple(x.shape)}): {exc}"
        ) from exc
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise DataError(
            f"The model returns outputs of shape {tuple(out.shape)} for "
            f"{split} inputs of shape {tuple(x[:2].shape)}; expected "
            "(batch, num_classes) logits."
        )
    num_classes = out.shape[1]
    return FirstBatch(num_classes, check_targets(y, num_classes=num_classes, task=task,
                                                 split=split))


def _channel_error(split: str, got: int, expected: int) -> DataError:
    return DataError(
        f"The {split} images have {got} channels but the model's input layer expects "
        f"{expected}. Adapt the model with adapt(model, num_classes, in_chans={got}) or "
        f"convert the images to {expected} channels."
    )


def model_in_chans(model: nn.Module) -> int | None:
    """Return the channels ``model`` takes, or ``None`` if unknown.

    A :class:`~transferkit.adaptation.core.ModelView` says it itself; an adapted model has it
    in its :class:`~transferkit.adaptation.core.AdaptInfo`. Nothing is discovered (no dummy
    forward pass): other models get the two-sample forward check only.
    """
    inner = unwrap(model, views=False)  # a compiled or DDP view says it too
    if isinstance(inner, ModelView):
        return inner.input_channels
    info = recorded_info(inner)
    return None if info is None else int(info.in_chans)
