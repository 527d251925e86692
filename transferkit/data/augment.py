"""Batch augmentations for in-memory images, vectorised over the batch.

Each function draws its random numbers from a CPU ``torch.Generator`` it is given (so results
are reproducible and identical on every device) and applies them to the whole batch at once
on the batch's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transferkit import _validate
from transferkit.errors import ConfigError

__all__ = ["AUGMENT_PRESETS", "Augment", "augment_preset", "random_crop_flip", "random_erase"]

#: The named augmentations of ``fine_tune(augment=...)`` and ``transferkit train --augment``:
#: name -> what it does. "light" is the default: shifts only, because a flip changes the
#: meaning of images whose left and right differ (text, some medical and industrial images).
AUGMENT_PRESETS: dict[str, str] = {
    "none": "no augmentation",
    "light": "random shifts of up to 1/8 of the image (pad and crop)",
    "standard": "light, plus horizontal flips (p=0.5)",
    "strong": "standard, plus random erasing (p=0.25)",
}


@dataclass(frozen=True)
class Augment:
    """Batch augmentations, all vectorised and drawn from the loader's generator.

    Attributes:
        crop_padding: Pad each image by this many pixels (zeros, at its stored resolution,
            before resizing) and crop back to its size at a random offset. 0 disables it.
        hflip: Probability of flipping an image horizontally.
        erase: Probability of erasing one random rectangle of an image (after
            normalisation), as in Zhong et al. 2017 / torchvision's ``RandomErasing``.
        erase_scale: Range of the erased area as a fraction of the image.
        erase_ratio: Range of the erased rectangle's aspect ratio (sampled log-uniformly).
        erase_value: The value written into the erased rectangle.
    """

    crop_padding: int = 0
    hflip: float = 0.0
    erase: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_value: float = 0.0

    def __post_init__(self) -> None:
        _validate.integer("crop_padding", self.crop_padding, minimum=0, example=4)
        for name in ("hflip", "erase"):
            _validate.probability(name, getattr(self, name))
        lo, hi = self.erase_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(
                f"Augment(erase_scale={self.erase_scale!r}) needs 0 < low <= high <= 1, "
                f"e.g. (0.02, 0.33)."
            )
        lo, hi = self.erase_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(
                f"Augment(erase_ratio={self.erase_ratio!r}) needs 0 < low <= high, "
                f"e.g. (0.3, 3.3)."
            )


def random_crop_flip(
    x: torch.Tensor, padding: int, hflip: float, generator: torch.Generator
) -> torch.Tensor:
    """Crop each zero-padded image at a random offset and flip some, in one gather.

    Args:
        x: Images ``[B, C, H, W]`` (any dtype, any device).
        padding: Zero padding on every side before cropping back to ``H x W``.
        hflip: Probability of flipping each image horizontally.
        generator: CPU generator the offsets and flips are drawn from.

    Returns:
        A new tensor shaped like ``x``.
    """
    b, c, h, w = x.shape
    top = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator)
    flip = torch.rand(b, 1, 1, generator=generator) < hflip
    j = torch.arange(w).view(1, 1, w)
    cols = left + torch.where(flip, w - 1 - j, j)  # [B, 1, W]
    rows = top + torch.arange(h).view(1, h, 1)  # [B, H, 1]
    wp = w + 2 * padding
    flat = (rows * wp + cols).view(b, 1, h * w).to(x.device).expand(b, c, h * w)
    padded = F.pad(x, (padding,) * 4) if padding else x
    return padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


def random_erase(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Erase one random rectangle per image with probability ``aug.erase``, in place.

    Args:
        x: Float images ``[B, C, H, W]``; modified in place and returned.
        aug: Gives the probability, area and aspect ranges and the value written.
        generator: CPU generator the rectangles are drawn from.
    """
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=generator) < aug.erase
    lo, hi = aug.erase_scale
    area = (lo + (hi - lo) * torch.rand(b, generator=generator)) * (h * w)
    log_lo, log_hi = math.log(aug.erase_ratio[0]), math.log(aug.erase_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, generator=generator))
    # torchvision retries boxes that do not fit; clamping keeps this a single draw.
    eh = torch.sqrt(area * ratio).round().clamp(1, h).long()
    ew = torch.sqrt(area / ratio).round().clamp(1, w).long()
    top = (torch.rand(b, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=generator) * (w - ew + 1)).long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None]) & apply[:, None]
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    in_rows, in_cols = in_rows.to(x.device), in_cols.to(x.device)
    return x.masked_fill_(in_rows[:, None, :, None] & in_cols[:, None, None, :], aug.erase_value)


def augment_preset(name: str, image_size: int) -> Augment | None:
    """Return the :class:`Augment` of the preset ``name`` for images stored at ``image_size``.

    Args:
        name: One of :data:`AUGMENT_PRESETS`.
        image_size: The stored (largest) side, which sets the shift: ``max(1, size // 8)``.

    Returns:
        The augmentation, or ``None`` for ``"none"``.

    Raises:
        ConfigError: An unknown preset (the valid ones are listed).

    Example:
        >>> augment_preset("standard", 32)
        Augment(crop_padding=4, hflip=0.5, erase=0.0, erase_scale=(0.02, 0.33), \
erase_ratio=(0.3, 3.3), erase_value=0.0)
        >>> augment_preset("none", 32) is None
        True
    """
    name = _validate.choice("augment", name, AUGMENT_PRESETS)
    size = _validate.positive_int("image_size", image_size)
    if name == "none":
        return None
    pad = max(1, size // 8)
    return Augment(crop_padding=pad, hflip=0.5 if name in ("standard", "strong") else 0.0,
                   erase=0.25 if name == "strong" else 0.0)
