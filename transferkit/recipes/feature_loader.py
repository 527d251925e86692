"""Serve cached tensors as batches: :class:`FeatureLoader`, batched like the images were.

The Trainer trains on any iterable of ``(inputs, targets)``; a :class:`FeatureLoader`
serves what :func:`~transferkit.recipes.cache.cache_inputs` computed once, reshuffled every
epoch as a pure function of ``(seed, epoch)``, with ``set_epoch(epoch, start_batch=...)``
so that the Trainer's exact resume works. :func:`loader_like` batches the cache exactly as
the loader the images came from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from transferkit import _validate
from transferkit.data.pipeline import TensorLoader
from transferkit.errors import ConfigError, DataError
from transferkit.recipes.cache import plain_loader

__all__ = ["FeatureLoader", "batch_size_of", "loader_like"]


class FeatureLoader:
    """Iterate over batches of cached features, reshuffled every epoch.

    Batches of ``[N, D]`` features are ``(features.view(B, D, 1, 1), labels)``: the Trainer
    takes image-shaped inputs, and :class:`HeadOnFeatures` reshapes them back. ``[N, C, H, W]``
    features (cached stage inputs, see :func:`~transferkit.recipes.cache.split_at_stage`) are
    yielded as stored.
    The order of an epoch is a pure function of ``(seed, epoch)`` and
    ``set_epoch(epoch, start_batch=...)`` is supported, so the Trainer's exact resume works.

    Args:
        features: ``[N, D]`` or ``[N, C, H, W]`` float tensor.
        labels: ``[N]`` integer class indices, or ``[N, C]`` float soft or multi-hot targets.
        batch_size: Samples per batch.
        shuffle: A new permutation every epoch (else the stored order).
        seed: Seed of the permutations.
        drop_last: Drop the last, smaller batch.
        order: Optional ``epoch -> indices`` function that decides the order instead
            (used to visit samples in exactly the order of a ``TensorLoader``).
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        order: Any = None,
    ) -> None:
        batch_size = _validate.positive_int("batch_size", batch_size, example=64)
        if not isinstance(features, torch.Tensor) or features.dim() not in (2, 4):
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
            raise DataError(
                f"features must be a [N, D] or [N, C, H, W] tensor, got shape {shape}."
            )
        if labels.dim() not in (1, 2) or labels.shape[0] != features.shape[0]:
            raise DataError(
                f"labels must be [N] (or [N, C] targets) with N={features.shape[0]}, got "
                f"{tuple(labels.shape)}."
            )
        if features.shape[0] == 0:
            raise DataError("features is empty (0 samples).")
        self.features = features.float()
        self.labels = labels.float() if labels.dim() == 2 else labels.long()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, int(seed)
        self.drop_last, self.order = drop_last, order
        self.epoch, self._start_batch = 0, 0

    def __len__(self) -> int:
        """Return the number of batches per epoch."""
        n = self.features.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        """Select the epoch the next iteration yields (and the batch it starts at)."""
        if epoch < 0 or start_batch < 0:
            raise ConfigError(f"epoch={epoch!r} and start_batch={start_batch!r} must be >= 0.")
        self.epoch, self._start_batch = int(epoch), int(start_batch)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """Return the sample order of ``epoch`` (default: the next one)."""
        epoch = self.epoch if epoch is None else epoch
        n = self.features.shape[0]
        if self.order is not None:
            return torch.as_tensor(self.order(epoch)).long()
        if not self.shuffle:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of the current epoch, then advance to the next epoch."""
        epoch, start = self.epoch, self._start_batch
        self.epoch, self._start_batch = epoch + 1, 0
        order = self.indices(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.features.index_select(0, idx)
            if x.dim() == 2:
                x = x.view(x.shape[0], x.shape[1], 1, 1)
            yield x, self.labels.index_select(0, idx)


def batch_size_of(data: Any) -> int:
    """Return the batch size of ``data``: its ``batch_size``, else its first batch's."""
    size = getattr(data, "batch_size", None)
    if isinstance(size, int) and size > 0:
        return size
    x = next(iter(plain_loader(data)))[0]
    return int(x.shape[0])


def loader_like(
    data: Any, features: torch.Tensor, labels: torch.Tensor, *, seed: int = 0
) -> FeatureLoader:
    """Return a :class:`FeatureLoader` over features extracted from ``data``, batched like it.

    For a ``TensorLoader``, every epoch visits the samples in exactly the loader's order
    (same batch size, same permutation per ``(seed, epoch)``); for a DataLoader, its batch
    size, and shuffling (seeded by ``seed``) when it shuffles; any other iterable is
    shuffled, in batches the size of its first batch.
    """
    feats = features
    if isinstance(data, TensorLoader):  # same permutation per epoch as the images would get
        order_of = data.copy(augment=None, drop_last=False, rank=0, world_size=1,
                             even_shards=False)
        return FeatureLoader(feats, labels, batch_size=data.batch_size, drop_last=data.drop_last,
                             order=order_of.indices)
    sampler = getattr(data, "sampler", None)
    shuffle = sampler is None or isinstance(sampler, torch.utils.data.RandomSampler)
    return FeatureLoader(feats, labels, batch_size=batch_size_of(data), shuffle=shuffle, seed=seed,
                         drop_last=bool(getattr(data, "drop_last", False)))
