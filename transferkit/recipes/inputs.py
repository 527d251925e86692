"""``fine_tune``'s data: batches of a loader, or ``(images, labels)`` tensors it batches itself.

Given tensors, ``fine_tune`` owns the pipeline, so it can choose the batch size, the stored
image size and the augmentation from the data (:mod:`transferkit.recipes.budget`), each
reported as a :class:`~transferkit.recipes.budget.Choice`. Given a loader, those choices are
the loader's own and only the length of training is chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transferkit import _validate
from transferkit.adaptation.core import get_info
from transferkit.data.augment import AUGMENT_PRESETS, augment_preset
from transferkit.data.pipeline import TensorLoader
from transferkit.errors import ConfigError, DataError
from transferkit.recipes.budget import (
    Choice,
    batch_size_choice,
    default_epochs,
    default_passes,
    image_size_choice,
)
from transferkit.recipes.feature_loader import batch_size_of
from transferkit.train.batch_checks import data_len

__all__ = ["AUGMENT_NONE_FROM", "DEFAULT_AUGMENT", "Inputs", "as_pair", "build_inputs",
           "num_samples"]

#: The augmentation preset used when ``fine_tune`` batches tensors and none is given.
DEFAULT_AUGMENT = "light"
#: Below this many default epochs (more than about 11,000 training images) no augmentation
#: is the default: a run of a few passes underfits, and shifts cost accuracy there. Measured
#: on FashionMNIST (55,000 images, recipe full, 4 epochs, 32 px): light shifts 90.14% test
#: accuracy (train 90.2%), without them 91.08% (docs/benchmarks.md, peer_fastai.py's
#: tk_default arm). The boundary itself is not swept.
AUGMENT_MIN_EPOCHS = 10


def _fewest_images_under(epochs: int) -> int:
    """The fewest training images whose default run is shorter than ``epochs`` epochs
    (``default_epochs`` never grows with the images, so bisection finds it)."""
    low, high = 1, 1
    while default_epochs(high) >= epochs:
        high *= 2
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if default_epochs(mid) < epochs else (mid + 1, high)
    return low


#: The fewest training images whose default run is under :data:`AUGMENT_MIN_EPOCHS` epochs
#: (11,081): from there ``fine_tune`` does not augment unless told to. Help texts quote it.
AUGMENT_NONE_FROM = _fewest_images_under(AUGMENT_MIN_EPOCHS)


@dataclass
class Inputs:
    """The train and validation data ``fine_tune`` runs on, and what it chose for them."""

    train: Iterable[Any]
    val: Iterable[Any] | None
    choices: list[Choice]
    image_size: int | None = None  # the training size, for tensors; a loader has its own


def as_pair(data: Any, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return ``(images, labels)`` if ``data`` is such a pair of tensors, else ``None``.

    Grey images may come as ``[N, H, W]``; they get their channel axis here. Labels are
    ``[N]`` class indices or ``[N, C]`` soft or multi-hot targets.

    Raises:
        DataError: A pair whose images and labels do not match.
    """
    if not (isinstance(data, tuple) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        return None
    images, labels = data
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or labels.dim() not in (1, 2) or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{split}=(images, labels) needs images [N, C, H, W] (or [N, H, W]) and labels "
            f"[N] (or [N, num_classes] targets); got {tuple(data[0].shape)} and "
            f"{tuple(labels.shape)}.")
    if images.shape[0] == 0:
        raise DataError(f"{split}=(images, labels) holds no image.")
    return images, labels


def num_samples(data: Any) -> int | None:
    """Return how many samples one epoch of ``data`` visits, or ``None`` if it cannot say.

    A ``TensorLoader``, a DataLoader over a sized dataset, a loader with ``num_samples``
    (cached features) or a sized iterable of batches (``len`` times the batch size: its
    ``batch_size``, else its first batch's).
    """
    value = getattr(data, "num_samples", None)
    if isinstance(value, int):
        return value
    dataset = getattr(data, "dataset", None)
    if dataset is not None:
        n = data_len(dataset)
        if n is not None:
            return n
    n = data_len(data)
    if not n:
        return None
    return n * batch_size_of(data)


def build_inputs(
    model: nn.Module,
    train: Any,
    val: Any,
    *,
    batch_size: int | None,
    image_size: int | None,
    augment: str | None,
    seed: int,
    cached: bool = False,
    balanced: bool = False,
    device: str = "cpu",
) -> Inputs:
    """Return the data ``fine_tune`` trains on; batch ``(images, labels)`` pairs here.

    ``cached``: the first stages' output will be cached, so the default augmentation is
    ``"none"`` (a cache is computed once, from the images as they are). ``balanced``: the
    train batches are drawn class-balanced (``TensorLoader(balanced=True)``). ``device``
    (its type) sets the compute budget of the default image size
    (:func:`~transferkit.recipes.budget.default_image_size`).

    Raises:
        ConfigError: ``batch_size``, ``image_size``, ``augment`` or ``balanced`` given with a
            loader (which has its own), or an invalid value.
        DataError: A malformed pair, or a ``val`` pair given with a train loader.
    """
    _validate.flag("balanced", balanced)
    pair, val_pair = as_pair(train, "train"), as_pair(val, "val")
    if pair is None:
        given = [f"{k}={v!r}" for k, v in (("batch_size", batch_size),
                                            ("image_size", image_size),
                                            ("augment", augment),
                                            ("balanced", balanced or None)) if v is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} apply when train is (images, labels) tensors, which "
                "fine_tune batches itself; a loader has its own: set them on the loader "
                "(balanced: TensorLoader(balanced=True) or DataLoader(sampler="
                "BalancedSampler(labels))).")
        if val_pair is not None:
            raise ConfigError("val is (images, labels) but train is a loader: pass both as "
                              "tensors, or both as loaders.")
        return Inputs(train, val, [])
    if val is not None and val_pair is None:
        raise ConfigError("train is (images, labels) but val is not: pass val as "
                          "(images, labels) too, or both as loaders.")
    images, labels = pair
    n = int(labels.shape[0])
    choices = []
    if batch_size is not None:
        batch_size = _validate.positive_int("batch_size", batch_size, example=64)
    info = get_info(model)
    stored = (int(images.shape[-2]), int(images.shape[-1]))
    if image_size is None:
        size_choice = image_size_choice(stored, info.input_size, "the images are",
                                        passes=default_passes(n), device=device)
        image_size = size_choice.value
    else:
        size_choice, image_size = None, max(_validate.image_size(image_size))
    if batch_size is None:
        choices.append(batch_size_choice(n, image_size, device))
        batch_size = choices[-1].value
    if size_choice is not None:
        choices.append(size_choice)
    if augment is None and cached:
        augment = "none"
        choices.append(Choice("augment", augment, "freeze_stages caches the frozen stages' "
                              "output once, from the images as they are"))
    elif augment is None and (short := default_epochs(n)) < AUGMENT_MIN_EPOCHS:
        augment = "none"
        choices.append(Choice("augment", augment, f"{n} training images: a default run of "
                              f"{short} epochs (under {AUGMENT_MIN_EPOCHS}) "
                              "underfits, and augmentation measured worse there"))
    elif augment is None:
        augment = DEFAULT_AUGMENT
        choices.append(Choice("augment", augment, f"default: {AUGMENT_PRESETS[augment]}"))
    # The shift is applied at the stored resolution, before resizing, so it is sized from the
    # stored side: sized from the training side (96 px for 8 px digits) it moved the digits
    # out of the frame (train loss near chance; 86.7% test against 90.2% for a probe alone).
    aug = augment_preset(augment, max(stored))
    common: dict[str, Any] = dict(image_size=image_size, mean=info.mean, std=info.std,
                                  num_classes=info.num_classes, seed=seed)
    # Drop a last batch of one or two images: BatchNorm cannot train on a single image and a
    # tiny batch gets a whole step's weight.
    drop_last = n % batch_size < min(4, batch_size) and n > batch_size
    train_loader = TensorLoader(images, labels, batch_size=batch_size, shuffle=True,
                                balanced=balanced, drop_last=drop_last, augment=aug, **common)
    val_loader = None
    if val_pair is not None:
        val_loader = TensorLoader(*val_pair, batch_size=max(batch_size, 64), **common)
    return Inputs(train_loader, val_loader, choices, image_size)
