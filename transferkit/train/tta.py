"""Test-time augmentation (TTA): average a model's softmax over a few views of each image.

The views are fixed (nothing random), named in :data:`TTA_MODES`:

- ``"flip"``: the image and its horizontal mirror, the flips of the ``standard``
  augmentation preset. A mirror can change what an image means (text, a left shoe...):
  measure it on your validation data first (``docs/trainer.md`` has FashionMNIST's).
- ``"crops"``: the image and four copies shifted diagonally by ``1/16`` of its side, the
  shifts of the ``light`` preset's pad-and-crop (up to ``1/8``) at half its largest
  offset. The pixels shifted in repeat the image's edge: the views are built from the
  normalised batch, where the value of training's zero padding is not known; for images
  with a uniform border (FashionMNIST's black) the two are the same.
- ``"flip+crops"``: the five crops and their mirrors.

Each view runs through the model as one batch, one view after the other (peak memory
that of one batch), and the softmax probabilities are averaged in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from transferkit import _validate
from transferkit.errors import DataError

__all__ = ["TTA_MODES", "check_tta", "tta_logits", "tta_probs", "tta_views"]

#: The test-time augmentations of ``Trainer.evaluate/predict(tta=...)`` and
#: ``transferkit predict --tta``: name -> the views averaged.
TTA_MODES: dict[str, str] = {
    "none": "the image as given (1 view)",
    "flip": "the image and its horizontal mirror (2 views)",
    "crops": "the image and 4 copies shifted diagonally by 1/16 of its side (5 views)",
    "flip+crops": "the 5 crops and their mirrors (10 views)",
}


def check_tta(mode: object) -> str:
    """Return ``mode`` if it is one of :data:`TTA_MODES`, else raise ``ConfigError``.

    Example:
        >>> check_tta("flip")
        'flip'
    """
    return _validate.choice("tta", mode, TTA_MODES)


def _shifted(x: torch.Tensor, dy: int, dx: int, s: int) -> torch.Tensor:
    """``x`` moved by ``(dy, dx)`` pixels (|dy|, |dx| <= s), the edge repeated."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    return padded[..., s - dy : s - dy + h, s - dx : s - dx + w]


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Return the views of the image batch ``x`` that ``mode`` averages (``x`` first).

    Args:
        x: Images ``[N, C, H, W]``, normalised or not.
        mode: One of :data:`TTA_MODES`.

    Raises:
        ConfigError: An unknown mode.
        DataError: ``x`` is not a 4-D batch (cached features cannot be flipped or shifted).

    Example:
        >>> import torch
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> [v.shape[-1] for v in tta_views(x, "flip+crops")] == [4] * 10
        True
        >>> tta_views(x, "flip")[1][0, 0, 0].tolist()
        [3.0, 2.0, 1.0, 0.0]
    """
    mode = check_tta(mode)
    if mode == "none":
        return [x]
    if x.dim() != 4:
        raise DataError(f"tta={mode!r} needs image batches (N, C, H, W), got shape "
                        f"{tuple(x.shape)}; cached features cannot be flipped or shifted: "
                        "evaluate the full model on images, or pass tta='none'.")
    views = [x]
    if "crops" in mode:
        s = max(1, round(min(x.shape[-2:]) / 16))
        views += [_shifted(x, dy, dx, s) for dy in (-s, s) for dx in (-s, s)]
    if "flip" in mode:
        views += [v.flip(-1) for v in views]
    return views


@torch.no_grad()
def tta_probs(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              mode: str = "none", *, multi_label: bool = False) -> torch.Tensor:
    """Return the probabilities of ``model`` on ``x``, averaged over ``mode``'s views.

    The probabilities are the softmax of the logits, or with ``multi_label`` each class's
    sigmoid. ``mode="none"`` is exactly ``model(x).float().softmax(-1)`` (``.sigmoid()``).
    Call it in eval mode (and under the autocast the model runs with).

    Args:
        model: Maps ``[N, C, H, W]`` to ``[N, num_classes]`` logits.
        x: The images.
        mode: One of :data:`TTA_MODES`.
        multi_label: Average sigmoids (each class on its own) instead of softmaxes.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> probs = tta_probs(model, torch.randn(2, 1, 4, 4), "flip")
        >>> probs.shape, [round(p, 5) for p in probs.sum(-1).tolist()]
        (torch.Size([2, 3]), [1.0, 1.0])
    """
    def prob(logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid() if multi_label else logits.float().softmax(-1)

    views = tta_views(x, mode)
    total = prob(model(views[0]))
    for view in views[1:]:
        total += prob(model(view.contiguous(memory_format=_format(x))))
    return total / len(views) if len(views) > 1 else total


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               mode: str = "none", *, multi_label: bool = False) -> torch.Tensor:
    """Return ``model(x)`` for ``mode="none"``, else logits of :func:`tta_probs`' average.

    Single-label: the log of the averaged probabilities stands in for logits: its softmax
    is the average and its argmax the averaged prediction, so a cross-entropy of it is the
    negative log-likelihood of the averaged prediction. Multi-label: the logit (inverse
    sigmoid) of each class's averaged probability, for the same reason.
    """
    if check_tta(mode) == "none":
        return model(x)
    probs = tta_probs(model, x, mode, multi_label=multi_label)
    if multi_label:
        return torch.logit(probs, eps=1e-7)
    return probs.clamp_min(torch.finfo(torch.float32).tiny).log()


def _format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of ``x`` (views keep channels-last batches channels-last)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
