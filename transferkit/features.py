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
    "extraction_batch_size",
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


#: Pixels (``batch * height * width`` of the model input) per extraction batch on the CPU.
EXTRACT_PIXELS = 2**18
#: Smallest and largest automatic extraction batch on the CPU.
EXTRACT_BATCH = (8, 256)


def extraction_batch_size(height: int, width: int) -> int:
    """Return the automatic CPU extraction batch for ``height x width`` inputs.

    ``EXTRACT_PIXELS // (height * width)`` clamped to ``EXTRACT_BATCH``: 256 at 32 px, 8
    at 224 px. Small images gain from large batches (less overhead per sample), large
    ones from small batches (the activations stay in the caches); measured with
    ``python benchmarks/linear_probe.py --extraction --size {32,224}``.
    """
    if height < 1 or width < 1:
        raise DataError(f"inputs of {height}x{width} px have no pixels.")
    low, high = EXTRACT_BATCH
    return max(low, min(high, EXTRACT_PIXELS // (height * width)))


def _is_conv_model(model: nn.Module) -> bool:
    """Return whether 4-D (convolution) weights hold most of ``model``'s parameters."""
    total = conv = 0
    for p in model.parameters():
        total += p.numel()
        conv += p.numel() if p.dim() == 4 else 0
    return total > 0 and 2 * conv >= total


def _channels_last_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return channels-last copies of ``model``'s 4-D parameters and buffers, by name.

    ``Tensor.to(memory_format=...)`` as ``Module.to`` does it: ``contiguous`` would keep
    the strides of ``[C, 1, k, k]`` and ``[C, C', 1, 1]`` weights, which oneDNN then reads
    as channels-first, and the convolutions would not switch layout.
    """
    named = list(model.named_parameters()) + list(model.named_buffers())
    return {name: t.detach().to(memory_format=torch.channels_last)
            for name, t in named if t.dim() == 4}


def _batches(data: Iterable[Any], batch_size: int | None, *, auto: bool) -> Iterator[Any]:
    """Yield the batches of ``plain_loader(data)``, at most ``batch_size`` samples each.

    A ``TensorLoader`` is read in batches of that size; any other loader's larger batches
    are split (smaller ones are passed as they are). ``auto``: the size is
    :func:`extraction_batch_size` of the inputs' height and width. Neither: the loader's.
    """
    source = plain_loader(data)
    if isinstance(source, TensorLoader) and (auto or batch_size is not None):
        if batch_size is None:
            size = source._size if source._size is not None else source._images.shape[-2:]
            batch_size = extraction_batch_size(int(size[0]), int(size[1]))
        source.batch_size = batch_size  # a copy (plain_loader), not the caller's loader
        yield from source
        return
    for batch in source:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            yield batch  # head_inputs says what is wrong with it
            continue
        x, n = batch[0], batch_size
        if n is None and auto and isinstance(x, torch.Tensor) and x.dim() == 4:
            n = extraction_batch_size(int(x.shape[-2]), int(x.shape[-1]))
        if n is None or not isinstance(x, torch.Tensor) or x.shape[0] <= n:
            yield batch
            continue
        y = torch.as_tensor(batch[1])
        for start in range(0, x.shape[0], n):
            yield x[start : start + n], y[start : start + n]


def head_inputs(
    model: nn.Module,
    data: Iterable[Any],
    *,
    device: torch.device | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the head's inputs ``[N, *S]`` (CPU, float32) and the labels ``[N]``, unflattened.

    As :func:`extract_features`, but each sample keeps its shape ``S`` (``(D,)`` for a
    linear head), as :class:`HeadOnFeatures` needs it; ``device=None``: the model's.
    ``channels_last`` and ``batch_size``: see :func:`extract_features`.
    """
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ConfigError(f"batch_size={batch_size!r} must be a positive int or None, e.g. 64.")
    if channels_last is not None and not isinstance(channels_last, bool):
        raise ConfigError(f"channels_last={channels_last!r} must be True, False or None.")
    inner = unwrap(model)
    info = get_info(inner)
    head = dict(inner.named_modules())[info.heads[0]]
    if device is None:
        device = next(inner.parameters()).device
    on_cpu = torch.device(device).type == "cpu"
    if channels_last is None:
        channels_last = on_cpu and _is_conv_model(inner)
    # The user's model is never changed: channels-last copies of its 4-D weights are
    # swapped in for each call only (torch.func.functional_call restores the originals).
    weights = _channels_last_params(inner) if channels_last else {}
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    feats, labels = [], []
    handle = head.register_forward_pre_hook(hook)
    modes = {m: m.training for m in inner.modules()}
    inner.eval()
    try:
        # no_grad, not inference_mode: inference tensors could not be saved for backward
        # when the head later trains on them (and inference_mode measured no faster here).
        with torch.no_grad():
            for batch in _batches(data, batch_size, auto=on_cpu):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise DataError(
                        f"extract_features needs (inputs, targets) batches, got a "
                        f"{type(batch).__name__}; e.g. a DataLoader over (image, label) pairs."
                    )
                x, y = batch[0], batch[1]
                x = x.to(device)
                captured.clear()
                if weights:
                    if x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    torch.func.functional_call(inner, weights, (x,))
                else:
                    inner(x)
                if len(captured) != 1:
                    raise DataError(
                        f"the head {info.heads[0]!r} ran {len(captured)} times in one forward "
                        "pass; cached features need a model that calls its head exactly once."
                    )
                feats.append(captured[0].contiguous())
                labels.append(torch.as_tensor(y).reshape(-1).cpu().long())
    finally:
        handle.remove()
        for module, mode in modes.items():  # every module's own mode, not just the root's
            module.training = mode
    if not feats:
        raise DataError("extract_features got no batches; pass a non-empty loader.")
    return torch.cat(feats), torch.cat(labels)


def extract_features(
    model: nn.Module,
    data: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` once over ``data`` and return the inputs of its head, with the labels.

    The model runs in eval mode (every module's mode is restored afterwards) under
    ``torch.no_grad()``; a forward pre-hook on the head (``get_info(model).heads[0]``)
    records what the head receives. A :class:`~transferkit.pipeline.TensorLoader` is read
    through a copy without augmentation and without shuffling (see :func:`plain_loader`);
    any other iterable is read as given, so pass one that does not augment.

    On the CPU, by default, a convolutional model runs in the channels-last memory format
    and in batches of :func:`extraction_batch_size` samples, which is faster
    (``python benchmarks/linear_probe.py --extraction``, see docs/benchmarks.md). The
    features equal those of a plain ``model(x)`` up to float rounding (about 1e-5), and
    ``model`` itself is left exactly as it was: its parameters keep their memory format
    (channels-last copies are passed to ``torch.func.functional_call``), every module its
    mode, every parameter its ``requires_grad``.

    Args:
        model: An adapted model (``transferkit.create`` or ``adapt``).
        data: Batches of ``(inputs, targets)``.
        device: Where the model runs; default: the device of its parameters.
        channels_last: Run the model in the channels-last memory format; default: on the
            CPU when 4-D (convolution) weights hold most of its parameters.
        batch_size: Samples per forward pass (a ``TensorLoader`` is read in batches of
            this size, larger batches of other loaders are split); default on the CPU:
            :func:`extraction_batch_size` of the input size, elsewhere the loader's.

    Returns:
        ``(features, labels)``: float32 ``[N, D]`` (each sample's head input flattened) and
        int64 ``[N]``, both on the CPU.

    Raises:
        DataError: ``data`` is empty or not made of ``(inputs, targets)`` batches.
        ConfigError: ``batch_size`` is not a positive int, or ``channels_last`` not a bool.

    Example:
        >>> import torch, transferkit
        >>> model = transferkit.create("resnet18", 3, in_chans=1, pretrained=False)
        >>> batches = [(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0]))]
        >>> feats, labels = extract_features(model, batches)
        >>> tuple(feats.shape), labels.tolist()
        ((4, 512), [0, 1, 2, 0])
    """
    dev = torch.device(device) if device is not None else None
    feats, labels = head_inputs(model, data, device=dev, channels_last=channels_last,
                                batch_size=batch_size)
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
