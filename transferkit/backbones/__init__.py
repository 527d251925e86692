"""Step 1 of fine-tuning: name, describe and build pretrained backbones; save the results.

- :mod:`~transferkit.backbones.registry`: :func:`create`, :func:`list_backbones`,
  :func:`backbone_info`, :func:`register_backbone` and the ``transferkit.backbones``
  entry-point group;
- :mod:`~transferkit.backbones.specs`: what the registry knows about a backbone;
- :mod:`~transferkit.backbones.sources`: the torchvision, timm and EfficientNet-Lite entries;
- :mod:`~transferkit.backbones.hf_hub`: ``hf_hub:org/name``, timm models from the local
  Hugging Face cache;
- :mod:`~transferkit.backbones.weights` (with :mod:`~transferkit.backbones.lite_weights`):
  find, verify and safely load pretrained weights, offline first;
- :mod:`~transferkit.backbones.model_file`: self-contained fine-tuned model files.

This layer uses :mod:`transferkit.adaptation` to put the new head on; it never imports
:mod:`transferkit.train`.
"""

from __future__ import annotations

from transferkit._env import is_offline
from transferkit.backbones.model_file import ModelMeta, load_model, read_meta, save_model
from transferkit.backbones.registry import (
    ENTRY_POINT_GROUP,
    BackboneInfo,
    BackboneSpec,
    backbone_info,
    backbone_spec,
    create,
    list_backbones,
    load_backbone,
    register_backbone,
    unregister_backbone,
)
from transferkit.backbones.weights import WeightsLocation, WeightsSource, locate_weights

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackboneInfo",
    "BackboneSpec",
    "ModelMeta",
    "WeightsLocation",
    "WeightsSource",
    "backbone_info",
    "backbone_spec",
    "create",
    "is_offline",
    "list_backbones",
    "load_backbone",
    "load_model",
    "locate_weights",
    "read_meta",
    "register_backbone",
    "save_model",
    "unregister_backbone",
]
