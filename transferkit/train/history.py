"""The Trainer's per-epoch records: the monitored metric, the best epoch, the history files.

Pure bookkeeping, no training: which history keys exist (:func:`monitor_keys`), whether
an epoch improved on the best one and when to stop early (:func:`update_best`), how an
epoch is logged (:func:`format_epoch`), and how the history is written to
``history.json`` and ``history.csv`` (:func:`write_history`), atomically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferkit._io import atomic_write_text
from transferkit.errors import ConfigError, closest

__all__ = [
    "format_epoch",
    "higher_is_better",
    "history_csv",
    "monitor_keys",
    "new_best",
    "resolve_monitor",
    "update_best",
    "write_history",
]


def monitor_keys(topk: Sequence[int], *, has_val: bool, task: str | None = None) -> list[str]:
    """Return the history keys a Trainer records every epoch.

    Single-label: ``train_loss``, ``train_acc``/``train_top<k>``; multi-label:
    ``train_loss``, ``train_f1`` (mAP is not computed on training epochs). With validation,
    the same with ``val_`` and, multi-label, ``val_map``. ``task=None``: the keys of either
    task (the task is known once ``fit`` sees the data).

    Args:
        topk: The ``k`` of the top-k accuracies (``k=1`` is ``*_acc``).
        has_val: Whether validation data is evaluated.
        task: ``"single_label"``, ``"multi_label"`` or ``None``.
    """
    single = ["train_loss"] + ["train_acc" if k == 1 else f"train_top{k}" for k in topk]
    multi = ["train_loss", "train_f1"]
    keys = {"single_label": single, "multi_label": multi}.get(
        task or "", list(dict.fromkeys(single + multi)))
    if has_val:
        keys = keys + [k.replace("train", "val") for k in keys]
        if task != "single_label":
            keys.append("val_map")
    return keys


def resolve_monitor(monitor: str | None, topk: Sequence[int], *, has_val: bool,
                    task: str | None = None) -> str:
    """Return the key that decides the best epoch (default: ``val_loss``, else ``train_loss``).

    Raises:
        ConfigError: ``monitor`` is not one of the history keys of ``task`` (with the
            closest one).
    """
    keys = monitor_keys(topk, has_val=has_val, task=task)
    if monitor is None:
        return "val_loss" if has_val else "train_loss"
    if monitor not in keys:
        what = f" of a {task.replace('_', '-')} run" if task else ""
        raise ConfigError(
            f"monitor={monitor!r} is not a history key{what}; use one "
            f"of {keys}.{closest(monitor, keys)}"
        )
    return monitor


def higher_is_better(monitor: str) -> bool:
    """Return whether larger values of ``monitor`` are better (accuracies, mAP, F1)."""
    return any(part in monitor for part in ("acc", "top", "map", "f1"))


def new_best() -> dict[str, Any]:
    """Return the bookkeeping of a run that has no epoch yet."""
    return {"value": None, "epoch": None, "bad_epochs": 0}


def update_best(
    best: dict[str, Any], record: dict[str, Any], *, monitor: str, patience: int | None
) -> bool:
    """Update ``best`` in place with an epoch's ``record``; return whether to stop early.

    Args:
        best: ``{"value", "epoch", "bad_epochs"}`` (see :func:`new_best`).
        record: The epoch's history record; ``record[monitor]`` is compared with the best.
        monitor: The history key that decides.
        patience: Stop after this many epochs without improvement; ``None``: never.
    """
    value, previous = record[monitor], best["value"]
    if previous is None or (value > previous if higher_is_better(monitor) else value < previous):
        best.update(value=value, epoch=record["epoch"], bad_epochs=0)
        return False
    best["bad_epochs"] += 1
    return patience is not None and best["bad_epochs"] >= patience


def format_epoch(record: dict[str, Any], epochs: int) -> str:
    """Return the one log line of an epoch: ``epoch 2/10  lr 0.01  body_lr 0.001  ...``."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.3g}"]
    if "body_lr" in record:
        parts.append(f"body_lr {record['body_lr']:.3g}")
    parts += [f"{k} {v:.4f}" for k, v in record.items()
              if k not in ("epoch", "lr", "body_lr", "time")]
    parts.append(f"time {record['time']:.1f}s")
    return "  ".join(parts)


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history.json`` and ``history.csv`` into ``out_dir``, each atomically.

    Args:
        out_dir: The run's folder (it must exist).
        history: One record per epoch; the CSV has the union of their keys as columns.
    """
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1))
    atomic_write_text(out_dir / "history.csv", history_csv(history))


def history_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Return ``rows`` as CSV text; the columns are the union of their keys, in order seen.

    Example:
        >>> print(history_csv([{"epoch": 1, "lr": 0.1}, {"epoch": 2, "val_acc": 0.5}]), end="")
        epoch,lr,val_acc
        1,0.1,
        2,,0.5
    """
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
