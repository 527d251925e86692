"""``transferkit backbones`` and ``transferkit info``: list and describe backbones.

Where weights would come from is found by
:func:`transferkit.backbones.locate_weights`, the search order of the weights
resolution itself: nothing is read or downloaded to list them.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from typing import Any

import torch

from transferkit.backbones import (
    backbone_info,
    backbone_spec,
    list_backbones,
    load_backbone,
    locate_weights,
)

__all__ = ["cmd_backbones", "cmd_info", "weights_availability"]

log = logging.getLogger("transferkit.cli")


def weights_availability(name: str) -> str:
    """Say where backbone ``name``'s weights would come from now, without reading them.

    ``"offline (<where>)"``: a local file was found (a cache, or an installed package);
    ``"download (not in any cache)"``: only a download would get them;
    ``"not available (<why>)"``: neither; ``"-"``: the backbone has no pretrained weights.
    """
    spec = backbone_spec(name)
    if spec.weights is None:
        return "-"
    where = locate_weights(spec.weights)
    if where.available_offline:
        origin = f"package {spec.weights.package}" if where.origin == "package" else where.origin
        return f"offline ({origin})"
    if where.download == "allowed":
        return "download (not in any cache)"
    if where.download == "offline":
        return "not available (offline mode is on, not in any cache)"
    if spec.weights.package:
        return f"not available (weights package not installed: {spec.weights.package})"
    return "not available (not in any cache, no download source)"


def cmd_backbones(args: argparse.Namespace) -> int:
    """List the backbones matching ``args.pattern``: name, source, weights, availability."""
    names = list_backbones(args.pattern)
    pretrained = set(list_backbones(args.pattern, pretrained=True))
    for name in names:
        prefix, sep, _ = name.partition(":")
        has_weights = name in pretrained
        source = prefix if sep else backbone_spec(name).source
        print(f"{name}\t{source}\t{'pretrained' if has_weights else 'random-init'}\t"
              f"{weights_availability(name) if has_weights else '-'}")
    if not names:
        log.warning("no backbone matches %r; try a broader pattern, e.g. 'resnet*'",
                    args.pattern)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe backbone ``args.name``: weights, preprocessing, layers, stages, params."""
    info = backbone_info(args.name)
    try:  # architecture only, on the meta device: nothing allocated, nothing downloaded
        with torch.device("meta"):
            model = load_backbone(args.name, pretrained=False)
    except Exception:  # noqa: BLE001  # some builders need real tensors
        model = load_backbone(args.name, pretrained=False)
    numels = {n: p.numel() for n, p in model.named_parameters()}
    out: dict[str, Any] = {k: v for k, v in asdict(info).items() if k != "stages"}
    out["params"] = sum(numels.values())
    out["stages"] = [
        {"name": s.name, "params": sum(numels.get(p, 0) for p in s.params)} for s in info.stages
    ]
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for key, value in out.items():
        if key == "stages":
            value = ", ".join(f"{s['name']} ({s['params']:,})" for s in value) or "-"
        elif key == "params":
            value = f"{value:,}"
        elif isinstance(value, (tuple, list)):
            value = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        print(f"{key}: {'-' if value is None else value}")
    return 0

