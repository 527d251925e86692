"""Budget-aware defaults: batch size, length of training and image size, from the data.

``fine_tune`` and ``transferkit train`` call these when the user leaves a choice out, and
report each choice with its reason (:class:`Choice`). The rules are measured, not guessed:
``benchmarks/small_data.py`` runs them against a sweep of recipe x LR x budget on small
data sets built offline, and ``docs/recipes.md`` holds its table.

- **Batch size**: about ``N / 16`` images (a power of two, 16..256), so a small data set
  still gets some optimizer steps per epoch and a large one uses the CPU's cores well.
- **Length**: ``round(1000 / sqrt(N))`` epochs, within 3..60: small data sets need many
  passes (30 images a class: about 58 epochs, ~1,100 steps), large ones few (60,000
  images: 4 epochs). Expressed in optimizer steps in the log and the report.
- **Image size**: the images' own median size rounded up to a multiple of 32, within
  32 px and the backbone's pretrained size: upsampling 28 px images to 224 px costs 64x
  the compute for little gain on small data, and a photo larger than the pretrained size
  is shrunk to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transferkit import _validate

__all__ = [
    "MAX_BATCH",
    "MAX_EPOCHS",
    "MIN_BATCH",
    "MIN_EPOCHS",
    "Choice",
    "default_batch_size",
    "default_epochs",
    "default_image_size",
    "image_size_choice",
]

MIN_BATCH, MAX_BATCH = 16, 256
MIN_EPOCHS, MAX_EPOCHS = 3, 60
_EPOCH_SCALE = 1000.0  # epochs = _EPOCH_SCALE / sqrt(N), clipped (measured: docs/recipes.md)
_SIZE_STEP = 32  # stored sizes are multiples of this (the backbones' total stride)


@dataclass(frozen=True)
class Choice:
    """One setting ``fine_tune`` chose, and why, in a line for the log and the report.

    Attributes:
        name: The argument it stands for (``"batch_size"``, ``"epochs"``...).
        value: The value used.
        why: The reason, e.g. ``"default for 300 images (about N/16, 16..256)"``; for a
            value the user gave, ``"given"``.
    """

    name: str
    value: Any
    why: str

    def __str__(self) -> str:
        return f"{self.name} {self.value}: {self.why}"


def default_batch_size(num_samples: int) -> int:
    """Return the default batch size for ``num_samples`` training images.

    Example:
        >>> default_batch_size(100), default_batch_size(300), default_batch_size(55000)
        (16, 16, 256)
    """
    n = _validate.positive_int("num_samples", num_samples)
    power = 2 ** round(math.log2(max(1.0, n / 16)))
    return int(min(MAX_BATCH, max(MIN_BATCH, power)))


def default_epochs(num_samples: int) -> int:
    """Return the default number of epochs for ``num_samples`` training images.

    Example:
        >>> default_epochs(100), default_epochs(300), default_epochs(1000), default_epochs(55000)
        (60, 58, 32, 4)
    """
    n = _validate.positive_int("num_samples", num_samples)
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(_EPOCH_SCALE / math.sqrt(n)))))


def default_image_size(native: int | Sequence[int], pretrained: int | Sequence[int] | None
                       ) -> int:
    """Return the default (square) training size for images of median size ``native``.

    Args:
        native: The images' median size, ``(height, width)`` or one int.
        pretrained: The backbone's pretrained input size (``None``: no cap but 224).

    Example:
        >>> default_image_size((28, 28), (224, 224)), default_image_size((500, 375), 224)
        (32, 224)
        >>> default_image_size((70, 90), 224)
        96
    """
    h, w = _validate.image_size(native, name="native")
    cap = max(_validate.image_size(pretrained or 224, name="pretrained"))
    side = _SIZE_STEP * math.ceil(max(h, w) / _SIZE_STEP)
    return int(min(max(cap, _SIZE_STEP), max(_SIZE_STEP, side)))


def image_size_choice(native: Sequence[int], pretrained: Sequence[int] | None,
                      seen: str) -> Choice:
    """Return :func:`default_image_size` as a :class:`Choice`, its reason in one line.

    ``seen`` says where ``native`` was read (``"the images are"``, ``"median image"``).

    Example:
        >>> choice = image_size_choice((28, 28), (224, 224), "median image")
        >>> choice.value, choice.why.split(": ")[0]
        (32, 'median image 28x28')
    """
    h, w = _validate.image_size(native, name="native")
    cap = max(_validate.image_size(pretrained or 224, name="pretrained"))
    return Choice("image_size", default_image_size((h, w), pretrained),
                  f"{seen} {h}x{w}: rounded up to a multiple of 32, at most the backbone's "
                  f"{cap} px")
