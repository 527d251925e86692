"""An in-memory batch pipeline: uint8 images in one tensor, transformed per batch on device.

Instead of decoding and transforming one sample at a time (``Dataset`` + ``DataLoader``),
:class:`TensorLoader` keeps every image in a single ``uint8`` tensor, draws a batch by
index, moves the small ``uint8`` batch to the training device and transforms the whole
batch there at once: augmentation (random crop with padding, horizontal flip), conversion
to float, antialiased resize, normalisation, random erasing.

Channels are left alone: a 1-channel image stays 1-channel, and the model's adapted input
layer (``adapt(model, ..., in_chans=1)``) reads it. ``mean``/``std`` must therefore have
one value per image channel.

Order and randomness are pure functions of ``(seed, epoch)`` (and the batch index for
augmentation), so a resumed run sees exactly the batches it would have seen, and every
DDP rank agrees on the epoch's permutation and takes a disjoint shard of it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from transferkit import _validate
from transferkit.data.augment import Augment, random_crop_flip, random_erase
from transferkit.data.balanced import balanced_indices
from transferkit.errors import ConfigError, DataError

__all__ = ["Augment", "TensorLoader", "resize_matrix"]

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, epoch, ...) over 63 bits


def _seed_of(*parts: int) -> int:
    seed = 0
    for part in parts:
        seed = (seed * _MIX + int(part) + 1) % (2**63 - 1)
    return seed


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise DataError(
            f"images must be a torch.Tensor, got {type(images).__name__}; "
            f"convert it with torch.as_tensor(images)."
        )
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DataError(
            f"images have dtype {images.dtype}; use uint8 (0..255) or a float dtype (0..1)."
        )
    if images.dim() not in (3, 4):
        raise DataError(
            f"images have shape {tuple(images.shape)}; expected [N, H, W] or [N, C, H, W]."
        )
    if images.shape[0] == 0:
        raise DataError("images is empty (0 samples); pass at least one image.")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    channels = images.shape[1]
    if channels > 4 and images.shape[-1] in (1, 3, 4):
        raise DataError(
            f"images have shape {tuple(images.shape)}, which looks channels-last "
            f"([N, H, W, C]); expected [N, C, H, W]: pass images.permute(0, 3, 1, 2)."
        )
    if images.shape[-1] == 0 or images.shape[-2] == 0 or channels == 0:
        raise DataError(f"images have an empty dimension: shape {tuple(images.shape)}.")
    return images


def _check_labels(labels: torch.Tensor, n: int, num_classes: int | None) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    targets = labels.dim() == 2 and labels.dtype.is_floating_point
    if not targets and (labels.dim() != 1 or labels.dtype.is_floating_point
                        or labels.dtype == torch.bool):
        raise DataError(
            f"labels must be a 1-D integer tensor of class indices, or a [N, num_classes] "
            f"float tensor of soft or multi-hot targets; got shape {tuple(labels.shape)} and "
            f"dtype {labels.dtype}. Convert 0/1 integer or bool targets with labels.float()."
        )
    if labels.shape[0] != n:
        raise DataError(
            f"labels and images differ in length: {labels.shape[0]} labels for {n} images. "
            f"Pass one label per image."
        )
    if targets:
        if num_classes is not None and labels.shape[1] != num_classes:
            raise DataError(
                f"labels have {labels.shape[1]} columns but num_classes={num_classes}; "
                "[N, num_classes] targets need one column per class.")
        if not bool(torch.isfinite(labels).all()):
            raise DataError("labels hold NaN or infinite targets; fix them.")
        return labels.float()
    labels = labels.long()
    if num_classes is not None:
        bad = (labels < 0) | (labels >= num_classes)
        if bool(bad.any()):
            index = int(bad.nonzero()[0])
            raise DataError(
                f"labels must lie in [0, {num_classes}) for num_classes={num_classes}; "
                f"label {int(labels[index])} at index {index} does not "
                f"({int(bad.sum())} such labels). Check num_classes or the labels."
            )
    return labels


def _as_stats(name: str, value: Sequence[float] | None, channels: int) -> torch.Tensor | None:
    if value is None:
        return None
    stats = torch.as_tensor(value, dtype=torch.float32).flatten()
    if stats.numel() != channels:
        raise DataError(
            f"{name} has {stats.numel()} values {tuple(stats.tolist())} but the images have "
            f"{channels} channel(s). Pass one value per channel: channels are not replicated "
            f"here, adapt the model instead (adapt(model, ..., in_chans={channels})) and use "
            f"get_info(model).{name}."
        )
    if name == "std" and bool((stats <= 0).any()):
        raise DataError(f"std must be positive, got {tuple(stats.tolist())}.")
    return stats.view(1, channels, 1, 1)


class TensorLoader:
    """Iterate over ``(images, labels)`` batches of an in-memory data set.

    Args:
        images: ``uint8`` (0..255) or float (0..1) tensor ``[N, H, W]`` or ``[N, C, H, W]``.
        labels: Integer tensor ``[N]`` of class indices, or float ``[N, num_classes]``
            soft or multi-hot targets (multi-label data, see
            :func:`~transferkit.data.image_labels.load_image_labels`).
        batch_size: Samples per batch (per rank).
        shuffle: Draw a new permutation every epoch (else the stored order).
        balanced: Draw every epoch's samples class-balanced instead, with replacement
            (:func:`~transferkit.data.balanced.balanced_indices`: as many as there are
            images, every class equally often on average), seeded by ``(seed, epoch)``
            like the permutation; for imbalanced training data.
        drop_last: Drop this rank's last, smaller batch.
        image_size: Resize to this size (int or ``(h, w)``) with antialiased bilinear
            interpolation; ``None`` keeps the stored size.
        mean: Per-channel mean subtracted after scaling to 0..1 (one value per channel).
        std: Per-channel standard deviation divided by.
        augment: Augmentations to apply; ``None`` applies none (use it for evaluation).
        num_classes: When given, every label must lie in ``[0, num_classes)``.
        in_chans: When given, the images must have this many channels (the model's
            ``get_info(model).in_chans``).
        device: Where batches are transformed and returned; default: the images' device.
        seed: Seed of the order and of the augmentations.
        rank: This process's rank; default: ``torch.distributed``'s rank if initialised, else 0.
        world_size: Number of ranks; default: ``torch.distributed``'s, else 1.
        num_threads: PyTorch threads used while a batch is transformed (the previous
            setting is restored after each batch); ``None`` leaves torch's setting alone.
            The default, 1, avoids stalls: the per-batch operations are small and
            memory-bound, and on a busy CPU (training, other processes) every multi-threaded
            operation waits until all its threads get a core, which can make a batch take
            milliseconds instead of microseconds. ``torch.set_num_threads`` is process-wide,
            so with several Python threads using torch at once, pass ``None``.
        even_shards: Give every rank the same number of samples by repeating a few samples
            of the epoch's permutation (as ``DistributedSampler`` does), needed when ranks
            must take the same number of steps. With ``False``, every
            sample is seen exactly once over all ranks; rank shards then differ by at most
            one sample. Default: ``shuffle or balanced``.

    Example:
        >>> images = torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8)
        >>> labels = torch.arange(10) % 3
        >>> loader = TensorLoader(images, labels, batch_size=4, image_size=32,
        ...                       mean=(0.5,), std=(0.25,), shuffle=True, seed=0)
        >>> x, y = next(iter(loader))
        >>> tuple(x.shape), x.dtype, len(loader)
        ((4, 1, 32, 32), torch.float32, 3)
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int = 64,
        shuffle: bool = False,
        balanced: bool = False,
        drop_last: bool = False,
        image_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: Augment | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        even_shards: bool | None = None,
        num_threads: int | None = 1,
    ) -> None:
        # Validate everything before keeping anything.
        batch_size = _validate.positive_int("batch_size", batch_size, example=64)
        num_classes = _validate.optional_positive_int("num_classes", num_classes, example=10)
        _check_augment(augment)
        _validate.flag("balanced", balanced)
        num_threads = _validate.optional_positive_int("num_threads", num_threads)
        rank, world_size = _rank_and_world(rank, world_size)
        stored = _check_images(images)
        channels = stored.shape[1]
        if in_chans is not None and channels != in_chans:
            raise DataError(
                f"images have {channels} channel(s) but in_chans={in_chans}. Adapt the model "
                f"to the data (adapt(model, num_classes, in_chans={channels})) or convert "
                f"the images (for example load_image_folder(..., in_chans={in_chans}))."
            )
        self._labels = _check_labels(labels, stored.shape[0], num_classes)
        self._mean = _as_stats("mean", mean, channels)
        self._std = _as_stats("std", std, channels)
        if (self._mean is None) != (self._std is None):
            raise DataError("Pass both mean and std, or neither.")
        self._size = _validate.image_size(image_size) if image_size is not None else None
        self._images = stored
        self.device = torch.device(device) if device is not None else stored.device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.balanced = balanced
        self.drop_last = drop_last
        self.augment = augment
        self.num_classes = num_classes
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.even_shards = (shuffle or balanced) if even_shards is None else even_shards
        self.channels = channels
        self.num_threads = num_threads
        self.epoch = 0
        self._start_batch = 0
        # (h, w, device, scale) -> (Wh * scale, Ww^T)
        self._resize_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._from_uint8 = stored.dtype == torch.uint8
        if self._mean is not None:  # in the stored value range: 0..255 for uint8
            scale = 255.0 if self._from_uint8 else 1.0
            self._mean = (self._mean * scale).to(self.device)
            self._std = (self._std * scale).to(self.device)  # type: ignore[union-attr]

    def copy(self, **changes: Any) -> TensorLoader:
        """Return a loader over the same stored images with some options changed.

        The images and labels are shared, not copied; the new loader starts at epoch 0.
        ``loader.copy(augment=None, shuffle=False)`` reads the data set once in stored
        order, as feature caching needs; this loader is left as it is.

        Args:
            **changes: Any of ``batch_size``, ``shuffle``, ``balanced``, ``drop_last``,
                ``augment``, ``rank``, ``world_size``, ``even_shards`` and ``seed``.

        Raises:
            ConfigError: An unknown option, or a bad value.
        """
        allowed = ("batch_size", "shuffle", "balanced", "drop_last", "augment", "rank",
                   "world_size", "even_shards", "seed")
        unknown = [k for k in changes if k not in allowed]
        if unknown:
            raise ConfigError(
                f"TensorLoader.copy() cannot change {unknown[0]!r}; it changes "
                f"{', '.join(allowed)}. Build a new TensorLoader for the rest."
            )
        if "batch_size" in changes:
            _validate.positive_int("batch_size", changes["batch_size"], example=64)
        _check_augment(changes.get("augment"))
        if "balanced" in changes:
            _validate.flag("balanced", changes["balanced"])
        rank, world = _rank_and_world(changes.get("rank", self.rank),
                                      changes.get("world_size", self.world_size))
        clone = copy.copy(self)
        for key, value in changes.items():
            setattr(clone, key, value)
        clone.rank, clone.world_size, clone.seed = rank, world, int(clone.seed)
        clone.epoch, clone._start_batch, clone._resize_cache = 0, 0, {}
        return clone

    @property
    def labels(self) -> torch.Tensor:
        """Every label of the data set (all ranks), as stored: ``[N]`` or ``[N, C]``."""
        return self._labels

    @property
    def output_size(self) -> tuple[int, int]:
        """The ``(height, width)`` of the batches: ``image_size``, else the stored size."""
        if self._size is not None:
            return self._size
        return int(self._images.shape[-2]), int(self._images.shape[-1])

    @property
    def dataset_size(self) -> int:
        """Return the number of samples over all ranks."""
        return int(self._images.shape[0])

    @property
    def num_samples(self) -> int:
        """Return the number of samples this rank sees per epoch (before ``drop_last``)."""
        n, w = self.dataset_size, self.world_size
        if self.even_shards:
            return math.ceil(n / w)
        return n // w + (1 if self.rank < n % w else 0)

    def __len__(self) -> int:
        """Return the number of batches per epoch for this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        """Select the epoch the next iteration yields (and the batch it starts at).

        Args:
            epoch: The epoch; its order is a pure function of ``(seed, epoch)``.
            start_batch: Skip this many batches, to resume in the middle of an epoch.
        """
        if epoch < 0 or start_batch < 0:
            raise ConfigError(f"epoch={epoch!r} and start_batch={start_batch!r} must be >= 0.")
        self.epoch = int(epoch)
        self._start_batch = int(start_batch)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """Return the sample indices this rank visits in ``epoch`` (default: the next one)."""
        epoch = self.epoch if epoch is None else epoch
        n = self.dataset_size
        if self.balanced:
            generator = torch.Generator().manual_seed(_seed_of(self.seed, epoch))
            order = balanced_indices(self._labels, n, generator=generator)
        elif self.shuffle:
            generator = torch.Generator().manual_seed(_seed_of(self.seed, epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.even_shards:
            total = math.ceil(n / self.world_size) * self.world_size
            if total > n:  # repeat the start of the permutation, as DistributedSampler does
                order = torch.cat([order, order.repeat(math.ceil(total / n))[: total - n]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` for the current epoch, then advance to the next."""
        epoch, start = self.epoch, self._start_batch
        self.epoch, self._start_batch = epoch + 1, 0  # the next iteration reshuffles
        order = self.indices(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.transform(idx, epoch=epoch, batch=b)

    def transform(
        self, idx: torch.Tensor, *, epoch: int = 0, batch: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the transformed batch of the samples ``idx``.

        Args:
            idx: Sample indices (a 1-D integer tensor on the CPU).
            epoch: Epoch, seeds the augmentations.
            batch: Batch index within the epoch, seeds the augmentations.
        """
        if self.num_threads is None:
            return self._transform(idx, epoch, batch)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            return self._transform(idx, epoch, batch)
        finally:
            torch.set_num_threads(previous)

    def _transform(
        self, idx: torch.Tensor, epoch: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._images.index_select(0, idx.to(self._images.device))
        y = self._labels.index_select(0, idx.to(self._labels.device))
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        aug = self.augment
        generator = None
        if aug is not None:
            # One generator per batch: a batch's draws do not depend on earlier batches,
            # so resuming at any batch reproduces them exactly.
            generator = torch.Generator().manual_seed(
                _seed_of(self.seed, epoch, self.rank, batch, 1)
            )
            if aug.crop_padding > 0 or aug.hflip > 0:
                x = random_crop_flip(x, aug.crop_padding, aug.hflip, generator)
        # Scale and normalise at the stored resolution (cheaper than after upsampling);
        # resizing commutes with it because the interpolation weights sum to one.
        x = x.float()
        resize = self._size is not None and tuple(x.shape[-2:]) != self._size
        scale = 1.0
        if self._mean is not None:
            x = x.sub(self._mean).div_(self._std)
        elif self._from_uint8 and resize:
            scale = 1.0 / 255.0  # folded into the resize weights: one pass less over x
        elif self._from_uint8:
            x = x.div(255.0)
        if resize:
            x = self._resize(x, scale)
        if aug is not None and aug.erase > 0:
            x = random_erase(x, aug, generator)  # type: ignore[arg-type]
        return x, y

    def _resize(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        # Bilinear antialiased resizing is separable: out = Wh @ x @ Ww^T. Two matrix
        # products are several times faster on CPU than F.interpolate(antialias=True) and
        # give the same values up to float rounding. The second product writes the whole
        # output and dominates the cost at 224 px (see docs/benchmarks.md).
        h, w = x.shape[-2:]
        out_h, out_w = self._size  # type: ignore[misc]
        key = (h, w, x.device, scale)
        if key not in self._resize_cache:
            self._resize_cache[key] = (
                (resize_matrix(h, out_h) * scale).to(x.device),
                resize_matrix(w, out_w).T.contiguous().to(x.device),
            )
        wh, ww_t = self._resize_cache[key]
        return torch.matmul(torch.matmul(wh, x), ww_t)


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Return the ``[n_out, n_in]`` weights of 1-D antialiased bilinear resizing."""
    # Resize the basis vectors with F.interpolate itself, so the weights are PyTorch's.
    # A width of 2 (kept at 2) sidesteps a width-1 corner case of the antialiased kernel.
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1).expand(-1, -1, -1, 2)
    out = F.interpolate(eye.contiguous(), size=(n_out, 2), mode="bilinear", antialias=True,
                        align_corners=False)
    return out[:, 0, :, 0].T.float().contiguous()


def _check_augment(augment: object) -> None:
    if augment is not None and not isinstance(augment, Augment):
        raise ConfigError(
            f"augment must be an Augment(...) or None, got {type(augment).__name__}."
        )


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    world_size = _validate.positive_int("world_size", world_size, example=2)
    rank = _validate.integer("rank", rank, minimum=0, maximum=world_size - 1)
    return rank, world_size
