"""Cache what a frozen part of a model computes, once, and train the rest on the cache.

When the first part of a model is frozen and sees images without augmentation (in eval
mode, so BatchNorm uses its running statistics and dropout is off), it maps each image to
the same tensor every epoch. Computing that tensor once and training the rest of the
model on it gives the same updates as running the frozen part every epoch, at a fraction
of the cost, and no backward pass through it is ever built. One mechanism serves every
cut:

- :func:`cache_inputs` runs the model once over the data and records the input of one
  module (a forward pre-hook), stopping the forward pass there;
- :func:`split_at_head` cuts before the head: the linear probe trains the head alone on
  the cached features (:class:`~transferkit.recipes.views.HeadOnFeatures`);
- :func:`split_at_stage` cuts before stage ``k``: the later stages train on the cached
  output of the frozen ones (:class:`~transferkit.recipes.views.StageTail`).

Both splits are verified on a sample batch: the trained part on the cached input must
reproduce the whole model's output, so a model whose forward does work that the cut would
skip is refused with an error instead of being trained wrong.

On the CPU, a convolutional model runs in the channels-last memory format and in batches
sized to the input (:func:`extraction_batch_size`), on channels-last *copies* of its
weights: the user's model is never changed (every module keeps its mode, every parameter
its memory format and ``requires_grad``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from transferkit import _validate
from transferkit.adaptation.core import get_info, unwrap
from transferkit.data.pipeline import TensorLoader
from transferkit.errors import ConfigError, DataError, StageIndexError
from transferkit.recipes.views import HeadOnFeatures, StageTail

__all__ = [
    "EXTRACT_BATCH",
    "EXTRACT_PIXELS",
    "cache_inputs",
    "extract_features",
    "extraction_batch_size",
    "plain_loader",
    "split_at_head",
    "split_at_stage",
]

#: Pixels (``batch * height * width`` of the model input) per extraction batch on the CPU.
EXTRACT_PIXELS = 2**18
#: Smallest and largest automatic extraction batch on the CPU.
EXTRACT_BATCH = (8, 256)


def plain_loader(data: Iterable[Any]) -> Iterable[Any]:
    """Return ``data`` without augmentation and shuffling, for caching.

    A :class:`~transferkit.data.pipeline.TensorLoader` is copied with ``augment=None``,
    ``shuffle=False``, ``balanced=False`` and a single shard (:meth:`TensorLoader.copy`),
    so every sample is seen once in stored order; the caller's loader is not changed. Any
    other iterable is returned as it is: pass one that does not augment (random transforms
    would be frozen into the cache).
    """
    if not isinstance(data, TensorLoader):
        return data
    return data.copy(augment=None, shuffle=False, balanced=False, drop_last=False, rank=0,
                     world_size=1, even_shards=False)


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


def is_conv_model(model: nn.Module) -> bool:
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
            batch_size = extraction_batch_size(*source.output_size)
        yield from source.copy(batch_size=batch_size)
        return
    for batch in source:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            yield batch  # cache_inputs says what is wrong with it
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


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


class _Capture:
    """Record the input of one module of ``model`` (optionally stopping the forward there)."""

    def __init__(self, model: nn.Module, module: str, weights: dict[str, torch.Tensor]) -> None:
        self.model, self.module, self.weights = model, module, weights
        self.target = model.get_submodule(module)

    def __call__(self, x: torch.Tensor, *, stop: bool) -> tuple[list[torch.Tensor], Any]:
        """Run ``model(x)``; return the inputs ``module`` got and the model's output (or None)."""
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach())
            if stop:
                raise _Stop

        handle = self.target.register_forward_pre_hook(hook)
        out = None
        try:
            if self.weights:
                if x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = torch.func.functional_call(self.model, self.weights, (x,))
            else:
                out = self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured, out


def cache_inputs(
    model: nn.Module,
    module: str,
    data: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` once over ``data`` and return what ``module`` receives, with the labels.

    The model runs in eval mode under ``torch.no_grad()`` (every module's own mode is
    restored afterwards). A :class:`~transferkit.data.pipeline.TensorLoader` is read
    through a copy without augmentation and without shuffling (:func:`plain_loader`);
    any other iterable is read as given, so pass one that does not augment. The first
    batch runs the whole model to check that ``module`` runs exactly once per forward
    pass; later batches stop where ``module`` starts.

    Args:
        model: The model (a view or DDP wrapper is unwrapped).
        module: Qualified name of the module whose input is cached.
        data: Batches of ``(inputs, targets)``.
        device: Where the model runs; default: the device of its parameters.
        channels_last: Run the model in the channels-last memory format; default: on the
            CPU when 4-D (convolution) weights hold most of its parameters.
        batch_size: Samples per forward pass (a ``TensorLoader`` is read in batches of
            this size, larger batches of other loaders are split); default on the CPU:
            :func:`extraction_batch_size` of the input size, elsewhere the loader's.

    Returns:
        ``(inputs, labels)``: float32 ``[N, *S]`` (each sample's input of ``module``) and
        int64 ``[N]`` class indices (or the float32 ``[N, C]`` soft or multi-hot targets as
        given), both on the CPU.

    Raises:
        DataError: ``data`` is empty or not made of ``(inputs, targets)`` batches, or
            ``module`` does not run exactly once per forward pass.
        ConfigError: ``batch_size`` is not a positive int, ``channels_last`` not a bool,
            or ``module`` names no module of the model.
    """
    batch_size = _validate.optional_positive_int("batch_size", batch_size, example=64)
    if channels_last is not None:
        _validate.flag("channels_last", channels_last)
    inner = unwrap(model)
    names = dict(inner.named_modules())
    if module not in names:
        raise ConfigError(f"{type(inner).__name__} has no module {module!r} to cache the input of.")
    dev = torch.device(device) if device is not None else next(inner.parameters()).device
    on_cpu = dev.type == "cpu"
    if channels_last is None:
        channels_last = on_cpu and is_conv_model(inner)
    # The user's model is never changed: channels-last copies of its 4-D weights are
    # swapped in for each call only (torch.func.functional_call restores the originals).
    capture = _Capture(inner, module, _channels_last_params(inner) if channels_last else {})
    feats, labels = [], []
    modes = {m: m.training for m in inner.modules()}
    inner.eval()
    try:
        # no_grad, not inference_mode: inference tensors could not be saved for backward
        # when the later part trains on them (and inference_mode measured no faster here).
        with torch.no_grad():
            for batch in _batches(data, batch_size, auto=on_cpu):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise DataError(
                        f"caching needs (inputs, targets) batches, got a "
                        f"{type(batch).__name__}; e.g. a DataLoader over (image, label) pairs."
                    )
                captured, _ = capture(batch[0].to(dev), stop=bool(feats))
                if len(captured) != 1:
                    raise DataError(
                        f"{module!r} ran {len(captured)} times in one forward pass; caching "
                        "its input needs a model that calls it exactly once."
                    )
                feats.append(captured[0].float().cpu().contiguous())
                labels.append(_labels(batch[1]))
    finally:
        for mod, mode in modes.items():  # every module's own mode, not just the root's
            mod.training = mode
    if not feats:
        raise DataError("caching got no batches; pass a non-empty loader.")
    return torch.cat(feats), torch.cat(labels)


def _labels(targets: Any) -> torch.Tensor:
    """A batch's targets on the CPU: class indices as int64 ``[B]``, others float32 ``[B, C]``."""
    y = torch.as_tensor(targets).cpu()
    return y.float() if y.is_floating_point() and y.dim() == 2 else y.reshape(-1).long()


def extract_features(
    model: nn.Module,
    data: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` once over ``data`` and return the inputs of its head, with the labels.

    :func:`cache_inputs` at the head (``get_info(model).heads[0]``), flattened per sample.
    The features equal those of a plain ``model(x)`` up to float rounding (about 1e-5 with
    the CPU's channels-last default; ``python benchmarks/linear_probe.py --extraction``
    measures the speed), and ``model`` is left exactly as it was.

    Args:
        model: An adapted model (``transferkit.create`` or ``adapt``).
        data: Batches of ``(inputs, targets)``.
        device: Where the model runs; default: the device of its parameters.
        channels_last: See :func:`cache_inputs`.
        batch_size: See :func:`cache_inputs`.

    Returns:
        ``(features, labels)``: float32 ``[N, D]`` and int64 ``[N]``, both on the CPU.

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
    head = get_info(model).heads[0]
    feats, labels = cache_inputs(model, head, data, device=device, channels_last=channels_last,
                                 batch_size=batch_size)
    return feats.flatten(1), labels


def _verify(what: str, tail: nn.Module, cached: torch.Tensor, expected: torch.Tensor,
            atol: float) -> None:
    """Raise ConfigError unless ``tail(cached)`` reproduces the model's ``expected`` output."""
    try:
        with torch.no_grad():
            got = tail(cached)
    except Exception as exc:  # the model's forward cannot take the cached input
        raise ConfigError(
            f"cannot split {what}: its forward does work that the split would skip "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=atol, rtol=1e-4):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else None
        raise ConfigError(
            f"cannot split {what}: running the rest of the model on the cached input does "
            f"not reproduce the model's output (max difference {diff}); its forward does "
            "work that the split would skip."
        )


def _capture_once(model: nn.Module, module: str, sample: torch.Tensor, what: str):
    """Return (the single input ``module`` gets for ``sample``, the model's output)."""
    captured, expected = _Capture(model, module, {})(sample, stop=False)
    if len(captured) != 1:
        raise ConfigError(f"cannot split {what}: {module!r} runs {len(captured)} times per "
                          "forward pass.")
    return captured[0], expected


def split_at_head(model: nn.Module, sample: torch.Tensor, *, atol: float = 1e-4) -> HeadOnFeatures:
    """Return the model's head as a view on cached features, checked on ``sample``.

    Args:
        model: An adapted model.
        sample: A small input batch ``[N, C, H, W]``.
        atol: Largest allowed difference between the head on the cached features and the
            whole model.

    Raises:
        ConfigError: The model has several heads, runs its head more than once, or does
            work after it (its output is not the head's output); probe it uncached.
    """
    inner = unwrap(model)
    info = get_info(inner)
    what = f"{type(inner).__name__} at its head"
    if len(info.heads) > 1:
        raise ConfigError(f"cannot split {what}: it has {len(info.heads)} heads {info.heads}.")
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            feats, expected = _capture_once(inner, info.heads[0], sample, what)
        tail = HeadOnFeatures(inner, tuple(feats.shape[1:]))
        _verify(what, tail, feats, expected, atol)
    finally:
        inner.train(was_training)
    return tail


def _call_order(model: nn.Module, sample: torch.Tensor) -> tuple[list[str], list[str]]:
    """Return module names in the order their forward started, and in the order it ended."""
    started: list[str] = []
    ended: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: started.append(n)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: ended.append(n)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return started, ended


def _ended_before(ended: list[str], started: list[str], cut: int) -> int:
    """Return how many entries of ``ended`` finished before ``started[cut]`` began."""
    before = set(started[:cut])
    count = 0
    for name in ended:
        if name not in before:
            break
        count += 1
    return count


def split_at_stage(
    model: nn.Module, stage: int, sample: torch.Tensor, *, atol: float = 1e-4
) -> StageTail:
    """Return the stages from ``stage`` on as a view on their cached input, checked on ``sample``.

    Cache the input with ``cache_inputs(model, tail.cut, data)``; ``tail(inputs)`` then
    equals ``model(images)``. Freeze the stages before ``stage`` yourself (for example
    ``freeze(model, f"stages:{stage - 1}")``): the cache is only right while they never change.

    Args:
        model: An adapted backbone (``get_info(model).stages`` lists its stages).
        stage: Index into ``get_info(model).stages``: the first stage the tail runs
            (``1`` leaves only the stem in the cached prefix).
        sample: A small input batch (``[N, C, H, W]``) used to record the call order and
            to verify the split.
        atol: Largest allowed difference between the tail on the cached input and the
            whole model.

    Raises:
        StageIndexError: ``stage`` is not in ``1 .. len(stages) - 1``.
        ConfigError: The model cannot be split there (its forward does work between the
            stages that the split would skip); cache an earlier stage or none.
    """
    inner = unwrap(model)
    stages = get_info(inner).stages
    if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage < len(stages):
        raise StageIndexError(
            f"stage={stage!r} must be an int in 1..{len(stages) - 1}: the model has "
            f"{len(stages)} stages ({', '.join(s.name for s in stages)})."
        )
    what = f"{type(inner).__name__} at stage {stage} ({stages[stage].name})"
    first_module = stages[stage].params[0].rpartition(".")[0]
    was_training = inner.training
    inner.eval()
    try:
        started, ended = _call_order(inner, sample)
        if first_module not in started:
            raise ConfigError(f"cannot split {what}: its first module {first_module!r} does "
                              "not run in the forward pass.")
        cut = started.index(first_module)
        # Modules whose forward ended before stage `stage` started, outermost only.
        done_before = ended[: _ended_before(ended, started, cut)]
        names = set(done_before)
        bypass = tuple(
            n for n in dict.fromkeys(done_before)
            if not any(n.startswith(p + ".") for p in names if p != n)
        )
        with torch.no_grad():
            cached, expected = _capture_once(inner, first_module, sample, what)
        tail = StageTail(inner, cut=first_module, bypass=bypass, stage=stage,
                         input_channels=int(cached.shape[1]))
        _verify(f"{what}; cache an earlier stage", tail, cached, expected, atol)
    finally:
        inner.train(was_training)
    return tail
