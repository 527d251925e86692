"""Draw the PNG plots of a run: training curves, LR sweep, confusion matrix, misclassified images.

matplotlib is optional (``pip install transferkit[plots]``). It is imported lazily, and
only :class:`matplotlib.figure.Figure` with the Agg canvas is used: no ``pyplot``, so the
user's backend and global figure state are left alone. Without matplotlib each function
returns ``None`` and one warning line is logged (once per process).

Every input is checked before matplotlib is imported or anything is written; a PNG is
rendered in memory and written atomically, so a file is either complete or absent.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from transferkit import _validate
from transferkit._io import atomic_write_bytes
from transferkit.errors import ConfigError, DataError
from transferkit.report.confusion import check_confusion

__all__ = [
    "HISTORY_SIZE",
    "PLOTS_SKIPPED",
    "matplotlib_available",
    "plot_confusion",
    "plot_history",
    "plot_lr_find",
    "plot_misclassified",
]

log = logging.getLogger(__name__)

PLOTS_SKIPPED = "plots skipped: matplotlib is not installed (pip install transferkit[plots])"
"""The warning logged (once) when matplotlib is missing."""

DPI = 100
HISTORY_SIZE: tuple[int, int] = (1000, 400)
"""Pixel size (width, height) of the training-curves PNG."""
LR_FIND_SIZE: tuple[int, int] = (700, 450)
"""Pixel size (width, height) of the LR-sweep PNG."""

_warned = False


def matplotlib_available() -> bool:
    """Return whether matplotlib can be imported (the plots need it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _new_figure(width_px: int, height_px: int) -> Any:
    """Return an Agg-backed Figure, or ``None`` (warning logged once) without matplotlib."""
    global _warned
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _warned:
            log.warning(PLOTS_SKIPPED)
            _warned = True
        return None
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buffer.getvalue())


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, record in enumerate(history):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(float(record.get("epoch", i + 1)))
            ys.append(float(value))
    return xs, ys


def plot_history(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path | None:
    """Draw loss and accuracy (multi-label: mAP and F1) per epoch, train against validation.

    Args:
        history: One dict per epoch, as returned by ``Trainer.fit`` (keys such as
            ``epoch``, ``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``).
        path: The PNG file to write (its folder is created if missing).

    Returns:
        The path written, or ``None`` when matplotlib is not installed.

    Raises:
        DataError: ``history`` is empty, not a list of dicts, or has no loss or accuracy.
    """
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
        raise DataError(
            f"history must be a list of dicts (one per epoch), got {type(history).__name__}. "
            "Pass the list returned by Trainer.fit() or read from history.json."
        )
    if not history:
        raise DataError("history is empty: there is nothing to plot. Train at least one epoch.")
    bad = [i for i, r in enumerate(history) if not isinstance(r, Mapping)]
    if bad:
        raise DataError(
            f"history[{bad[0]}] is a {type(history[bad[0]]).__name__}, not a dict. "
            "Pass the list returned by Trainer.fit() or read from history.json."
        )
    keys = {k for r in history for k in r}
    panels = [m for m in ("loss", "acc", "map", "f1")
              if f"train_{m}" in keys or f"val_{m}" in keys]
    if not panels:
        raise DataError(
            f"history has no train_/val_ loss or accuracy to plot (keys: {sorted(keys)}). "
            "Pass the history returned by Trainer.fit()."
        )
    fig = _new_figure(*HISTORY_SIZE)
    if fig is None:
        return None
    from matplotlib.ticker import MaxNLocator
    titles = {"loss": "loss", "acc": "accuracy", "map": "mAP", "f1": "F1"}
    for i, metric in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for split, style in (("train", "o-"), ("val", "s--")):
            xs, ys = _series(history, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(titles[metric])
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _finite_floats(name: str, values: Any) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a sequence of numbers, got {values!r:.80}.") from None
    return out


def plot_lr_find(
    lrs: Sequence[float],
    smoothed: Sequence[float],
    path: str | os.PathLike[str],
    *,
    losses: Sequence[float] | None = None,
    suggestion: float | None = None,
    rule: str | None = None,
) -> Path | None:
    """Draw an LR sweep: the smoothed loss against the LR (log scale), the suggestion marked.

    Args:
        lrs: The LR of every step (``LRFindResult.lrs``).
        smoothed: The smoothed loss of every step (``LRFindResult.smoothed``).
        path: The PNG file to write (its folder is created if missing).
        losses: The raw loss of every step, drawn faintly (``LRFindResult.losses``).
        suggestion: The suggested LR, marked with a vertical line.
        rule: The rule that chose it, named in the legend.

    Returns:
        The path written, or ``None`` when matplotlib is not installed.

    Raises:
        DataError: Fewer than 2 points, lists of different lengths, an LR that is not
            positive, or a suggestion that is not.
    """
    xs, ys = _finite_floats("lrs", lrs), _finite_floats("smoothed", smoothed)
    raw = None if losses is None else _finite_floats("losses", losses)
    if len(xs) < 2 or len(xs) != len(ys) or (raw is not None and len(raw) != len(xs)):
        raise DataError(
            f"an LR sweep needs at least 2 points and one loss per LR; got {len(xs)} LRs, "
            f"{len(ys)} smoothed losses" + ("" if raw is None else f", {len(raw)} losses")
            + ". Pass the fields of lr_find()'s result.")
    if any(not (x > 0 and math.isfinite(x)) for x in xs) or (
            suggestion is not None and not (suggestion > 0 and math.isfinite(suggestion))):
        raise DataError(f"LRs must be positive and finite (log scale); got lrs from {min(xs)!r} "
                        f"and suggestion={suggestion!r}.")
    fig = _new_figure(*LR_FIND_SIZE)
    if fig is None:
        return None
    ax = fig.add_subplot(1, 1, 1)
    if raw is not None:
        ax.plot(xs, raw, "-", color="0.75", linewidth=1, label="loss")
    ax.plot(xs, ys, "-", linewidth=2, label="smoothed loss")
    finite = [y for y in ys if math.isfinite(y)]
    if finite:  # the divergence at the end would squash the curve: clip at 4x its minimum
        low = min(finite)
        high = min(max(finite), 4 * low) if low > 0 else max(finite)
        margin = 0.05 * (high - low or 1.0)
        ax.set_ylim(low - margin, high + margin)
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--",
                   label=f"suggestion {suggestion:.2g}" + (f" ({rule})" if rule else ""))
    ax.set_xscale("log")
    ax.set_xlabel("head learning rate")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(
    confusion: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike[str]
) -> Path | None:
    """Draw a confusion matrix, normalised per row (true class), counts annotated.

    Args:
        confusion: ``[C, C]`` counts, rows = true class, columns = predicted class
            (see :func:`transferkit.report.markdown.confusion_matrix`).
        class_names: ``C`` class names, indexed by label.
        path: The PNG file to write (its folder is created if missing).

    Returns:
        The path written, or ``None`` when matplotlib is not installed.

    Raises:
        DataError: ``confusion`` is not a square matrix of non-negative counts.
        ConfigError: ``class_names`` does not hold one name per class.
    """
    num_classes = check_confusion(confusion, class_names)
    counts = confusion.detach().cpu().double()
    rows = counts.sum(dim=1, keepdim=True)
    norm = torch.where(rows > 0, counts / rows.clamp(min=1), torch.zeros_like(counts))
    # Fixed margins in pixels (room for rotated class names and the colour bar label), so
    # the layout holds for any number of classes; long names are shortened on the axes.
    matrix = max(240, 55 * num_classes)
    width, height = matrix + 245, matrix + 160
    fig = _new_figure(width, height)
    if fig is None:
        return None
    ax = fig.add_axes((140 / width, 140 / height, matrix / width, matrix / height))
    bar = fig.add_axes(((155 + matrix) / width, 140 / height, 20 / width, matrix / height))
    image = ax.imshow(norm.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, cax=bar, label="fraction of the true class")
    names = [n if len(n) <= 18 else n[:17] + "\u2026" for n in map(str, class_names)]
    ticks = list(range(num_classes))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if num_classes <= 30:  # beyond that the numbers are unreadable anyway
        for i in range(num_classes):
            for j in range(num_classes):
                dark = norm[i, j].item() > 0.5
                ax.text(j, i, f"{int(counts[i, j].item())}", ha="center", va="center",
                        fontsize=7, color="white" if dark else "black")
    return _save(fig, path)


def _to_display(images: torch.Tensor) -> torch.Tensor:
    """Return ``[N, H, W]`` or ``[N, H, W, C]`` floats in ``[0, 1]`` for ``imshow``."""
    x = images.detach().cpu()
    if x.dim() == 4:
        x = x[:, 0] if x.shape[1] not in (3, 4) else x.permute(0, 2, 3, 1)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if x.numel() and (x.min() < 0 or x.max() > 1):  # normalised or 0..255: rescale per image
        flat = x.reshape(x.shape[0], -1)
        lo = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
        hi = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
        x = (x - lo) / (hi - lo).clamp(min=1e-12)
    return x


def _as_labels(name: str, value: Any, n: int, num_classes: int) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.dim() == 2:  # probabilities or logits: the arg-max is the label
        t = t.argmax(dim=1)
    if t.dim() != 1 or t.shape[0] != n or t.is_floating_point() or t.is_complex():
        raise DataError(
            f"{name} must hold {n} integer labels (one per image), got shape "
            f"{tuple(t.shape)} and dtype {t.dtype}."
        )
    if n and (t.min() < 0 or t.max() >= num_classes):
        bad = int(t[(t < 0) | (t >= num_classes)][0])
        raise DataError(
            f"{name} holds label {bad}, outside [0, {num_classes}) for {num_classes} "
            "class names. Pass one name per class."
        )
    return t.long()


def plot_misclassified(
    images: torch.Tensor,
    targets: torch.Tensor,
    preds: torch.Tensor,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    max_images: int = 25,
    probs: torch.Tensor | None = None,
) -> Path | None:
    """Draw a grid of the misclassified images titled "true -> pred".

    The first ``max_images`` images whose prediction differs from the target are drawn,
    in data order. With no misclassified image the PNG says so.

    Args:
        images: ``[N, H, W]`` or ``[N, C, H, W]`` images as stored, ``uint8`` (0..255)
            or float (``[0, 1]``; other ranges are rescaled per image).
        targets: ``[N]`` true labels.
        preds: ``[N]`` predicted labels, or ``[N, C]`` scores (arg-max taken).
        class_names: One name per class, indexed by label.
        path: The PNG file to write (its folder is created if missing).
        max_images: Draw at most this many images.
        probs: ``[N, C]`` probabilities (the predicted class's probability is shown) or
            ``[N]`` confidences.

    Returns:
        The path written, or ``None`` when matplotlib is not installed.

    Raises:
        DataError: Shapes or lengths do not match, or a label is outside the classes.
        ConfigError: ``max_images`` is not a positive integer, or ``class_names`` is not
            a list of names.
    """
    max_images = _validate.positive_int("max_images", max_images, example=25)
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise ConfigError(
            f"class_names must be a list of strings, got {type(class_names).__name__}."
        )
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(
            f"images must be a [N, H, W] or [N, C, H, W] tensor, got {shape}. "
            "Pass the images as stored, e.g. data.test_images."
        )
    n, num_classes = images.shape[0], len(class_names)
    y = _as_labels("targets", targets, n, num_classes)
    p = _as_labels("preds", preds, n, num_classes)
    conf = None
    if probs is not None:
        probs_t = torch.as_tensor(probs).detach().cpu().float()
        if probs_t.shape[:1] != (n,) or probs_t.dim() not in (1, 2):
            raise DataError(
                f"probs must be [N] or [N, C] with N={n}, got shape {tuple(probs_t.shape)}."
            )
        conf = probs_t.gather(1, p.view(-1, 1)).squeeze(1) if probs_t.dim() == 2 else probs_t
    wrong = torch.nonzero(y != p).flatten()[:max_images].tolist()
    cols = max(1, math.ceil(math.sqrt(len(wrong))))
    rows = max(1, math.ceil(len(wrong) / cols))
    fig = _new_figure(max(300, 160 * cols), max(200, 180 * rows))
    if fig is None:
        return None
    if not wrong:
        fig.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
        return _save(fig, path)
    shown = _to_display(images[wrong])
    for k, index in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, k + 1)
        gray = shown.dim() == 3
        ax.imshow(shown[k].numpy(), cmap="gray" if gray else None, vmin=0.0, vmax=1.0)
        title = f"{class_names[int(y[index])]} ->\n{class_names[int(p[index])]}"
        if conf is not None:
            title += f" ({float(conf[index]):.2f})"
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
