"""``adapt()``: turn a pretrained source model into the target model.

Steps 2 and 3 of fine-tuning: keep every layer and weight of the source model
except its output layer, put in a new randomly initialised output layer sized to
the target classes, and (optionally) adapt the layers that read the input image
to a new number of channels. A backbone without a classifier gets a new head on its
pooled features (:func:`~transferkit.adaptation.heads.pooled_width`). What was found
and changed is recorded in one typed place, :class:`AdaptInfo`, at
``model.transferkit_info``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn

from transferkit import _validate
from transferkit._env import IMAGENET_MEAN, IMAGENET_STD
from transferkit.adaptation.heads import (
    PooledClassifier,
    find_aux_heads,
    find_heads,
    head_outputs,
    new_head,
    pooled_width,
    set_module,
)
from transferkit.adaptation.input_layer import adapt_channel_stats, plan_input_layers
from transferkit.adaptation.stages import Stage, find_stages
from transferkit.adaptation.tracing import Snapshot, trace
from transferkit.errors import ConfigError, HeadNotFoundError

__all__ = ["AdaptInfo", "ModelView", "Stage", "adapt", "get_info", "recorded_info", "unwrap"]

INFO_ATTR = "transferkit_info"


@dataclass(frozen=True)
class AdaptInfo:
    """Facts about an adapted model, stored at ``model.transferkit_info``.

    Attributes:
        heads: Qualified names of the output layer(s); empty for a backbone without a
            classifier that was not adapted yet (``num_classes`` is then 0).
        aux_heads: Auxiliary classifiers replaced with the head (GoogLeNet, Inception v3).
        input_layers: Layers that read the input image.
        stages: The body's stages, stem first (head excluded).
        mean: Per-channel mean the model expects its input normalised with.
        std: Per-channel std, as ``mean``.
        in_chans: Channels of the input image.
        num_classes: Outputs of the head.
        original_num_classes: Outputs of the head before ``adapt()`` (0: the backbone had
            none); None if not adapted.
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


class ModelView(nn.Module):
    """A module that runs part of another model on other inputs, sharing its parameters.

    Views let the Trainer train a model through a different forward pass: the head alone
    on cached features, the stages after a cached frozen prefix, the whole model kept in
    eval mode. Everything that asks about *the model* (:func:`get_info`, freezing,
    ``param_groups``, saving) sees :attr:`source` through :func:`unwrap`; only the
    forward pass and the input check belong to the view.

    Args:
        source: The model whose parameters the view trains.
        input_channels: Channels of the view's inputs (for the Trainer's first-batch
            check), or ``None`` when they are not image channels.
    """

    def __init__(self, source: nn.Module, *, input_channels: int | None) -> None:
        super().__init__()
        # A plain attribute, not a submodule: a subclass registers what its forward runs.
        self.__dict__["_source"] = source
        self.input_channels = input_channels

    @property
    def source(self) -> nn.Module:
        """The model this view runs."""
        return self.__dict__["_source"]


def unwrap(model: nn.Module, *, views: bool = True) -> nn.Module:
    """Return the user's model inside DDP/DataParallel, ``torch.compile`` and views.

    Args:
        model: The model, wrapped or not.
        views: Also see through :class:`ModelView` objects (default). With ``False``,
            only the wrappers that change how a module runs, not what it computes (DDP,
            DataParallel, ``torch.compile``), are removed: the Trainer checkpoints the
            module it trains, a view included, without them.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> unwrap(nn.DataParallel(net)) is net
        True
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif views and isinstance(model, ModelView):
            model = model.source
        else:
            return model


def recorded_info(model: nn.Module) -> AdaptInfo | None:
    """Return the :class:`AdaptInfo` that :func:`adapt` recorded on ``model``, or ``None``.

    Unlike :func:`get_info`, never runs the model to discover anything.
    """
    info = getattr(unwrap(model), INFO_ATTR, None)
    return info if isinstance(info, AdaptInfo) else None


def _default_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return IMAGENET_MEAN, IMAGENET_STD


def _discover(
    model: nn.Module, head: str | Sequence[str] | None, in_chans: int, size: int | None
) -> tuple[AdaptInfo, int | None]:
    """Return the facts of ``model`` and, if it has no classifier, its feature width."""
    tr = trace(model, in_chans=in_chans, sizes=(size,) if size else None)
    width = pooled_width(model, tr) if head is None else None
    heads = () if width is not None else find_heads(model, tr, head)
    aux = find_aux_heads(model, heads) if heads else ()
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
        num_classes=head_outputs(modules[heads[0]]) if heads else 0,
        original_num_classes=None,
        input_size=tr.input_size,
    ), width


def get_info(model: nn.Module) -> AdaptInfo:
    """Return the adaptation facts of ``model``; discover them if it was never adapted.

    Never changes the model. For a model that was not adapted, the head and
    input layers are found with one dummy forward pass of a 3-channel image; a backbone
    without a classifier has no heads and ``num_classes == 0``.
    """
    info = recorded_info(model)
    return info if info is not None else _discover(unwrap(model), None, 3, None)[0]


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

    A backbone without a classifier (timm's ``num_classes=0``, a tower whose forward
    returns pooled ``(N, D)`` features) gets a new head on those features: through timm's
    ``reset_classifier`` where the model has one, else by wrapping the model in a
    :class:`~transferkit.adaptation.heads.PooledClassifier` (``body`` + ``head``), which is
    then what is returned. A model whose output is a feature map cannot take a head.

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
        The same model object, adapted (a new ``PooledClassifier`` around it for a headless
        model without ``reset_classifier``); facts in ``.transferkit_info``.

    Raises:
        ConfigError: Bad ``num_classes``, ``in_chans``, ``mean`` or ``std``.
        HeadNotFoundError: No output layer found (the message lists candidates), or the
            output is a feature map, not one vector per image (the message says how to pool).
        InputAdaptationError: An input layer cannot be adapted.

    Example:
        >>> import torchvision, transferkit
        >>> model = transferkit.adapt(torchvision.models.resnet18(), 10, in_chans=1)
        >>> transferkit.get_info(model).heads, model.conv1.in_channels
        (('fc',), 1)
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    num_classes = _validate.positive_int("num_classes", num_classes, example=10)
    target_chans = 3 if in_chans is None else _validate.positive_int("in_chans", in_chans)
    input_size = _validate.optional_positive_int("input_size", input_size, example=224)
    mean, std = _validate.channel_stats("mean", mean), _validate.channel_stats("std", std)
    if (mean is None) != (std is None) or (mean and len(mean) != len(std)):
        raise ConfigError("give mean and std together, with one value per channel each")
    model = unwrap(model)
    previous = getattr(model, INFO_ATTR, None)
    orig_chans = previous.in_chans if isinstance(previous, AdaptInfo) else 3
    found, width = _discover(model, head, orig_chans, input_size)
    base_mean, base_std = (mean, std) if mean else _default_stats(model)
    modules = dict(model.named_modules())
    plan_inputs = []
    quirk = target_chans != orig_chans and getattr(model, "transform_input", False) is True
    if target_chans != orig_chans:
        plan_inputs = plan_input_layers(model, found.input_layers, target_chans, orig_chans)
    if quirk:  # torchvision GoogLeNet/Inception v3 re-normalise 3 channels inside forward
        base_mean, base_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    snapshot = Snapshot(model)
    target = model  # what is returned: the model, or a PooledClassifier around it
    try:
        heads, aux = found.heads, found.aux_heads
        original = head_outputs(modules[heads[0]]) if heads else 0
        if callable(getattr(model, "reset_classifier", None)) and head is None:
            model.reset_classifier(num_classes)  # timm: its own head on its pooled features
            heads = find_heads(model, None, None)
        elif width is not None:
            ref = next(model.parameters(), None)
            target = PooledClassifier(model, nn.Linear(
                width, num_classes, device=ref.device if ref is not None else None,
                dtype=ref.dtype if ref is not None and ref.is_floating_point() else None,
            ))
            heads = ("head",)
        else:
            for name in heads:
                set_module(model, name, new_head(modules[name], num_classes))
        for name in aux:
            set_module(model, name, new_head(modules[name], num_classes))
        if target is model and hasattr(model, "num_classes") and isinstance(
            model.num_classes, int
        ):
            model.num_classes = num_classes
        for module, weight in plan_inputs:
            module.weight = weight
            module.in_channels = weight.shape[1]
        if quirk:
            model.transform_input = False
        if target is not model:  # the body's layers are now under "body."
            found = replace(
                found,
                input_layers=tuple(f"body.{n}" for n in found.input_layers),
                stages=tuple(Stage(s.name, tuple(f"body.{p}" for p in s.params))
                             for s in found.stages),
            )
        elif heads != found.heads:
            found = replace(found, stages=find_stages(model, heads + aux, ()))
        info = replace(
            found,
            heads=heads,
            mean=adapt_channel_stats(base_mean, target_chans),
            std=adapt_channel_stats(base_std, target_chans),
            in_chans=target_chans,
            num_classes=num_classes,
            original_num_classes=(
                previous.original_num_classes if isinstance(previous, AdaptInfo) else original
            ),
        )
        check = trace(target, in_chans=target_chans, sizes=(found.input_size[0],))
        if check.out_features != num_classes:
            raise HeadNotFoundError(
                f"after adaptation {type(model).__name__} outputs {check.out_features} values, "
                f"not num_classes={num_classes}; pass head= to name every output layer"
            )
        setattr(target, INFO_ATTR, info)
    except BaseException:
        snapshot.restore()
        raise
    return target
