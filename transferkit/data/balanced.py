"""Class-balanced sampling: every class drawn equally often, with replacement.

On imbalanced data a plain shuffle shows the rare classes rarely; drawing every sample
with probability ``1 / (number of classes present * its class's size)`` shows each class
equally often on average (the rare samples repeat, the common ones are subsampled).
:func:`balanced_indices` is the one rule; :class:`BalancedSampler` serves it to a
``DataLoader`` and ``TensorLoader(balanced=True)`` to transferkit's own pipeline.

A draw is a pure function of ``(seed, epoch)``, so a resumed run draws the same epoch
again, and every DDP rank draws the same list (then keeps its own share of it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import WeightedRandomSampler

from transferkit import _validate
from transferkit.errors import DataError

__all__ = ["BalancedSampler", "balanced_indices", "class_balanced_weights"]


def _as_labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    tensor = torch.as_tensor(labels)
    if tensor.numel() == 0:
        raise DataError("labels is empty; a balanced draw needs at least one sample.")
    if tensor.dim() != 1 or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise DataError(
            f"labels must be a 1-D sequence of integer class indices, got shape "
            f"{tuple(tensor.shape)} and dtype {tensor.dtype}; for one-hot labels pass "
            "labels.argmax(1)."
        )
    if bool((tensor < 0).any()):
        raise DataError(f"labels must be >= 0, got {int(tensor.min())}.")
    return tensor.long()


def class_balanced_weights(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Return one weight per sample: ``1 / (classes present * size of its class)``.

    The weights sum to 1 and every class present holds the same total weight, so a draw
    by these weights picks each class with the same probability.

    Args:
        labels: The class index of every sample, ``[N]``.

    Raises:
        DataError: ``labels`` is empty, not 1-D integers, or negative.

    Example:
        >>> class_balanced_weights([0, 0, 0, 1]).tolist()
        [0.1666666716337204, 0.1666666716337204, 0.1666666716337204, 0.5]
    """
    labels = _as_labels(labels)
    counts = torch.bincount(labels)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[labels].double()).float()


def balanced_indices(
    labels: torch.Tensor | Sequence[int], num_samples: int, *, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``num_samples`` sample indices, every class equally likely, with replacement.

    Args:
        labels: The class index of every sample, ``[N]``.
        num_samples: How many indices to draw.
        generator: The random generator of the draw (seed it for a reproducible draw).

    Raises:
        DataError: Bad ``labels`` (see :func:`class_balanced_weights`).
        ConfigError: ``num_samples`` is not a positive integer.

    Example:
        >>> idx = balanced_indices([0] * 90 + [1] * 10, 1000,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> round(float((idx >= 90).float().mean()), 1)   # class 1 is half of the draw
        0.5
    """
    num_samples = _validate.positive_int("num_samples", num_samples, example=1000)
    weights = class_balanced_weights(labels)
    return torch.multinomial(weights, num_samples, replacement=True, generator=generator)


class BalancedSampler(WeightedRandomSampler):
    """A ``DataLoader`` sampler that draws every class equally often, with replacement.

    A ``WeightedRandomSampler`` with the weights of :func:`class_balanced_weights`, whose
    draw is a pure function of ``(seed, epoch)``: call ``set_epoch(epoch)`` every epoch
    (the Trainer does), and the epoch's indices are drawn from a generator seeded by
    ``seed + epoch``. Under DDP the Trainer draws the whole list on every rank from a
    generator seeded by ``Trainer(seed=...) + epoch`` (the ``generator`` attribute, as for
    every sampler, see :mod:`transferkit.train.samplers`) and gives each rank its share;
    with ``seed`` equal to the Trainer's, one process draws the same list.

    Args:
        labels: The class index of every sample of the data set, ``[N]``.
        num_samples: Indices per epoch; default ``N`` (an epoch as long as a plain one).
        seed: Seed of the draws.

    Raises:
        DataError: Bad ``labels``.
        ConfigError: Bad ``num_samples`` or ``seed``.

    Example:
        >>> sampler = BalancedSampler([0] * 90 + [1] * 10, seed=0)
        >>> sampler.set_epoch(0)
        >>> drawn = list(sampler)
        >>> len(drawn), sum(i >= 90 for i in drawn) > 30    # class 1: about half, not 10%
        (100, True)
        >>> drawn == list(sampler)                          # the same epoch, the same draw
        True
    """

    def __init__(
        self,
        labels: torch.Tensor | Sequence[int],
        *,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        weights = class_balanced_weights(labels)
        n = int(weights.shape[0]) if num_samples is None else _validate.positive_int(
            "num_samples", num_samples, example=1000)
        self.seed = _validate.integer("seed", seed, minimum=0)
        super().__init__(weights, n, replacement=True, generator=None)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw the next iteration yields."""
        self.epoch = _validate.integer("epoch", epoch, minimum=0)

    def __iter__(self) -> Iterator[int]:
        """Yield this epoch's indices (drawn from ``generator`` when the Trainer sets one)."""
        generator = self.generator
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples, replacement=True,
                                  generator=generator)
        return iter(drawn.tolist())
