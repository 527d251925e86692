"""Cached features: run the frozen body once, then train the head on what it produced.

A linear probe trains only the output layer on top of a frozen body. Running the body
again every epoch repeats the same computation (in eval mode, without augmentation, the
body maps each image to the same features every time), so :func:`extract_features` runs
it once and keeps the input of the head, and :class:`FeatureLoader` serves those features
as batches to the :class:`~transferkit.trainer.Trainer`, which then trains the head alone
(:class:`HeadOnFeatures`) at the cost of a single layer per step.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from transferkit.adaptation import INFO_ATTR, AdaptInfo, get_info, unwrap
from transferkit.errors import ConfigError, DataError
from transferkit.pipeline import TensorLoader

__all__ = [
    "EvalMode",
    "FeatureLoader",
    "HeadOnFeatures",
    "batch_size_of",
    "extract_features",
    "head_inputs",
    "loader_like",
    "plain_loader",
]

log = logging.getLogger(__name__)


def plain_loader(data: Iterable[Any]) -> Iterable[Any]:
    """Return ``data`` without augmentation and shuffling, for feature extraction.

    A :class:`~transferkit.pipeline.TensorLoader` is copied with ``augment=None``,
    ``shuffle=False`` and a single shard, so every sample is seen once in stored order;
    the caller's loader is not changed. Any other iterable is returned as it is: pass one
    that does not augment (random transforms would be frozen into the cache).
    """
    if not isinstance(data, TensorLoader):
        return data
    clone = copy.copy(data)
    clone.augment, clone.shuffle, clone.drop_last = None, False, False
    clone.rank, clone.world_size, clone.even_shards = 0, 1, False
    clone.epoch, clone._start_batch, clone._resize_cache = 0, 0, {}
    return clone


def head_inputs(
    model: nn.Module, data: Iterable[Any], *, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the head's inputs ``[N, *S]`` (CPU, float32) and the labels ``[N]``, unflattened.

    As :func:`extract_features`, but each sample keeps its shape ``S`` (``(D,)`` for a
    linear head), as :class:`HeadOnFeatures` needs it; ``device=None``: the model's.
    """
    inner = unwrap(model)
    info = get_info(inner)
    head = dict(inner.named_modules())[info.heads[0]]
    if device is None:
        device = next(inner.parameters()).device
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    feats, labels = [], []
    handle = head.register_forward_pre_hook(hook)
    was_training = inner.training
    inner.eval()
    try:
        # no_grad, not inference_mode: inference tensors could not be saved for backward
        # when the head later trains on them.
        with torch.no_grad():
            for batch in plain_loader(data):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise DataError(
                        f"extract_features needs (inputs, targets) batches, got a "
                        f"{type(batch).__name__}; e.g. a DataLoader over (image, label) pairs."
                    )
                x, y = batch[0], batch[1]
                captured.clear()
                inner(x.to(device))
                if len(captured) != 1:
                    raise DataError(
                        f"the head {info.heads[0]!r} ran {len(captured)} times in one forward "
                        "pass; cached features need a model that calls its head exactly once."
                    )
                feats.append(captured[0])
                labels.append(torch.as_tensor(y).reshape(-1).cpu().long())
    finally:
        handle.remove()
        inner.train(was_training)
    if not feats:
        raise DataError("extract_features got no batches; pass a non-empty loader.")
    return torch.cat(feats), torch.cat(labels)


def extract_features(
    model: nn.Module, data: Iterable[Any], *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` once over ``data`` and return the inputs of its head, with the labels.

    The model runs in eval mode (restored afterwards) under ``torch.no_grad()``; a forward
    pre-hook on the head (``get_info(model).heads[0]``) records what the head receives.
    A :class:`~transferkit.pipeline.TensorLoader` is read through a copy without
    augmentation and without shuffling (see :func:`plain_loader`); any other iterable is
    read as given, so pass one that does not augment.

    Args:
        model: An adapted model (``transferkit.create`` or ``adapt``).
        data: Batches of ``(inputs, targets)``.
        device: Where the model runs; default: the device of its parameters.

    Returns:
        ``(features, labels)``: float32 ``[N, D]`` (each sample's head input flattened) and
        int64 ``[N]``, both on the CPU.

    Raises:
        DataError: ``data`` is empty or not made of ``(inputs, targets)`` batches.

    Example:
        >>> import torch, transferkit
        >>> model = transferkit.create("resnet18", 3, in_chans=1, pretrained=False)
        >>> batches = [(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0]))]
        >>> feats, labels = extract_features(model, batches)
        >>> tuple(feats.shape), labels.tolist()
        ((4, 512), [0, 1, 2, 0])
    """
    dev = torch.device(device) if device is not None else None
    feats, labels = head_inputs(model, data, device=dev)
    return feats.flatten(1), labels


class FeatureLoader:
    """Iterate over batches of cached features, reshuffled every epoch.

    Batches of ``[N, D]`` features are ``(features.view(B, D, 1, 1), labels)``: the Trainer
    takes image-shaped inputs, and :class:`HeadOnFeatures` reshapes them back. ``[N, C, H, W]``
    features (cached stage inputs, see :mod:`transferkit.stage_cache`) are yielded as stored.
    The order of an epoch is a pure function of ``(seed, epoch)`` and
    ``set_epoch(epoch, start_batch=...)`` is supported, so the Trainer's exact resume works.

    Args:
        features: ``[N, D]`` or ``[N, C, H, W]`` float tensor.
        labels: ``[N]`` integer tensor.
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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive int, e.g. 64.")
        if not isinstance(features, torch.Tensor) or features.dim() not in (2, 4):
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
            raise DataError(
                f"features must be a [N, D] or [N, C, H, W] tensor, got shape {shape}."
            )
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise DataError(
                f"labels must be [N] with N={features.shape[0]}, got {tuple(labels.shape)}."
            )
        if features.shape[0] == 0:
            raise DataError("features is empty (0 samples).")
        self.features, self.labels = features.float(), labels.long()
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


class HeadOnFeatures(nn.Module):
    """The model's own head module, applied to cached features.

    Holds the very head object of ``model`` (no copy), so training this module trains
    the model's head. Inputs ``[B, D, 1, 1]`` or ``[B, D]`` are reshaped to the head's
    input shape ``[B, *sample_shape]``.

    Args:
        model: The adapted model whose head (``get_info(model).heads[0]``) is used.
        sample_shape: Shape of one sample's head input (``(D,)`` for a linear head).
    """

    def __init__(self, model: nn.Module, sample_shape: Sequence[int]) -> None:
        super().__init__()
        info = get_info(unwrap(model))
        self.head = dict(unwrap(model).named_modules())[info.heads[0]]
        self.sample_shape = tuple(int(s) for s in sample_shape)
        # The Trainer reads the channels and the head from this record.
        probe: AdaptInfo = replace(
            info, heads=("head",), aux_heads=(), input_layers=(), stages=(),
            in_chans=math.prod(self.sample_shape), input_size=(1, 1),
        )
        setattr(self, INFO_ATTR, probe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the head's output for features ``x``."""
        return self.head(x.reshape(x.shape[0], *self.sample_shape))


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
        order_of = plain_loader(data)
        order_of.shuffle = data.shuffle
        return FeatureLoader(feats, labels, batch_size=data.batch_size, drop_last=data.drop_last,
                             order=order_of.indices)
    sampler = getattr(data, "sampler", None)
    shuffle = sampler is None or isinstance(sampler, torch.utils.data.RandomSampler)
    return FeatureLoader(feats, labels, batch_size=batch_size_of(data), shuffle=shuffle, seed=seed,
                         drop_last=bool(getattr(data, "drop_last", False)))


class EvalMode(nn.Module):
    """Wrap ``model`` so that it stays in eval mode when trained: the uncached probe.

    Dropout and BatchNorm then behave as during :func:`extract_features`, so training the
    head through the frozen body gives what training on cached features gives.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        info = get_info(model)
        # The Trainer checks the input channels through this record.
        setattr(self, INFO_ATTR, info)

    def train(self, mode: bool = True) -> EvalMode:
        """Set this wrapper's mode; the wrapped model stays in eval mode."""
        super().train(mode)
        self.model.eval()  # dropout and BatchNorm as at extraction time
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``model(x)``."""
        return self.model(x)
