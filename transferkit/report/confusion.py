"""Confusion matrices: count them, and check one (and its class names) before drawing it.

Example:
    >>> import torch
    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), num_classes=2)
    tensor([[1, 1],
            [0, 1]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from transferkit import _validate
from transferkit.errors import ConfigError, DataError

__all__ = ["check_class_names", "check_confusion", "confusion_matrix"]


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count predictions per (true class, predicted class) pair.

    Args:
        preds: ``[N]`` predicted labels, or ``[N, C]`` scores (probabilities or logits,
            e.g. from ``Trainer.predict``), whose arg-max is the label.
        targets: ``[N]`` true labels.
        num_classes: The number of classes ``C``.

    Returns:
        An ``int64`` tensor ``[C, C]`` on CPU; row ``i`` counts the samples of true class
        ``i``, column ``j`` those predicted as ``j``. It sums to ``N``.

    Raises:
        ConfigError: ``num_classes`` is not a positive integer.
        DataError: The lengths differ, a tensor has the wrong shape or dtype, or a label
            is outside ``[0, num_classes)``.
    """
    num_classes = _validate.positive_int("num_classes", num_classes, example=10)
    p = torch.as_tensor(preds).detach().cpu()
    t = torch.as_tensor(targets).detach().cpu()
    if p.dim() == 2:
        if p.shape[1] != num_classes:
            raise DataError(
                f"preds has scores for {p.shape[1]} classes but num_classes={num_classes}. "
                "Pass scores with one column per class, or the predicted labels."
            )
        p = p.argmax(dim=1)
    for name, v in (("preds", p), ("targets", t)):
        if v.dim() != 1 or v.is_floating_point() or v.is_complex() or v.dtype == torch.bool:
            raise DataError(
                f"{name} must be a 1-D tensor of integer labels, got shape {tuple(v.shape)} "
                f"and dtype {v.dtype}."
            )
    if p.shape[0] != t.shape[0]:
        raise DataError(
            f"preds and targets differ in length: {p.shape[0]} vs {t.shape[0]}. Pass one "
            "prediction per target, in the same order."
        )
    for name, v in (("preds", p), ("targets", t)):
        outside = (v < 0) | (v >= num_classes)
        if outside.any():
            raise DataError(
                f"{name} holds label {int(v[outside][0])}, outside [0, {num_classes}). "
                "Check num_classes and that labels start at 0."
            )
    index = t.long() * num_classes + p.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def check_confusion(confusion: torch.Tensor, class_names: Sequence[str] | None) -> int:
    """Check a confusion matrix (and its class names) and return the number of classes."""
    if not isinstance(confusion, torch.Tensor):
        raise DataError(
            f"confusion must be a tensor, got {type(confusion).__name__}. "
            "Build it with transferkit.report.confusion_matrix(preds, targets, num_classes)."
        )
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1] or confusion.numel() == 0:
        raise DataError(
            f"confusion must be a square [C, C] matrix, got shape {tuple(confusion.shape)}. "
            "Build it with transferkit.report.confusion_matrix(preds, targets, num_classes)."
        )
    if confusion.is_floating_point() and not torch.isfinite(confusion).all():
        raise DataError("confusion holds NaN or infinite values; it must hold counts.")
    if (confusion < 0).any():
        raise DataError("confusion holds negative values; it must hold counts (>= 0).")
    num_classes = int(confusion.shape[0])
    if class_names is not None:
        check_class_names(class_names, num_classes)
    return num_classes


def check_class_names(class_names: Sequence[str], num_classes: int) -> None:
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise ConfigError(
            f"class_names must be a list of strings, got {type(class_names).__name__} "
            f"({class_names!r}). Pass e.g. data.classes."
        )
    if len(class_names) != num_classes:
        raise ConfigError(
            f"class_names has {len(class_names)} names but there are {num_classes} classes. "
            f"Pass exactly {num_classes} names, indexed by label (e.g. data.classes)."
        )
