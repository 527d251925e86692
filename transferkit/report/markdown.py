"""Summarise a run as a Markdown report, with its confusion matrix and plots.

A report holds a facts table (backbone, weights, recipe, hyper-parameters, device, wall
time...), notes, the per-epoch metrics, the test metrics, the confusion matrix with class
names and links to the PNG plots drawn by :mod:`transferkit.report.plots`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from transferkit._io import atomic_write_text
from transferkit.errors import ConfigError, DataError
from transferkit.report.confusion import check_class_names, check_confusion
from transferkit.report.plots import PLOTS_SKIPPED

__all__ = ["write_report"]

# Metric columns of the history table, in this order within each split.
_METRIC_ORDER = ("loss", "acc", "map", "f1")


def _cell(text: Any) -> str:
    """Escape a value for a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _fact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fact(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _metric(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if key == "lr" or key.endswith("_lr"):
        return f"{value:.3g}"
    if key == "time" or key.endswith("time"):
        return f"{value:.1f}"
    return f"{value:.4f}"


def _column_rank(key: str) -> tuple[int, int]:
    for group, prefix in enumerate(("train_", "val_"), start=1):
        if key.startswith(prefix):
            metric = key[len(prefix) :]
            order = _METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER)
            return group, order
    fixed = {"epoch": (0, 0), "lr": (4, 0), "body_lr": (4, 1), "time": (5, 0)}
    return fixed.get(key, (3, 0))


def _history_columns(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the union of the history keys: epoch, train_*, val_*, others, lr, time."""
    seen = list(dict.fromkeys(k for record in history for k in record))
    return sorted(seen, key=lambda k: (*_column_rank(k), seen.index(k)))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "---") -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(align if i else "---" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _check_inputs(
    title: Any, facts: Any, history: Any, test: Any, notes: Any, images: Any
) -> None:
    if not isinstance(title, str) or not title.strip():
        raise ConfigError(f"title must be a non-empty string, got {title!r}.")
    if not isinstance(facts, Mapping):
        raise ConfigError(
            f"facts must be a dict of name -> value, got {type(facts).__name__}; e.g. "
            "{'backbone': 'resnet18', 'epochs': 5}."
        )
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise DataError(
            f"history must be a list of dicts (one per epoch), got {type(history).__name__}. "
            "Pass the list returned by Trainer.fit()."
        )
    for i, record in enumerate(history):
        if not isinstance(record, Mapping):
            raise DataError(
                f"history[{i}] is a {type(record).__name__}, not a dict. Pass the list "
                "returned by Trainer.fit()."
            )
    if test is not None:
        if not isinstance(test, Mapping):
            raise ConfigError(
                f"test must be a dict of metric -> value, got {type(test).__name__}; "
                "pass Trainer.evaluate(test_data)."
            )
    if isinstance(notes, (str, bytes)) or not isinstance(notes, Sequence):
        raise ConfigError(
            f"notes must be a list of strings, got {type(notes).__name__}; wrap a single "
            "note in a list: notes=[note]."
        )
    if images is not None and not isinstance(images, Mapping):
        raise ConfigError(
            f"images must be a dict of caption -> PNG path, got {type(images).__name__}; "
            "e.g. {'Training curves': 'curves.png'}."
        )
    for caption, target in (images or {}).items():
        if target is not None and not isinstance(target, (str, os.PathLike)):
            raise ConfigError(
                f"images[{caption!r}] must be a path or None, got {target!r}; pass what the "
                "plot functions return."
            )


def _link(target: str | os.PathLike[str], folder: Path) -> str:
    """Return the link from the report's ``folder`` to the file ``target``, with ``/``.

    ``target`` is a path like any other (a relative one is relative to the current
    folder, where the plot functions wrote it), so the link works when the report is
    opened from its own folder.
    """
    target_path = Path(target).absolute()
    try:
        return Path(os.path.relpath(target_path, folder.absolute())).as_posix()
    except ValueError:  # another drive on Windows: keep the absolute path
        return target_path.as_posix()


def write_report(
    path: str | os.PathLike[str],
    *,
    title: str,
    facts: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    test: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
    confusion: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    images: Mapping[str, str | os.PathLike[str] | None] | None = None,
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]] | None = None,
) -> Path:
    """Write a Markdown report of a run, atomically.

    Sections, in order: the title, a facts table (whatever ``facts`` holds: backbone,
    weights, recipe, hyper-parameters, device, wall time...), the notes, one row per epoch
    of ``history`` (columns: the union of the keys, ``epoch`` first, then ``train_*``,
    ``val_*``, other keys, ``lr`` and ``time``), the test metrics, the confusion matrix
    with class names and per-class recall, and links to the plots.

    Args:
        path: The Markdown file to write (its folder is created if missing).
        title: The report's title.
        facts: Name -> value; floats are shown with 4 significant digits, lists and dicts
            inline.
        history: One dict per epoch, as returned by ``Trainer.fit``.
        test: Test metrics, e.g. ``Trainer.evaluate(test_data)``.
        notes: Sentences worth reading first (fallbacks taken, warnings).
        confusion: ``[C, C]`` counts from :func:`confusion_matrix`.
        class_names: One name per class, for the confusion matrix (default: the labels).
        images: Caption -> PNG path, as the plot functions return it (a relative path is
            relative to the current folder); the report links it relative to its own
            folder. A ``None`` path (a plot function returned ``None``: no matplotlib) is
            named in the report as not drawn.
        tables: More tables after the test metrics, title -> ``(header, rows)`` (numbers
            formatted as metrics), e.g. a per-class table of a multi-label run.

    Returns:
        The path written.

    Raises:
        ConfigError: An argument has the wrong type, or ``class_names`` does not hold one
            name per class.
        DataError: ``history`` is not a list of dicts, or ``confusion`` is not a square
            matrix of counts.
    """
    _check_inputs(title, facts, history, test, notes, images)
    if confusion is not None:
        check_confusion(confusion, class_names)
    elif class_names is not None:
        check_class_names(class_names, len(class_names))
    path = Path(path)
    lines = [f"# {title.strip()}", ""]
    if facts:
        lines += _table(["setting", "value"], [[f"**{k}**", _fact(v)] for k, v in facts.items()])
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]

    lines += ["## Training", ""]
    if history:
        columns = _history_columns(history)
        rows = [[_metric(c, r.get(c)) for c in columns] for r in history]
        lines += _table(columns, rows, align="--:")
    else:
        lines.append("No epoch was run.")
    lines.append("")

    if test is not None:
        lines += ["## Test", ""]
        if "acc" in test and isinstance(test["acc"], (int, float)):
            lines += [f"Test accuracy: **{test['acc']:.4f}**", ""]
        lines += _table(["metric", "value"], [[k, _metric(k, v)] for k, v in test.items()],
                        align="--:")
        lines.append("")

    for caption, (header, rows) in (tables or {}).items():
        lines += [f"## {caption}", ""]
        lines += _table(header, [[_metric(str(h), v) for h, v in zip(header, row, strict=True)]
                                 for row in rows], align="--:")
        lines.append("")

    if confusion is not None:
        lines += _confusion_lines(confusion, class_names)

    if images:
        folder = path.parent
        lines += ["## Plots", ""]
        for caption, target in images.items():
            if target is None:
                lines += [f"- {caption}: not drawn ({PLOTS_SKIPPED}).", ""]
            else:
                lines += [f"### {caption}", "", f"![{caption}]({_link(target, folder)})", ""]

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "\n".join(lines).rstrip("\n") + "\n")


def _confusion_lines(confusion: torch.Tensor, class_names: Sequence[str] | None) -> list[str]:
    counts = confusion.detach().cpu()
    num_classes = counts.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [
        str(i) for i in range(num_classes)
    ]
    rows = []
    for i in range(num_classes):
        row = [f"**{names[i]}**"] + [_metric("", v) for v in counts[i].tolist()]
        total = float(counts[i].sum())
        row.append(f"{float(counts[i, i]) / total:.4f}" if total > 0 else "")
        rows.append(row)
    lines = [
        "## Confusion matrix",
        "",
        "Rows: true class; columns: predicted class; last column: recall (per-class accuracy).",
        "",
    ]
    lines += _table(["true \\ predicted", *names, "recall"], rows, align="--:")
    return lines + [""]
