"""Budget-aware defaults: batch size, length of training and image size, from the data.

``fine_tune`` and ``transferkit train`` call these when the user leaves a choice out, and
report each choice with its reason (:class:`Choice`). The rules are measured, not guessed:
``benchmarks/small_data.py`` runs them against a sweep of recipe x LR x budget on small
data sets built offline, and ``docs/recipes.md`` holds its table.

- **Recipe**: ``full`` (everything, head/body LR 1e-2/1e-3, label smoothing
  :data:`LABEL_SMOOTHING`) from :data:`LP_FT_BELOW_PER_CLASS` to
  :data:`LP_FT_FAST_FROM_PER_CLASS` training images a class, ``lp_ft`` (a linear
  probe, then everything) at ``full``'s LRs (:data:`LP_FT_FAST_LR`) below and above: at
  10 images a class ``lp_ft`` at 1e-2/1e-3 was 1.4 points ahead of ``full`` and 1.7 ahead
  of ``lp_ft`` at its own 1e-3/1e-4, at 30 a class ``full`` was 0.5 to 1.6 points ahead of
  it (tied on photos; with label smoothing 0.6 to 3.5 points, photos included), and at 100 and
  1,000 a class ``lp_ft`` was 0.4 and 1.0 points ahead of ``full`` in half its time (its
  probe half trains on cached features); means of two seeds each, docs/recipes.md.
- **Batch size**: about ``N / 16`` images (a power of two, 16..256), so a small data set
  still gets some optimizer steps per epoch and a large one uses the CPU's cores well; on
  the CPU at most :data:`BATCH_PIXELS` pixels a batch (64 images at 224 px), since the
  training activations grow with the batch while the images a second do not
  (EfficientNet-Lite0 at 224 px: 5.8 GB peak memory at 64, 20.2 GB at 256).
- **Length**: ``round(1000 / sqrt(N))`` epochs, within 3..60: small data sets need many
  passes (30 images a class: about 58 epochs, ~1,100 steps), large ones few (60,000
  images: 4 epochs). Expressed in optimizer steps in the log and the report.
- **Image size**: the largest multiple of 32 up to the backbone's pretrained size whose
  default-length run stays within a compute budget (:data:`PIXEL_BUDGET`: image passes x side^2, per
  device type), and at least the images' own median size rounded up to a multiple of
  32. Small images gain from being upsampled toward the size the backbone was pretrained
  at (28 px FashionMNIST at 10 images a class: 71% at 32 px, 77% at 96 px), but the cost
  grows with the square of the side, so a small data set is upsampled more than a large
  one: 100 images train at 160 px, 55,000 at their own 32 px. The size depends on the data
  and the device only, not on a run's given length: a quick trial, a longer run and a
  resumed one train at the same size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transferkit import _validate
from transferkit.recipes.table import DEFAULT_RECIPE

__all__ = [
    "LP_FT_BELOW_PER_CLASS",
    "LP_FT_FAST_FROM_PER_CLASS",
    "LP_FT_FAST_LR",
    "LABEL_SMOOTHING",
    "BATCH_PIXELS",
    "PIXEL_BUDGET",
    "MAX_BATCH",
    "MAX_EPOCHS",
    "MIN_BATCH",
    "MIN_EPOCHS",
    "Choice",
    "batch_size_choice",
    "default_batch_size",
    "default_epochs",
    "default_image_size",
    "default_passes",
    "default_recipe",
    "default_label_smoothing",
    "default_recipe_lr",
    "image_size_choice",
]

#: Fewer training images a class than this: the default recipe is ``lp_ft``, else ``full``
#: (measured at 10 and 30 a class: docs/recipes.md, benchmarks/small_data.py).
LP_FT_BELOW_PER_CLASS = 20
#: At least this many training images a class: the default is ``lp_ft`` again; measured at
#: 30, 100 and 1,000 a class.
LP_FT_FAST_FROM_PER_CLASS = 100
#: The head LR of the default ``lp_ft`` on either side of ``full``'s tier: ``full``'s own
#: (the body's follows at ``lp_ft``'s ratio, 0.1), not ``lp_ft``'s 1e-3
#: (:func:`default_recipe_lr`).
LP_FT_FAST_LR = 1e-2
#: Label smoothing of the default ``full`` (its tier, :func:`default_label_smoothing`):
#: 0.1 to 2.2 points ahead of none at 30 images a class (measured: docs/recipes.md).
LABEL_SMOOTHING = 0.1
MIN_BATCH, MAX_BATCH = 16, 256
MIN_EPOCHS, MAX_EPOCHS = 3, 60
_EPOCH_SCALE = 1000.0  # epochs = _EPOCH_SCALE / sqrt(N), clipped (measured: docs/recipes.md)
_SIZE_STEP = 32  # stored sizes are multiples of this (the backbones' total stride)
#: Pixel passes (training images seen x side^2) a default run may spend when the image size
#: is chosen, per device type: on the 2-core CPU, 2e8 is about 5 minutes of
#: EfficientNet-Lite0 (measured: docs/recipes.md, benchmarks/small_data.py).
PIXEL_BUDGET: dict[str, float] = {"cpu": 2e8, "mps": 2e9, "cuda": 2e10}
#: The most pixels (batch x side^2) a default batch holds, per device type: 64 images at
#: 224 px on the CPU. Training activations grow with the batch (EfficientNet-Lite0 at
#: 224 px, one thread: peak RSS 5.8 GB at a batch of 64, 20.2 GB at 256, which trained no
#: faster per image; docs/benchmarks.md). Devices without an entry are not capped (not
#: measured).
BATCH_PIXELS: dict[str, float] = {"cpu": 64 * 224 * 224}


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


def default_batch_size(num_samples: int, image_size: int | None = None,
                       device: str = "cpu") -> int:
    """Return the default batch size for ``num_samples`` training images.

    Args:
        num_samples: The training images.
        image_size: Their training side in px; with it, the batch holds at most the
            device type's :data:`BATCH_PIXELS` (a power of two, at least
            :data:`MIN_BATCH`).
        device: The device type (``"cpu"``, ``"cuda"``...).

    Example:
        >>> default_batch_size(100), default_batch_size(300), default_batch_size(55000)
        (16, 16, 256)
        >>> default_batch_size(55000, 32), default_batch_size(55000, 128)
        (256, 128)
        >>> default_batch_size(55000, 224), default_batch_size(55000, 224, device="cuda")
        (64, 256)
    """
    n = _validate.positive_int("num_samples", num_samples)
    power = 2 ** round(math.log2(max(1.0, n / 16)))
    batch = int(min(MAX_BATCH, max(MIN_BATCH, power)))
    cap = BATCH_PIXELS.get(device)
    if image_size is not None and cap is not None:
        side = _validate.positive_int("image_size", image_size)
        fits = 2 ** math.floor(math.log2(max(1.0, cap / side**2)))
        batch = min(batch, max(MIN_BATCH, fits))
    return batch


def batch_size_choice(num_samples: int, image_size: int | None = None,
                      device: str = "cpu") -> Choice:
    """Return :func:`default_batch_size` (at most ``num_samples``) as a :class:`Choice`.

    Example:
        >>> print(batch_size_choice(55000, 32))
        batch_size 256: default for 55000 training images (about N/16, 16..256)
        >>> print(batch_size_choice(55000, 224))  # doctest: +NORMALIZE_WHITESPACE
        batch_size 64: default for 55000 training images (about N/16, 16..256), at most
        3.2e+06 pixels a batch on the cpu (BATCH_PIXELS): 64 at 224 px
    """
    n = _validate.positive_int("num_samples", num_samples)
    value = min(default_batch_size(n, image_size, device), n)
    why = f"default for {n} training images (about N/16, 16..256)"
    if value < min(default_batch_size(n), n):
        why += (f", at most {BATCH_PIXELS[device]:.2g} pixels a batch on the {device} "
                f"(BATCH_PIXELS): {value} at {image_size} px")
    return Choice("batch_size", value, why)


def default_epochs(num_samples: int) -> int:
    """Return the default number of epochs for ``num_samples`` training images.

    Example:
        >>> default_epochs(100), default_epochs(300), default_epochs(1000), default_epochs(55000)
        (60, 58, 32, 4)
    """
    n = _validate.positive_int("num_samples", num_samples)
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(_EPOCH_SCALE / math.sqrt(n)))))


def default_recipe(num_samples: int | None, num_classes: int) -> Choice:
    """Return the default recipe for ``num_samples`` training images of ``num_classes``.

    ``lp_ft`` below :data:`LP_FT_BELOW_PER_CLASS` images a class (a good head before the
    body moves), ``full`` from there, ``lp_ft`` again from
    :data:`LP_FT_FAST_FROM_PER_CLASS` a class (as good, in about half the time); both
    ``lp_ft`` tiers at the head LR of :func:`default_recipe_lr`;
    :data:`~transferkit.recipes.table.DEFAULT_RECIPE` where the number of images is not
    known (a loader without a length).

    Example:
        >>> [default_recipe(n, 10).value for n in (100, 300, 1000)]
        ['lp_ft', 'full', 'lp_ft']
        >>> default_recipe(100, 10).why
        "100 training images, 10 a class (under 20): a probe, then everything at full's LRs"
    """
    if num_samples is None:
        return Choice("recipe", DEFAULT_RECIPE, "the default (the number of training images is "
                                                "not known)")
    n, per_class, tier = _tier(num_samples, num_classes)
    if tier == "few":
        return Choice("recipe", "lp_ft", f"{n} training images, {per_class:.3g} a class (under "
                                         f"{LP_FT_BELOW_PER_CLASS}): a probe, then everything "
                                         "at full's LRs")
    if tier == "many":
        return Choice("recipe", "lp_ft", f"{n} training images, {per_class:.3g} a class (at "
                                         f"least {LP_FT_FAST_FROM_PER_CLASS}): a probe, then "
                                         "everything at full's LRs, in about half its time")
    return Choice("recipe", "full", f"{n} training images, {per_class:.3g} a class "
                                    f"({LP_FT_BELOW_PER_CLASS} to {LP_FT_FAST_FROM_PER_CLASS}): "
                                    "everything trains")


def default_recipe_lr(num_samples: int | None, num_classes: int) -> Choice | None:
    """Return the head LR that goes with :func:`default_recipe`, or ``None`` for the recipe's own.

    Where the default is ``lp_ft`` (below :data:`LP_FT_BELOW_PER_CLASS` and from
    :data:`LP_FT_FAST_FROM_PER_CLASS` images a class) it fine-tunes at
    :data:`LP_FT_FAST_LR` (its body at a tenth of it) instead of its own 1e-3; ``full``
    keeps its own.

    Example:
        >>> default_recipe_lr(300, 10) is None
        True
        >>> print(default_recipe_lr(1000, 10))
        lr 0.01: 100 a class (at least 100): lp_ft's fine-tuning at full's head LR
        >>> print(default_recipe_lr(100, 10))
        lr 0.01: 10 a class (under 20): lp_ft's fine-tuning at full's head LR
    """
    if num_samples is None:
        return None
    _, per_class, tier = _tier(num_samples, num_classes)
    where = {"few": f"under {LP_FT_BELOW_PER_CLASS}",
             "many": f"at least {LP_FT_FAST_FROM_PER_CLASS}"}.get(tier)
    if where is None:  # full's tier: the recipe's own LRs
        return None
    return Choice("lr", LP_FT_FAST_LR, f"{per_class:.3g} a class ({where}): lp_ft's fine-tuning "
                                       "at full's head LR")


def default_label_smoothing(num_samples: int | None, num_classes: int) -> Choice | None:
    """Return the label smoothing that goes with :func:`default_recipe`, or ``None`` for none.

    Where the default is ``full`` (from :data:`LP_FT_BELOW_PER_CLASS` to
    :data:`LP_FT_FAST_FROM_PER_CLASS` images a class) it trains with
    :data:`LABEL_SMOOTHING`. Unsmoothed, its 60-odd epochs at 1e-2/1e-3 grow so confident
    that a few wrong validation images dominate the validation loss, and the epoch it
    picks is partly luck; smoothed, ``benchmarks/small_data.py`` measured 0.1 (digits),
    1.9 (FashionMNIST) and 2.2 points (photos) more at 30 images a class, each of two
    seeds ahead. The ``lp_ft`` tiers were not measured with it and get none.

    Example:
        >>> print(default_label_smoothing(300, 10))  # doctest: +NORMALIZE_WHITESPACE
        label_smoothing 0.1: 30 a class (20 to 100): full's default, measured ahead of
        none on every small data set of that size
        >>> default_label_smoothing(100, 10) is None
        True
    """
    if num_samples is None:
        return None
    _, per_class, tier = _tier(num_samples, num_classes)
    if tier != "full":
        return None
    return Choice("label_smoothing", LABEL_SMOOTHING,
                  f"{per_class:.3g} a class ({LP_FT_BELOW_PER_CLASS} to "
                  f"{LP_FT_FAST_FROM_PER_CLASS}): full's default, measured ahead of none on "
                  "every small data set of that size")


def _tier(num_samples: int, num_classes: int) -> tuple[int, float, str]:
    """The checked image count, the images a class, and their tier: ``"few"`` (below
    :data:`LP_FT_BELOW_PER_CLASS`), ``"full"`` or ``"many"`` (from
    :data:`LP_FT_FAST_FROM_PER_CLASS`): the one place :func:`default_recipe`,
    :func:`default_recipe_lr` and :func:`default_label_smoothing` read the boundaries."""
    n = _validate.positive_int("num_samples", num_samples)
    per_class = n / _validate.positive_int("num_classes", num_classes)
    if per_class < LP_FT_BELOW_PER_CLASS:
        return n, per_class, "few"
    return n, per_class, "many" if per_class >= LP_FT_FAST_FROM_PER_CLASS else "full"


def default_passes(num_samples: int) -> int:
    """Return the images a default-length run sees: ``num_samples * default_epochs``.

    The image size is chosen for this length, whatever length a run is given, so a short
    trial run, a longer one and a resumed one all train at the same size.

    Example:
        >>> default_passes(100), default_passes(300), default_passes(55000)
        (6000, 17400, 220000)
    """
    return _validate.positive_int("num_samples", num_samples) * default_epochs(num_samples)


def default_image_size(native: int | Sequence[int], pretrained: int | Sequence[int] | None,
                       *, passes: int | None = None, device: str = "cpu") -> int:
    """Return the default (square) training size for images of median size ``native``.

    Args:
        native: The images' median size, ``(height, width)`` or one int.
        pretrained: The backbone's pretrained input size (``None``: no cap but 224).
        passes: Images a default-length run sees (:func:`default_passes`); ``None``: the
            images' own size, rounded up to a multiple of 32 (the stored size).
        device: The device type whose :data:`PIXEL_BUDGET` applies.

    Example:
        >>> default_image_size((28, 28), (224, 224)), default_image_size((500, 375), 224)
        (32, 224)
        >>> default_image_size((28, 28), 224, passes=6000)   # 100 images, 60 epochs
        160
        >>> default_image_size((28, 28), 224, passes=220_000)   # 55,000 images, 4 epochs
        32
    """
    h, w = _validate.image_size(native, name="native")
    cap = max(_validate.image_size(pretrained or 224, name="pretrained"))
    side = _SIZE_STEP * math.ceil(max(h, w) / _SIZE_STEP)
    base = int(min(max(cap, _SIZE_STEP), max(_SIZE_STEP, side)))
    if passes is None:
        return base
    budget = PIXEL_BUDGET.get(device, PIXEL_BUDGET["cpu"])
    fits = [s for s in range(base, cap + 1, _SIZE_STEP) if passes * s * s <= budget]
    return max(fits, default=base)


def image_size_choice(native: Sequence[int], pretrained: Sequence[int] | None,
                      seen: str, *, passes: int | None = None, device: str = "cpu") -> Choice:
    """Return :func:`default_image_size` as a :class:`Choice`, its reason in one line.

    ``seen`` says where ``native`` was read (``"the images are"``, ``"median image"``).

    Example:
        >>> choice = image_size_choice((28, 28), (224, 224), "median image")
        >>> choice.value, choice.why.split(": ")[0]
        (32, 'median image 28x28')
        >>> print(image_size_choice((28, 28), (224, 224), "the images are", passes=6000).why)
        the images are 28x28; 6000 image passes x 160^2 px: the largest multiple of 32 \
within the cpu budget of 2e+08 pixel passes, at most the backbone's 224 px
    """
    h, w = _validate.image_size(native, name="native")
    cap = max(_validate.image_size(pretrained or 224, name="pretrained"))
    value = default_image_size((h, w), pretrained, passes=passes, device=device)
    if passes is None:
        why = f"{seen} {h}x{w}: rounded up to a multiple of 32, at most the backbone's {cap} px"
    else:
        budget = PIXEL_BUDGET.get(device, PIXEL_BUDGET["cpu"])
        why = (f"{seen} {h}x{w}; {passes} image passes x {value}^2 px: the largest multiple "
               f"of 32 within the {device if device in PIXEL_BUDGET else 'cpu'} budget of "
               f"{budget:.0e} pixel passes, at most the backbone's {cap} px")
        if value * value * passes > budget:
            why = (f"{seen} {h}x{w}, rounded up to a multiple of 32 (at most the backbone's "
                   f"{cap} px): already past the {budget:.0e} pixel passes of the budget "
                   f"with {passes} image passes")
    return Choice("image_size", value, why)
