"""What the registry knows about a backbone: how to build it, its weights, its preprocessing.

:class:`BackboneSpec` is the registry's record (builder, weights source, preprocessing,
layer names); :class:`BackboneInfo` is what :func:`~transferkit.backbones.registry.backbone_info`
returns to users. Both are plain frozen dataclasses: data, no behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferkit._env import IMAGENET_MEAN, IMAGENET_STD
from transferkit.backbones.weights import WeightsSource

__all__ = ["BackboneInfo", "BackboneSpec", "StateDict"]

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class BackboneSpec:
    """Describe a registered backbone: how to build it and where its weights are.

    ``builder()`` returns the original architecture (``num_classes`` outputs, random
    weights); ``weights`` is ``None`` for a backbone without pretrained weights.
    ``convert(state_dict, model)`` renames checkpoint keys into the model's, if needed.
    """

    name: str
    source: str
    architecture: str
    builder: Callable[[], nn.Module] = field(compare=False, repr=False)
    weights: WeightsSource | None = None
    weights_tag: str | None = None
    num_classes: int = 1000
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    license: str | None = None
    first_layer: str | None = None
    head: str | None = None
    convert: Callable[[StateDict, nn.Module], StateDict] | None = field(
        default=None, compare=False, repr=False
    )


@dataclass(frozen=True)
class BackboneInfo:
    """Describe a backbone for users: preprocessing, weights, layers and stages.

    ``first_layer``/``head`` come from the source's metadata when it has them, else
    from :func:`transferkit.adaptation.core.get_info` on a model built on the ``meta``
    device; ``stages`` always come from ``get_info`` (empty with ``stages=False``).
    ``cache_file`` is where ``TRANSFERKIT_CACHE`` expects the weights.
    """

    name: str
    source: str
    architecture: str
    weights_tag: str | None
    has_weights: bool
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    license: str | None
    first_layer: str | None
    head: str | None
    url: str | None
    hf_hub_id: str | None
    weights_package: str | None
    cache_file: str | None
    stages: tuple[Any, ...] = ()
