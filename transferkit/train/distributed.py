"""Multi-process training with PyTorch DDP, as launched by ``torchrun``.

The Trainer calls :func:`setup` once; when ``WORLD_SIZE`` > 1 it initialises
``torch.distributed`` (NCCL on CUDA, Gloo on CPU). Data is sharded per rank here:

* a ``torch.utils.data.DataLoader`` over a map-style data set is rebuilt with a sampler
  that gives each rank its share, and respects the loader's own sampler:

  - a plain shuffle (``shuffle=True``) becomes a per-epoch reshuffle that is a pure
    function of ``(seed, epoch)``, and a plain order (``shuffle=False``) is dealt out
    ``r, r + W, ...``;
  - any other sampler (``SubsetRandomSampler``, ``WeightedRandomSampler``, a
    ``RandomSampler`` with replacement, your own) and any batch sampler is drawn whole on
    every rank from a generator seeded by ``(seed, epoch)``, so every rank draws the same
    list, and each rank keeps its items ``r, r + W, ...`` (batches stay whole; see
    :mod:`transferkit.train.samplers`). :func:`check_same_draw` verifies that the ranks
    did draw the same list;
  - a ``DistributedSampler`` of the user's (also inside a batch sampler) already shards:
    it is used as it is when it is built for this rank, refused otherwise.

  For training every rank gets the same number of batches (DDP needs the same number of
  steps everywhere: the list is padded by repeating its first items, as
  ``DistributedSampler`` does); for evaluation nothing is padded, so every sample is
  counted exactly once even when the data set size is not a multiple of the world size;
* an object with ``rank`` and ``world_size`` attributes (like
  :class:`transferkit.data.pipeline.TensorLoader`) is taken as already sharded when they match
  this process; built for one process, it is split batch by batch (with a warning);
* an object with a ``shard(rank, world_size)`` method is asked for its shard;
* any other iterable of batches (a DataLoader over an ``IterableDataset`` included) is
  split batch by batch (batch ``i`` goes to rank ``i % world_size``); for training the
  tail that cannot be split evenly is dropped.

In a single process, a plain shuffle is rebuilt the same way (reproducible and resumable)
and every other loader is used as it is.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from transferkit.errors import ConfigError, DataError
from transferkit.train.samplers import find_share, fingerprint, shard_loader

if dist.is_available():
    # Imported before any process group exists, on purpose: torch.distributed.nn binds
    # ``group=group.WORLD`` as default arguments when first imported (the first optimizer
    # imports it, through torch._dynamo). Imported after init_process_group, those defaults
    # hold the group for good, so destroy_process_group() cannot join Gloo's threads and
    # the process can abort at exit ("terminate called without an active exception").
    import torch.distributed.nn  # noqa: F401

__all__ = [
    "DistInfo",
    "all_gather_rows",
    "all_reduce_sum",
    "check_same_draw",
    "check_same_length",
    "cleanup",
    "raise_together",
    "setup",
    "shard_for_evaluation",
    "shard_for_training",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: Global rank (0 when not distributed).
        world_size: Number of processes (1 when not distributed).
        local_rank: Rank on this machine; picks the CUDA device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Initialise ``torch.distributed`` when launched with ``WORLD_SIZE`` > 1.

    Uses NCCL for CUDA devices and Gloo otherwise. A process group that is already
    initialised is reused.

    Args:
        device: The training device (its type picks the backend).

    Returns:
        This process's rank, world size and local rank.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    # A group still alive at interpreter shutdown can abort the process (Gloo's worker
    # threads release tensors after Python is gone): destroy it first if the script didn't.
    atexit.register(cleanup)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    log.info("distributed: backend=%s rank=%d world_size=%d", backend, info.rank, info.world_size)
    return info


def cleanup() -> None:
    """Destroy the process group if one is initialised (call once at the end of a script).

    Also runs at exit for a group the Trainer initialised. The group's worker threads stop
    only once nothing holds the group any more: the Trainer drops its DDP wrapper when
    ``fit()`` returns, but a DDP model of your own must be deleted before this call. If you
    initialise the group yourself, import transferkit (or ``torch.distributed.nn``) first:
    that module, imported later, keeps the group as its functions' default argument.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_same_length(data: Iterable[Any], info: DistInfo) -> None:
    """Raise if the ranks would take different numbers of training steps (DDP would hang).

    Args:
        data: This rank's training shard.
        info: This process's place in the run.

    Raises:
        ConfigError: The shards have different numbers of batches.
    """
    if not info.enabled:
        return
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        n = -1
    lengths = torch.tensor([n, -n], dtype=torch.int64)
    dist.all_reduce(lengths, op=dist.ReduceOp.MAX)
    high, low = int(lengths[0]), -int(lengths[1])
    if high != low:
        raise ConfigError(
            f"The ranks hold training shards of {low} to {high} batches; DDP needs the same "
            "number of steps on every rank. Use even shards (e.g. even_shards=True, or a "
            "DataLoader, which the Trainer shards evenly) and a len() on every loader."
        )


def raise_together(error: Exception | None, info: DistInfo) -> None:
    """Raise on every rank if any rank has an ``error``, so that no rank waits forever.

    Args:
        error: This rank's error, or ``None``.
        info: This process's place in the run.

    Raises:
        Exception: ``error`` itself on the rank that had it; ``DataError`` on the others.
    """
    if info.enabled:
        failed = torch.tensor([0 if error is None else 1], dtype=torch.int64)
        dist.all_reduce(failed, op=dist.ReduceOp.SUM)
        if error is None and int(failed) > 0:
            raise DataError(
                f"{int(failed)} other rank(s) found bad data before training; their error "
                "messages say what and how to fix it."
            )
    if error is not None:
        raise error


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no-op when not distributed)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, rank 0 first (itself when alone).

    The ranks may hold different numbers of rows (evaluation shards are not padded): each
    is padded to the longest for the collective and trimmed after it.
    """
    if not info.enabled:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, sizes, strict=True)])


def check_same_draw(data: Iterable[Any], info: DistInfo, split: str = "train") -> None:
    """Raise if the ranks drew different lists from a user's sampler (shares would overlap).

    The Trainer seeds torch's generators for every rank's draw (see
    :func:`~transferkit.train.samplers.draw`); a sampler that draws from another random
    source (Python's ``random``, NumPy) seeded differently per rank would silently give
    ranks overlapping shares. This compares a checksum of this epoch's list on all ranks.

    Args:
        data: This rank's shard, as returned by :func:`shard_for_training` or
            :func:`shard_for_evaluation`.
        info: This process's place in the run.
        split: ``"train"``, ``"val"`` or ``"evaluation"``, for the message.

    Raises:
        ConfigError: The ranks drew different lists.
    """
    if not info.enabled:
        return
    share = find_share(data)
    value = -1 if share is None else fingerprint(share.drawn())
    sums = torch.tensor([value, -value], dtype=torch.int64)
    dist.all_reduce(sums, op=dist.ReduceOp.MAX)
    if int(sums[0]) != -int(sums[1]):
        name = "sampler" if share is None else type(share.sampler).__name__
        raise ConfigError(
            f"The ranks drew different indices from the {split} loader's {name}, so their "
            "shares would overlap and miss samples. The Trainer seeds torch's generators "
            "(the global one, and the sampler's `generator` attribute) by (seed, epoch) for "
            "every rank's draw, so this sampler draws from another source (Python's random, "
            "NumPy). Draw with torch (torch.randperm, torch.multinomial, or a `generator` "
            "attribute), or seed that source the same on every rank."
        )


def _is_map_loader(data: Any) -> bool:
    # A DataLoader over an iterable data set has no sampler to shard: split by batch.
    return isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset)


class _BatchShard:
    """Every ``world_size``-th batch of an iterable, starting at ``rank``."""

    def __init__(self, data: Iterable[Any], rank: int, world_size: int, even: bool) -> None:
        self.data, self.rank, self.world_size, self.even = data, rank, world_size, even

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)

    def _usable(self) -> int | None:
        try:
            n = len(self.data)  # type: ignore[arg-type]
        except TypeError:
            return None
        return (n // self.world_size) * self.world_size if self.even else n

    def __len__(self) -> int:
        usable = self._usable()
        if usable is None:
            raise TypeError("the wrapped iterable has no length")
        return max(0, math.ceil((usable - self.rank) / self.world_size))

    def __iter__(self) -> Iterator[Any]:
        usable = self._usable()
        items = self.data if usable is None else itertools.islice(self.data, usable)
        return itertools.islice(items, self.rank, None, self.world_size)


def _own_sharding(data: Any, info: DistInfo, split: str) -> Iterable[Any] | None:
    """Return ``data`` if it already holds this rank's shard, ``None`` if it has no say."""
    rank, world = getattr(data, "rank", None), getattr(data, "world_size", None)
    if not (isinstance(rank, int) and isinstance(world, int)):
        return None
    if (rank, world) == (info.rank, info.world_size):
        return data
    if world == 1:
        warnings.warn(
            f"The {split} loader was built for 1 process but this run has "
            f"{info.world_size}; every rank now transforms all batches and keeps 1 in "
            f"{info.world_size}. HINT: build the loader after creating the Trainer (which "
            "initialises torch.distributed) or pass rank= and world_size=.",
            stacklevel=3,
        )
        return _BatchShard(data, info.rank, info.world_size, even=split == "train")
    raise ConfigError(
        f"The {split} loader is sharded for rank {rank} of {world}, but this process is "
        f"rank {info.rank} of {info.world_size}. Build it with rank={info.rank}, "
        f"world_size={info.world_size} (or leave both unset under torchrun)."
    )


def shard_for_training(data: Iterable[Any], info: DistInfo, *, seed: int) -> Iterable[Any]:
    """Return this rank's share of the training data (see the module docstring).

    A single-process ``DataLoader`` that shuffles is rebuilt with a sampler seeded by
    ``(seed, epoch)`` too, which makes shuffling reproducible and resumable.

    Args:
        data: A DataLoader, an object with ``shard(rank, world_size)``, or any iterable.
        info: This process's place in the run.
        seed: The shuffling seed (the same on every rank).

    Raises:
        ConfigError: ``data`` is sharded (a DistributedSampler, or ``rank`` and
            ``world_size`` attributes) for another rank or world size.
    """
    if _is_map_loader(data):
        return shard_loader(data, info.rank, info.world_size, seed=seed, train=True)
    own = _own_sharding(data, info, "train")
    if own is not None:
        return own
    if not info.enabled:
        return data
    if hasattr(data, "shard"):
        return data.shard(info.rank, info.world_size)
    return _BatchShard(data, info.rank, info.world_size, even=True)


def shard_for_evaluation(data: Iterable[Any], info: DistInfo, *, seed: int = 0) -> Iterable[Any]:
    """Return this rank's share of evaluation data; the shares never overlap nor pad.

    Args:
        data: A DataLoader, an object with ``shard(rank, world_size)``, or any iterable.
        info: This process's place in the run.
        seed: Seeds the draw of a random sampler of the user's (every evaluation draws
            the same list; the same on every rank).

    Raises:
        ConfigError: ``data`` is sharded for another rank or world size.
    """
    if _is_map_loader(data):
        return shard_loader(data, info.rank, info.world_size, seed=seed, train=False)
    own = _own_sharding(data, info, "evaluation")
    if own is not None:
        return own
    if not info.enabled:
        return data
    if hasattr(data, "shard"):
        return data.shard(info.rank, info.world_size)
    return _BatchShard(data, info.rank, info.world_size, even=False)
