"""``adapt()``: turn a pretrained source model into the target model.

Steps 2 and 3 of fine-tuning: keep every layer and weight of the source model
except its output layer, put in a new randomly initialised output layer sized to
the target classes, and (optionally) adapt the layers that read the input image
to a new number of channels. What was found and changed is recorded in one
typed place, :class:`AdaptInfo`, at ``model.transferkit_info``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn

from transferkit.errors import ConfigError, TransferKitError
from transferkit.heads import find_aux_heads, find_heads, head_outputs, new_head, set_module
from transferkit.input_layer import adapt_channel_stats, plan_input_layers
from transferkit.stages import Stage, find_stages
from transferkit.tracing import Snapshot, trace

__all__ = ["AdaptInfo", "Stage", "adapt", "get_info", "unwrap", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INFO_ATTR = "transferkit_info"


@dataclass(frozen=True)
class AdaptInfo:
    """Facts about an adapted model, stored at ``model.transferkit_info``.

    Attributes:
        heads: Qualified names of the output layer(s).
        aux_heads: Auxiliary classifiers replaced with the head (GoogLeNet, Inception v3).
        input_layers: Layers that read the input image.
        stages: The body's stages, stem first (head excluded).
        mean: Per-channel mean the model expects its input normalised with.
        std: Per-channel std, as ``mean``.
        in_chans: Channels of the input image.
        num_classes: Outputs of the head.
        original_num_classes: Outputs of the head before ``adapt()``; None if not adapted.
        input_size: The (H, W) of the dummy image that ran through the model.
    """

    heads: tuple[str, ...]
    aux_heads: tuple[str, ...]
    input_layers: tuple[str, ...]
    stages: tuple[Stage, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    num_classes: int
    original_num_classes: int | None
    input_size: tuple[int, int]

    @property
    def head_modules(self) -> tuple[str, ...]:
        """All replaced output layers: main and auxiliary heads."""
        return self.heads + self.aux_heads


def unwrap(model: nn.Module) -> nn.Module:
    """Return the user's model inside DDP/DataParallel or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _default_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return IMAGENET_MEAN, IMAGENET_STD


def _discover(
    model: nn.Module, head: str | Sequence[str] | None, in_chans: int, size: int | None
) -> AdaptInfo:
    tr = trace(model, in_chans=in_chans, sizes=(size,) if size else None)
    heads = find_heads(model, tr, head)
    aux = find_aux_heads(model, heads)
    modules = dict(model.named_modules())
    mean, std = _default_stats(model)
    return AdaptInfo(
        heads=heads,
        aux_heads=aux,
        input_layers=tr.inputs,
        stages=find_stages(model, heads + aux, tr.order),
        mean=adapt_channel_stats(mean, in_chans),
        std=adapt_channel_stats(std, in_chans),
        in_chans=in_chans,
        num_classes=head_outputs(modules[heads[0]]),
        original_num_classes=None,
        input_size=tr.input_size,
    )


def get_info(model: nn.Module) -> AdaptInfo:
    """Return the adaptation facts of ``model``; discover them if it was never adapted.

    Never changes the model. For a model that was not adapted, the head and
    input layers are found with one dummy forward pass of a 3-channel image.
    """
    model = unwrap(model)
    info = getattr(model, INFO_ATTR, None)
    if isinstance(info, AdaptInfo):
        return info
    return _discover(model, None, 3, None)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_stats(name: str, value: Sequence[float] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of floats, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{name} must be non-empty and finite, got {value!r}")
    return out


def adapt(
    model: nn.Module,
    num_classes: int,
    *,
    in_chans: int | None = None,
    head: str | Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """Replace the output layer and adapt the input layer(s) of ``model``, in place.

    Every parameter except the head's and the input layers' stays bit-for-bit the
    same. On any error the model is left exactly as it was.

    Args:
        model: The source model (torchvision, timm or any ``nn.Module`` classifier).
        num_classes: Outputs of the new, randomly initialised head.
        in_chans: Channels of the target images (1 for grey); None keeps 3.
        head: Qualified name(s) of the output layer(s), overriding discovery.
        mean: Per-RGB-channel mean the source model expects (default: its timm config or
            ImageNet's); adapted to ``in_chans`` and recorded.
        std: As ``mean``.
        input_size: Square size of the dummy image used for discovery (default: tried).

    Returns:
        The same model object, adapted; facts in ``model.transferkit_info``.

    Raises:
        ConfigError: Bad ``num_classes``, ``in_chans``, ``mean`` or ``std``.
        HeadNotFoundError: No output layer found (the message lists candidates).
        InputAdaptationError: An input layer cannot be adapted.

    Example:
        >>> import torchvision, transferkit
        >>> model = transferkit.adapt(torchvision.models.resnet18(), 10, in_chans=1)
        >>> transferkit.get_info(model).heads, model.conv1.in_channels
        (('fc',), 1)
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    num_classes = _check_int("num_classes", num_classes, 1)
    target_chans = 3 if in_chans is None else _check_int("in_chans", in_chans, 1)
    if input_size is not None:
        input_size = _check_int("input_size", input_size, 1)
    mean, std = _check_stats("mean", mean), _check_stats("std", std)
    if (mean is None) != (std is None) or (mean and len(mean) != len(std)):
        raise ConfigError("give mean and std together, with one value per channel each")
    model = unwrap(model)
    previous = getattr(model, INFO_ATTR, None)
    orig_chans = previous.in_chans if isinstance(previous, AdaptInfo) else 3
    found = _discover(model, head, orig_chans, input_size)
    base_mean, base_std = (mean, std) if mean else _default_stats(model)
    modules = dict(model.named_modules())
    plan_inputs = []
    quirk = target_chans != orig_chans and getattr(model, "transform_input", False) is True
    if target_chans != orig_chans:
        plan_inputs = plan_input_layers(model, found.input_layers, target_chans, orig_chans)
    if quirk:  # torchvision GoogLeNet/Inception v3 re-normalise 3 channels inside forward
        base_mean, base_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    snapshot = Snapshot(model)
    try:
        heads, aux = found.heads, found.aux_heads
        original = head_outputs(modules[heads[0]])
        if callable(getattr(model, "reset_classifier", None)) and head is None:
            model.reset_classifier(num_classes)
            heads = find_heads(model, None, None)
        else:
            for name in heads:
                set_module(model, name, new_head(modules[name], num_classes))
        for name in aux:
            set_module(model, name, new_head(modules[name], num_classes))
        if hasattr(model, "num_classes") and isinstance(model.num_classes, int):
            model.num_classes = num_classes
        for module, weight in plan_inputs:
            module.weight = weight
            module.in_channels = weight.shape[1]
        if quirk:
            model.transform_input = False
        info = replace(
            found,
            heads=heads,
            stages=find_stages(model, heads + aux, ()) if heads != found.heads else found.stages,
            mean=adapt_channel_stats(base_mean, target_chans),
            std=adapt_channel_stats(base_std, target_chans),
            in_chans=target_chans,
            num_classes=num_classes,
            original_num_classes=(
                previous.original_num_classes if isinstance(previous, AdaptInfo) else original
            ),
        )
        check = trace(model, in_chans=target_chans, sizes=(found.input_size[0],))
        if check.out_features != num_classes:
            raise TransferKitError(
                f"after adaptation {type(model).__name__} outputs {check.out_features} values, "
                f"not num_classes={num_classes}; pass head= to name every output layer"
            )
        setattr(model, INFO_ATTR, info)
    except BaseException:
        snapshot.restore()
        raise
    return model
