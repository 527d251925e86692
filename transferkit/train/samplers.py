"""Per-rank shares of a DataLoader's own sampler, drawn the same on every rank.

Under DDP each rank must see its own part of one list of indices. For a sampler of the
user's (a ``SubsetRandomSampler`` train/validation split, a ``WeightedRandomSampler``, a
batch sampler), every rank draws the sampler's whole list with its random generator
seeded by ``(seed, epoch)`` (:func:`draw`), so every rank draws the same list, and keeps
the items ``rank, rank + W, rank + 2W, ...`` of it, as Lightning's
``DistributedSamplerWrapper`` does. The draw is a pure function of ``(seed, epoch)``: a
resumed run draws the same epoch again.

For training the list is padded (by repeating its first items, as ``DistributedSampler``
does) to a multiple of the world size, so every rank takes the same number of steps; for
evaluation it is not, so each item counts exactly once. :func:`shard_loader` rebuilds a
DataLoader over this rank's share (the rules are listed in
:mod:`transferkit.train.distributed`).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from transferkit.errors import ConfigError

__all__ = [
    "EvalShardSampler",
    "ShardedBatchSampler",
    "ShardedSampler",
    "draw",
    "find_share",
    "fingerprint",
    "shard_loader",
]

T = TypeVar("T")


class EvalShardSampler(Sampler[int]):
    """Give rank ``r`` the indices ``r, r + W, r + 2W, ...`` without padding.

    Every index belongs to exactly one rank, so summed metrics count each sample once.

    Args:
        length: The data set size.
        rank: This process's rank.
        world_size: The number of processes.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return max(0, math.ceil((self.length - self.rank) / self.world_size))


def _generator_holders(sampler: Any) -> list[Any]:
    # A batch sampler draws through the sampler it batches (BatchSampler.sampler).
    inner = getattr(sampler, "sampler", None)
    return [obj for obj in (sampler, inner) if obj is not None and hasattr(obj, "generator")]


def draw(sampler: Iterable[T], *, seed: int, epoch: int) -> list[T]:
    """Return all the items ``sampler`` yields, drawn from generators seeded by ``(seed, epoch)``.

    The sampler's ``generator`` attribute (that of ``RandomSampler``,
    ``SubsetRandomSampler``, ``WeightedRandomSampler``, and of the sampler inside a
    ``BatchSampler``) is set to a generator seeded by ``seed + epoch`` for the draw, and
    torch's global generator too (for samplers that draw from it); both are restored
    afterwards, so the draw shifts no random stream. Python's and NumPy's generators are
    not touched.

    Args:
        sampler: A sampler or a batch sampler.
        seed: The run's seed (the same on every rank).
        epoch: The epoch.
    """
    holders = _generator_holders(sampler)
    saved = [obj.generator for obj in holders]
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed + epoch)
        try:
            for obj in holders:
                obj.generator = torch.Generator().manual_seed(seed + epoch)
            return list(sampler)
        finally:
            for obj, generator in zip(holders, saved, strict=True):
                obj.generator = generator


def fingerprint(items: list[Any]) -> int:
    """Return a checksum of a drawn list (of indices, or of batches of indices)."""
    try:
        if items and isinstance(items[0], (list, tuple, torch.Tensor)):  # batches
            parts = [torch.as_tensor(item, dtype=torch.int64).flatten() for item in items]
            sizes = torch.tensor([len(p) for p in parts], dtype=torch.int64)
            data = torch.cat([sizes, *parts])
        else:
            data = torch.as_tensor(items, dtype=torch.int64)
        return zlib.crc32(data.numpy().tobytes())
    except (TypeError, ValueError, RuntimeError):  # keys that are not integers
        return zlib.crc32(repr(items).encode())


def _warn_set_aside_generator(sampler: Any, split: str) -> None:
    """Warn that the ``generator`` a user gave ``sampler`` will not order the data."""
    if any(obj.generator is not None for obj in _generator_holders(sampler)):
        warnings.warn(
            f"The {split} loader's {type(sampler).__name__} has a generator of its own; the "
            "Trainer draws its indices from a generator seeded by (seed, epoch) instead, so "
            "that every rank draws the same ones and a resumed run draws the same epoch "
            "again. HINT: pass Trainer(seed=...) to change the order, and build the sampler "
            "(or the DataLoader) without generator= to silence this warning.",
            stacklevel=5,  # the user's fit() or evaluate()
        )


class _Share:
    """Shared logic: draw the whole list, pad it for training, keep every W-th item."""

    def __init__(
        self, sampler: Any, rank: int, world_size: int, *, seed: int, even: bool
    ) -> None:
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.seed, self.even, self.epoch = seed, even, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw the next iteration uses (and tell the user's sampler)."""
        self.epoch = int(epoch)
        for obj in (self.sampler, getattr(self.sampler, "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
                break

    def drawn(self) -> list[Any]:
        """Return the whole list of this epoch, the same on every rank (padded for training)."""
        items = draw(self.sampler, seed=self.seed, epoch=self.epoch)
        if self.even and items:
            total = math.ceil(len(items) / self.world_size) * self.world_size
            items = (items * math.ceil(total / len(items)))[:total]
        return items

    def __iter__(self) -> Iterator[Any]:
        return iter(self.drawn()[self.rank :: self.world_size])

    def __len__(self) -> int:
        n = len(self.sampler)
        if self.even:
            return math.ceil(n / self.world_size)
        return max(0, math.ceil((n - self.rank) / self.world_size))


class ShardedSampler(_Share, Sampler[int]):
    """This rank's share of the indices of another sampler, drawn the same on every rank.

    Args:
        sampler: The user's sampler (any iterable of indices).
        rank: This process's rank.
        world_size: The number of processes.
        seed: The seed of the draw (the same on every rank).
        even: Pad the list to a multiple of ``world_size`` (training) or not (evaluation).
    """


class ShardedBatchSampler(_Share, Sampler[list[int]]):
    """This rank's share of the batches of a batch sampler, drawn the same on every rank.

    Batches stay whole: rank ``r`` gets batches ``r, r + W, ...`` of the epoch's list.

    Args:
        sampler: The user's batch sampler (any iterable of lists of indices).
        rank: This process's rank.
        world_size: The number of processes.
        seed: The seed of the draw (the same on every rank).
        even: Pad the list to a multiple of ``world_size`` (training) or not (evaluation).
    """


def find_share(data: Any) -> ShardedSampler | ShardedBatchSampler | None:
    """Return the share sampler of a loader rebuilt by :func:`shard_loader`, if it has one."""
    for sampler in (getattr(data, "sampler", None), getattr(data, "batch_sampler", None)):
        if isinstance(sampler, (ShardedSampler, ShardedBatchSampler)):
            return sampler
    return None


def _rebuild(loader: DataLoader, **sampling: Any) -> DataLoader:
    # DataLoader forbids replacing its sampler after construction, so build a twin that
    # differs only in ``sampling`` (a sampler, or a batch sampler).
    kwargs: dict[str, Any] = {
        "collate_fn": loader.collate_fn,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
    }
    if "sampler" in sampling:
        kwargs.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
    for name in ("pin_memory_device", "in_order"):  # newer DataLoader options, if present
        if hasattr(loader, name):
            kwargs[name] = getattr(loader, name)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
        kwargs["multiprocessing_context"] = loader.multiprocessing_context
    return DataLoader(loader.dataset, **kwargs, **sampling)


def _shards_itself(sampler: Any, rank: int, world_size: int, split: str) -> bool:
    """Whether ``sampler`` is a DistributedSampler for this rank (raise if for another)."""
    if not isinstance(sampler, DistributedSampler):
        return False
    if (sampler.rank, sampler.num_replicas) == (rank, world_size):
        return True
    raise ConfigError(
        f"The {split} loader's DistributedSampler is built for rank {sampler.rank} of "
        f"{sampler.num_replicas}, but this process is rank {rank} of {world_size}. Build "
        f"it with num_replicas={world_size}, rank={rank}, or pass a DataLoader without "
        "it: the Trainer shards for you."
    )


def _covers_dataset(sampler: Any, loader: DataLoader) -> bool:
    # Exactly torch's own sampler over the whole data set (not a subclass that draws
    # otherwise, not replacement or another number of samples).
    if type(sampler) is SequentialSampler:
        return sampler.data_source is loader.dataset
    if type(sampler) is RandomSampler:
        return (
            sampler.data_source is loader.dataset
            and not sampler.replacement
            and sampler.num_samples == len(loader.dataset)  # type: ignore[arg-type]
        )
    return False


def shard_loader(
    loader: DataLoader, rank: int, world_size: int, *, seed: int, train: bool
) -> DataLoader:
    """Return ``loader`` rebuilt with this rank's share of its own sampler (see the module).

    With one process only a plain shuffle is rebuilt (seeded by ``(seed, epoch)``); every
    other loader is returned as it is.

    Args:
        loader: A DataLoader over a map-style data set.
        rank: This process's rank.
        world_size: The number of processes.
        seed: The seed of the draws (the same on every rank).
        train: Equal shares, padded (training), or shares that never repeat (evaluation).

    Raises:
        ConfigError: The loader holds a DistributedSampler for another rank or world size.
    """
    split = "train" if train else "evaluation"
    enabled = world_size > 1
    if loader.batch_size is None:  # a batch sampler of the user's
        batches = loader.batch_sampler
        inner = getattr(batches, "sampler", None)
        if _shards_itself(inner, rank, world_size, split) or not enabled:
            return loader
        _warn_set_aside_generator(batches, split)
        share = ShardedBatchSampler(batches, rank, world_size, seed=seed, even=train)
        return _rebuild(loader, batch_sampler=share)
    sampler = loader.sampler
    if _shards_itself(sampler, rank, world_size, split):
        return loader
    plain = _covers_dataset(sampler, loader)
    if train and plain and type(sampler) is RandomSampler:
        _warn_set_aside_generator(sampler, split)
        return _rebuild(loader, sampler=DistributedSampler(
            loader.dataset, num_replicas=world_size, rank=rank, shuffle=True,
            seed=seed, drop_last=False,
        ))
    if not enabled:
        return loader
    if plain and type(sampler) is SequentialSampler:
        n = len(loader.dataset)  # type: ignore[arg-type]
        order: Sampler[int] = (
            DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                               shuffle=False, drop_last=False)
            if train
            else EvalShardSampler(n, rank, world_size)
        )
        return _rebuild(loader, sampler=order)
    _warn_set_aside_generator(sampler, split)
    share = ShardedSampler(sampler, rank, world_size, seed=seed, even=train)
    return _rebuild(loader, sampler=share)
