"""The report of one fine-tuning run: facts, settings, history, test figures and plots.

``transferkit train`` and the FashionMNIST example both write their ``report.md`` here, so a
report reads the same whichever shell ran the engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from transferkit.report.confusion import confusion_matrix
from transferkit.report.markdown import write_report
from transferkit.report.plots import plot_confusion, plot_history, plot_misclassified

__all__ = ["MISCLASSIFIED_SHOWN", "write_multilabel_run_report", "write_run_report"]

MISCLASSIFIED_SHOWN = 25  # images in misclassified.png


def write_run_report(
    out: str | os.PathLike[str],
    *,
    title: str,
    facts: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    probs: torch.Tensor,
    labels: torch.Tensor,
    images: torch.Tensor,
    class_names: Sequence[str],
    split: str = "test",
    settings: Sequence[object] = (),
    notes: Sequence[str] = (),
) -> tuple[Path, dict[str, float]]:
    """Write ``out/report.md`` and its plots for a run evaluated on one split.

    Args:
        out: The run's folder.
        title: The report's title.
        facts: Name -> value rows (backbone, weights, splits, wall time...).
        history: The run's history, one record per epoch.
        probs: ``[N, C]`` class probabilities of the evaluated split.
        labels: ``[N]`` its labels.
        images: ``[N, C, H, W]`` its stored images (for the misclassified plot).
        class_names: One name per class.
        split: The evaluated split's name (``"test"``, or ``"val"`` without a test split).
        settings: What was chosen without being asked, one line each (their ``str``).
        notes: Other lines worth reading first.

    Returns:
        The report's path and ``{"<split>_acc": ..., "<split>_count": ...}``.

    Example:
        >>> import tempfile, torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> path, metrics = write_run_report(
        ...     tempfile.mkdtemp(), title="demo", facts={"backbone": "resnet18"},
        ...     history=[{"epoch": 1, "lr": 0.01, "train_loss": 0.5, "time": 1.0}],
        ...     probs=probs, labels=torch.tensor([0, 1, 1]),
        ...     images=torch.zeros(3, 1, 8, 8, dtype=torch.uint8), class_names=["a", "b"])
        >>> path.name, round(metrics["test_acc"], 4), metrics["test_count"]
        ('report.md', 0.6667, 3)
    """
    out = Path(out)
    preds = probs.argmax(1).cpu()
    labels = labels.cpu()
    acc = float((preds == labels).float().mean()) if len(labels) else float("nan")
    metrics = {f"{split}_acc": acc, f"{split}_count": int(len(labels))}
    confusion = confusion_matrix(preds, labels, len(class_names))
    wrong = (preds != labels).nonzero().flatten()[:MISCLASSIFIED_SHOWN]
    plots = {
        "training curves": plot_history(history, out / "curves.png"),
        "confusion matrix": plot_confusion(confusion, class_names, out / "confusion.png"),
        f"misclassified {split} images": plot_misclassified(
            images[wrong], labels[wrong], preds[wrong], class_names, out / "misclassified.png",
            probs=probs[wrong].max(1).values.cpu()),
    }
    lines = [f"chose {s}" for s in settings] + list(notes)
    path = write_report(out / "report.md", title=title, facts=facts, history=history,
                        test=metrics, notes=lines, confusion=confusion,
                        class_names=class_names, images=plots)
    return path, metrics


def write_multilabel_run_report(
    out: str | os.PathLike[str],
    *,
    title: str,
    facts: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, float],
    per_class: Mapping[str, Sequence[float]],
    class_names: Sequence[str],
    settings: Sequence[object] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write ``out/report.md`` of a multi-label run: its metrics and a per-class table.

    A multi-label run has no confusion matrix nor one predicted class per image; the
    report shows the split's metrics (``metrics``, e.g. mAP and F1), one row per class
    (``per_class``: column -> one value per class, e.g. ``ap``, ``f1``, ``support``) and
    the training curves.

    Example:
        >>> import tempfile
        >>> path = write_multilabel_run_report(
        ...     tempfile.mkdtemp(), title="demo", facts={},
        ...     history=[{"epoch": 1, "lr": 0.01, "train_loss": 0.5, "time": 1.0}],
        ...     metrics={"test_map": 0.75, "test_f1": 0.5}, class_names=["cat", "dog"],
        ...     per_class={"ap": [1.0, 0.5], "f1": [1.0, 0.0], "support": [2, 1]})
        >>> "| cat | 1.0000 | 1.0000 | 2 |" in path.read_text()
        True
    """
    out = Path(out)
    columns = list(per_class)
    rows = [[name, *(per_class[c][i] for c in columns)] for i, name in enumerate(class_names)]
    plots = {"training curves": plot_history(history, out / "curves.png")}
    lines = [f"chose {s}" for s in settings] + list(notes)
    return write_report(out / "report.md", title=title, facts=facts, history=history,
                        test=metrics, notes=lines, images=plots,
                        tables={"Per class": (["class", *columns], rows)})
