"""Test-only plugin module, found through ``tk_acme_plugin-0.1.dist-info/entry_points.txt``.

Importing it registers ``acme:tiny``; ``more_backbones`` returns ``acme:wide``'s spec.
"""

from __future__ import annotations

from torch import nn

from transferkit.backbones.registry import BackboneSpec, register_backbone


def _net(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 1000),
    )


@register_backbone("acme:tiny", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), license="mit")
def tiny() -> nn.Module:
    return _net(4)


def more_backbones() -> list[BackboneSpec]:
    return [BackboneSpec(name="acme:wide", source="acme", architecture="wide",
                         builder=lambda: _net(16))]
