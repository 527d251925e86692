"""What a target batch means: the task, its loss, and class weights from the data.

The Trainer takes three kinds of targets, told apart by their shape and values:

- **class indices**: an integer ``(N,)`` tensor, one class per sample (single-label);
- **soft targets**: a float ``(N, C)`` tensor whose rows are probabilities summing to 1
  (mixup, cutmix, label smoothing done in the data, distillation): single-label;
- **multi-hot targets**: a float ``(N, C)`` tensor of 0s and 1s, any number of 1s per
  row (multi-label data); per-class probabilities in ``[0, 1]`` with ``task="multi_label"``.

The rule (:func:`check_targets`) never guesses: a float row that is exactly one-hot is
both a soft target and a multi-hot one, so a first batch made only of such rows is an
error that asks for ``task=``; so is a row of probabilities that does not sum to 1
without ``task="multi_label"``. The task picks the loss (:func:`task_loss`):
cross-entropy for single-label (class indices or probabilities), BCE-with-logits for
multi-label, both with optional label smoothing and class weights; and the metrics
(top-k accuracy, or mAP and F1 at a threshold, see :mod:`transferkit.train.metrics`).

``class_weights="balanced"`` weighs each class by its inverse frequency in the training
labels (:func:`balanced_weights`, scikit-learn's rule), counted without iterating the data
when the loader holds its labels (:func:`label_counts`).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from transferkit import _validate
from transferkit.errors import ConfigError, DataError
from transferkit.train.checkpoint import get_rng_state, set_rng_state
from transferkit.train.distributed import DistInfo, all_reduce_sum

__all__ = [
    "TASKS",
    "MultiLabelLoss",
    "SingleLabelLoss",
    "Task",
    "balanced_weights",
    "check_same_task",
    "check_target_options",
    "check_targets",
    "class_weights_for",
    "label_counts",
    "task_loss",
]

log = logging.getLogger(__name__)

Task = Literal["single_label", "multi_label"]
#: The tasks a Trainer trains: one class per sample, or any number of classes per sample.
TASKS: tuple[str, ...] = ("single_label", "multi_label")
_SUM_TOLERANCE = 1e-3  # rows of float32 probabilities sum to 1 within this


def check_target_options(
    *,
    task: str | None,
    label_smoothing: float,
    class_weights: str | Sequence[float] | torch.Tensor | None,
    threshold: float,
    loss_fn: object,
) -> dict[str, Any]:
    """Check the Trainer's target options; return them normalised (nothing is built).

    Raises:
        ConfigError: An unknown task, a smoothing outside ``[0, 1)``, class weights that
            are neither ``"balanced"`` nor positive numbers, a threshold outside ``(0, 1)``,
            or smoothing/class weights together with a ``loss_fn`` of your own (they
            configure the default loss only).
    """
    if task is not None:
        _validate.choice("task", task, TASKS)
    eps = _validate.rate("label_smoothing", label_smoothing, example=0.1)
    if eps >= 1:
        raise ConfigError(f"label_smoothing must be below 1, got {label_smoothing!r}; "
                          "e.g. label_smoothing=0.1.")
    thr = _validate.rate("threshold", threshold, allow_zero=False, upper=1.0, example=0.5)
    if thr >= 1:
        raise ConfigError(f"threshold must lie in (0, 1), got {threshold!r}; e.g. "
                          "threshold=0.5.")
    weights = _check_class_weights(class_weights)
    if loss_fn is not None and (eps > 0 or weights is not None):
        given = "label_smoothing" if eps > 0 else "class_weights"
        raise ConfigError(
            f"{given} configures the default loss, but loss_fn={loss_fn!r} was given too. "
            f"Build them into your loss (e.g. nn.CrossEntropyLoss(label_smoothing=0.1)) or "
            f"leave loss_fn=None.")
    return {"task": task, "label_smoothing": eps, "class_weights": weights, "threshold": thr}


def _check_class_weights(value: object) -> str | tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value == "balanced":
            return value
        raise ConfigError(f"class_weights={value!r} is not valid; use 'balanced' (inverse "
                          "class frequency) or one positive weight per class, e.g. [1.0, 3.0].")
    items = value.tolist() if isinstance(value, torch.Tensor) else value
    ok = isinstance(items, Iterable)
    numbers_ = list(items) if ok else []  # type: ignore[arg-type]
    if not numbers_ or not all(
        isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w > 0
        for w in numbers_
    ):
        raise ConfigError(f"class_weights={value!r} must be 'balanced' or one positive, finite "
                          "weight per class, e.g. class_weights=[1.0, 3.0].")
    return tuple(float(w) for w in numbers_)


def check_targets(
    targets: torch.Tensor, *, num_classes: int, task: str | None = None, split: str = "train"
) -> str:
    """Check a batch of targets against the model's ``num_classes``; return its task.

    Args:
        targets: ``(N,)`` class indices, or ``(N, C)`` soft or multi-hot float targets.
        num_classes: The model's number of outputs ``C``.
        task: ``"single_label"`` or ``"multi_label"`` when known; ``None`` infers it by
            the rule of the module (an all one-hot batch is ambiguous: an error).
        split: For the messages.

    Returns:
        ``"single_label"`` or ``"multi_label"``.

    Raises:
        DataError: Malformed targets (shape, dtype, range, rows that are not
            probabilities), targets that contradict ``task``, or an ambiguous batch.

    Example:
        >>> check_targets(torch.tensor([0, 2]), num_classes=3)
        'single_label'
        >>> check_targets(torch.tensor([[0.7, 0.3, 0.0]]), num_classes=3)
        'single_label'
        >>> check_targets(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), num_classes=3)
        'multi_label'
    """
    n = targets.shape[0] if targets.dim() else 0
    if targets.dim() == 1 and not targets.is_floating_point() and targets.dtype != torch.bool:
        if task == "multi_label":
            raise DataError(
                f"task='multi_label' needs (batch, {num_classes}) multi-hot float targets, "
                f"but the {split} targets are class indices of shape {tuple(targets.shape)}. "
                f"Pass task='single_label', or targets like torch.nn.functional.one_hot(y, "
                f"{num_classes}).float() with several 1s per row.")
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise DataError(
                f"The {split} labels include {bad}, outside the model's {num_classes} classes "
                f"[0, {num_classes - 1}]. Adapt the model with adapt(model, num_classes="
                f"{max(high + 1, num_classes)}) or fix the labels.")
        return "single_label"
    if targets.dim() != 2 or not targets.is_floating_point():
        raise DataError(
            f"The first {split} batch has targets of shape {tuple(targets.shape)} and dtype "
            f"{targets.dtype}; expected integer class indices of shape (batch,), or float "
            f"soft or multi-hot targets of shape (batch, {num_classes}) (convert 0/1 "
            "integer or bool targets with y.float()).")
    if targets.shape[1] != num_classes:
        raise DataError(
            f"The {split} targets have {targets.shape[1]} columns but the model has "
            f"{num_classes} outputs; (batch, num_classes) targets need one column per class. "
            f"Adapt the model with adapt(model, num_classes={targets.shape[1]}) or fix them.")
    y = targets.detach().float()
    if not bool(torch.isfinite(y).all()) or float(y.min()) < 0 or float(y.max()) > 1:
        raise DataError(
            f"The {split} targets hold values outside [0, 1] (min {float(y.min()):g}, max "
            f"{float(y.max()):g}); soft and multi-hot targets are probabilities. Fix them.")
    sums = y.sum(1)
    off = (sums - 1).abs() > _SUM_TOLERANCE
    binary = bool(((y == 0) | (y == 1)).all())
    if task == "multi_label":
        return "multi_label"
    if task == "single_label" or not binary:
        if bool(off.any()):
            row = int(off.nonzero()[0])
            hint = ("" if task == "single_label" else
                    " For multi-label per-class probabilities pass task='multi_label'.")
            raise DataError(
                f"The {split} targets are soft (single-label) targets, whose rows must sum to "
                f"1, but row {row} sums to {float(sums[row]):.4g}.{hint}")
        return "single_label"
    if bool(off.any()):
        return "multi_label"  # 0/1 values, some row with more or fewer than one 1
    raise DataError(
        f"The first {split} batch of (batch, {num_classes}) targets is ambiguous: every row "
        f"({n}) holds exactly one 1, so they are both one-hot soft targets (single-label) "
        "and multi-hot targets (multi-label). Pass task='single_label' or "
        "task='multi_label' to the Trainer (or fine_tune).")


def check_same_task(task: str, info: DistInfo, device: torch.device) -> None:
    """Under DDP, raise on every rank unless every rank found the same task.

    Raises:
        DataError: The ranks' first batches imply different tasks.
    """
    if not info.enabled:
        return
    flag = torch.tensor([float(task == "multi_label")], device=device)
    total = int(all_reduce_sum(flag, info).item())
    if total not in (0, info.world_size):
        raise DataError(
            f"The ranks disagree on the task: {total} of {info.world_size} first train "
            "batches look multi-label, the others single-label. Pass task= to the Trainer.")


class SingleLabelLoss(nn.Module):
    """Cross-entropy for class indices or probabilities, with smoothing and class weights.

    With class weights, class indices are compared as one-hot probabilities so that the
    loss is ``sum_c w_c * y_c * -log p_c`` averaged over the samples in every case (torch's
    weighted cross-entropy divides by the summed weights for indices only, which would
    change the loss scale between mixed and plain batches).

    Args:
        label_smoothing: Mix the targets with the uniform distribution (torch's rule).
        weight: One weight per class, or ``None``.

    Example:
        >>> loss = SingleLabelLoss(label_smoothing=0.1)
        >>> round(loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).item(), 4)
        0.2269
    """

    def __init__(self, *, label_smoothing: float = 0.0,
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean loss of the batch."""
        if targets.dim() == 1 and self.weight is not None:
            targets = F.one_hot(targets, logits.shape[1])
        if targets.dim() == 2:
            targets = targets.float()
        return F.cross_entropy(logits.float(), targets, weight=self.weight,
                               label_smoothing=self.label_smoothing)


class MultiLabelLoss(nn.Module):
    """BCE-with-logits over every class, with smoothing toward 0.5 and positive weights.

    Label smoothing ``eps`` maps each target ``y`` to ``y * (1 - eps) + eps / 2`` (Keras'
    and timm's multi-label rule). ``pos_weight`` multiplies the loss of the positives of
    each class (torch's ``BCEWithLogitsLoss``).

    Example:
        >>> loss = MultiLabelLoss()
        >>> round(loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item(), 4)
        0.6931
    """

    def __init__(self, *, label_smoothing: float = 0.0,
                 pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean loss over samples and classes."""
        y = targets.float()
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=self.pos_weight)


def task_loss(task: str, *, label_smoothing: float = 0.0,
              weight: torch.Tensor | None = None) -> nn.Module:
    """Return the default loss of ``task``: :class:`SingleLabelLoss` or :class:`MultiLabelLoss`.

    Args:
        task: ``"single_label"`` or ``"multi_label"``.
        label_smoothing: See the two losses.
        weight: Class weights (single-label) or positive weights (multi-label).

    Example:
        >>> task_loss("multi_label")
        MultiLabelLoss()
    """
    if _validate.choice("task", task, TASKS) == "multi_label":
        return MultiLabelLoss(label_smoothing=label_smoothing, pos_weight=weight)
    return SingleLabelLoss(label_smoothing=label_smoothing, weight=weight)


def _stored_labels(data: Any) -> torch.Tensor | None:
    """Every label of ``data`` without reading its inputs, when the loader holds them."""
    labels = getattr(data, "labels", None)  # TensorLoader, FeatureLoader
    dataset = getattr(data, "dataset", None)
    if labels is None and dataset is not None:
        labels = getattr(dataset, "targets", None)  # torchvision data sets
        tensors = getattr(dataset, "tensors", None)  # TensorDataset
        if labels is None and isinstance(tensors, tuple) and len(tensors) >= 2:
            labels = tensors[1]
    if labels is None:
        return None
    try:
        return torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        return None


def label_counts(data: Iterable[Any], *, num_classes: int, task: str) -> tuple[torch.Tensor, int]:
    """Count each class in the labels of ``data``; return ``(counts, samples)``.

    The labels are read from the loader when it holds them (a ``TensorLoader``, cached
    features, a DataLoader over a torchvision data set or a ``TensorDataset``: the whole
    data set, whatever the sampler draws); otherwise ``data`` is iterated once, without
    shifting any random stream. Soft targets count their probability mass; multi-label
    targets count their positives (``>= 0.5``).

    Example:
        >>> counts, n = label_counts([(None, torch.tensor([0, 0, 1]))], num_classes=3,
        ...                          task="single_label")
        >>> counts.tolist(), n
        ([2.0, 1.0, 0.0], 3)
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    stored = _stored_labels(data)
    if stored is not None:
        batches: list[torch.Tensor] = [stored]
    else:
        rng = get_rng_state()
        try:
            batches = [torch.as_tensor(batch[1]).detach().cpu() for batch in data]
        finally:
            set_rng_state(rng)
        log.info("class_weights: read the %d train batches once to count the labels",
                 len(batches))
    n = 0
    for y in batches:
        n += int(y.shape[0])
        if y.dim() == 1:
            counts += torch.bincount(y.long(), minlength=num_classes)[:num_classes].double()
        elif task == "multi_label":
            counts += (y >= 0.5).sum(0).double()
        else:
            counts += y.double().sum(0)
    return counts, n


def balanced_weights(counts: torch.Tensor, samples: int, *, task: str,
                     names: Sequence[str] | None = None) -> torch.Tensor:
    """Return inverse-frequency class weights from per-class counts.

    Single-label: ``samples / (C * count_c)`` (scikit-learn's ``"balanced"``), so a class
    of average frequency weighs 1. Multi-label: the positive weight of BCE,
    ``(samples - positives_c) / positives_c`` (negatives per positive), so each class's
    positives weigh as much as its negatives.

    Raises:
        DataError: A class has no sample (no positive): its weight would be infinite.

    Example:
        >>> balanced_weights(torch.tensor([30.0, 10.0]), 40, task="single_label").tolist()
        [0.6666666666666666, 2.0]
        >>> balanced_weights(torch.tensor([10.0, 20.0]), 40, task="multi_label").tolist()
        [3.0, 1.0]
    """
    counts = counts.double()
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        shown = [names[i] if names else i for i in empty[:5]]
        raise DataError(
            f"class_weights='balanced' cannot weigh class(es) {shown}"
            f"{' and more' if len(empty) > 5 else ''}: the training labels hold no "
            f"{'positive' if task == 'multi_label' else 'sample'} of them, so the weight "
            "would be infinite. Pass one weight per class, class_weights=[...], or add "
            "samples of those classes.")
    if task == "multi_label":
        return (samples - counts) / counts
    return samples / (len(counts) * counts)


def class_weights_for(
    spec: str | Sequence[float] | None,
    data: Iterable[Any],
    *,
    num_classes: int,
    task: str,
    verbose: bool = True,
) -> torch.Tensor | None:
    """Return the class weights of ``spec`` as a float32 CPU tensor (``None``: none).

    ``"balanced"`` counts the labels of ``data`` (:func:`label_counts`) and logs the
    weights in one line; a sequence must hold one weight per class.

    Raises:
        ConfigError: A sequence whose length is not ``num_classes``.
        DataError: A class without samples under ``"balanced"``.
    """
    if spec is None:
        return None
    if spec != "balanced":
        weights = torch.tensor(list(spec), dtype=torch.float32)  # type: ignore[arg-type]
        if weights.numel() != num_classes:
            raise ConfigError(f"class_weights has {weights.numel()} weights but the model has "
                              f"{num_classes} classes; pass one weight per class.")
        return weights
    counts, samples = label_counts(data, num_classes=num_classes, task=task)
    weights = balanced_weights(counts, samples, task=task).float()
    if verbose:
        kind = "BCE pos_weight" if task == "multi_label" else "cross-entropy weight"
        log.info("class_weights='balanced' (%s, inverse frequency over %d train labels): %s",
                 kind, samples, ", ".join(f"{w:.3g}" for w in weights.tolist()))
    return weights
