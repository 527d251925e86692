"""Split a model's body into ordered stages (stem first) for freezing and LR decay.

Sources, in order: timm's own ``group_matcher(coarse=True)``; the table below for
torchvision architectures (same matcher format as timm: ``stem`` and ``blocks``
regular expressions, numbered groups give the stage order); otherwise the generic
rule: the model's top-level children in execution order, with leading leaf layers
(and parameters owned by the root) merged into one ``stem`` stage.
Body parameters no pattern matches (a final norm, a pre-logits layer) join the last stage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["Stage", "find_stages", "TORCHVISION_STAGES"]

_PREV = 99999.0  # timm's MATCH_PREV_GROUP: merge into the previous stage

_FEATURES = {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"}
TORCHVISION_STAGES: dict[str, dict] = {
    "ResNet": {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)"},
    "AlexNet": {"blocks": r"^features\.(\d+)"},
    "VGG": {"blocks": r"^features\.(\d+)"},
    "SqueezeNet": {"blocks": r"^features\.(\d+)"},
    "DenseNet": {
        "stem": r"^features\.(?:conv0|norm0)",
        "blocks": [
            (r"^features\.denseblock(\d+)", None),
            (r"^features\.transition(\d+)", (_PREV,)),
            (r"^features\.norm5", (_PREV,)),
        ],
    },
    "GoogLeNet": {"stem": r"^conv[123]\.", "blocks": r"^inception(\d)"},
    "Inception3": {"stem": r"^Conv2d_", "blocks": r"^Mixed_(\d)"},
    "MobileNetV2": _FEATURES,
    "MobileNetV3": _FEATURES,
    "EfficientNet": _FEATURES,
    "ConvNeXt": _FEATURES,
    "SwinTransformer": _FEATURES,
    "MNASNet": {"blocks": r"^layers\.(\d+)"},
    "ShuffleNetV2": {"stem": r"^conv1\.", "blocks": r"^stage(\d)"},
    "RegNet": {"stem": r"^stem\.", "blocks": r"^trunk_output\.block(\d)"},
    "VisionTransformer": {
        "stem": r"^class_token|^conv_proj|^encoder\.pos_embedding",
        "blocks": r"^encoder\.layers\.encoder_layer_(\d+)",
    },
    "MaxVit": {"stem": r"^stem\.", "blocks": r"^blocks\.(\d+)"},
}


@dataclass(frozen=True)
class Stage:
    """One stage of a model's body: a readable name and its parameter names."""

    name: str
    params: tuple[str, ...]


def _compile(matcher: dict) -> list[tuple[re.Pattern, tuple[float, ...], tuple | None]]:
    compiled = []
    for ordinal, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for pattern, suffix in specs:
            compiled.append((re.compile(pattern), (float(ordinal),), suffix))
    return compiled


def _ordinal(name: str, compiled) -> tuple[float, ...] | None:
    for pattern, prefix, suffix in compiled:
        match = pattern.match(name)
        if match:
            parts = [*prefix, *(float(g) for g in match.groups() if g is not None)]
            return tuple(parts + list(suffix or ()))
    return None


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    prefix: list[str] = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return ".".join(prefix)


def _by_matcher(body: list[str], matcher: dict) -> list[list[str]]:
    compiled = _compile(matcher)
    keyed: dict[tuple[float, ...], list[str]] = {}
    rest: list[str] = []
    for name in body:
        key = _ordinal(name, compiled)
        (keyed.setdefault(key, []) if key is not None else rest).append(name)
    groups: list[list[str]] = []
    for key in sorted(keyed):
        if groups and key[-1] == _PREV:
            groups[-1].extend(keyed[key])
        else:
            groups.append(list(keyed[key]))
    if rest:
        if not groups:
            groups.append([])
        groups[-1].extend(rest)
    return groups


def _generic(model: nn.Module, body: list[str], order: Sequence[str]) -> list[list[str]]:
    first_seen = {}
    for i, name in enumerate(order):
        first_seen.setdefault(name.split(".")[0], i)
    children = dict(model.named_children())
    by_child: dict[str, list[str]] = {}
    for name in body:
        top = name.split(".")[0] if "." in name else ""
        by_child.setdefault(top, []).append(name)
    tops = sorted(by_child, key=lambda t: (t != "", first_seen.get(t, len(order))))
    groups: list[list[str]] = []
    stem_open = True
    for top in tops:
        is_leaf = top == "" or not any(True for _ in children[top].children())
        if stem_open and is_leaf and groups:
            groups[0].extend(by_child[top])
            continue
        groups.append(list(by_child[top]))
        stem_open = stem_open and is_leaf
    return groups


def find_stages(
    model: nn.Module, head_modules: Sequence[str], order: Sequence[str] = ()
) -> tuple[Stage, ...]:
    """Return the body's stages, stem first; the head's parameters are excluded.

    Args:
        model: The model (unwrapped).
        head_modules: Names of the head modules whose parameters are left out.
        order: Leaf module names in execution order (from a trace), for the generic rule.
    """
    prefixes = tuple(h + "." for h in head_modules)
    body = [n for n, _ in model.named_parameters() if not n.startswith(prefixes)]
    matcher = None
    if callable(getattr(model, "group_matcher", None)):
        try:
            matcher = model.group_matcher(coarse=True)
        except (TypeError, NotImplementedError):
            matcher = None
        if not isinstance(matcher, dict):
            matcher = None
    if matcher is None:
        matcher = TORCHVISION_STAGES.get(type(model).__name__)
    groups = _by_matcher(body, matcher) if matcher else _generic(model, body, order)
    groups = [g for g in groups if g]
    stages = []
    for i, names in enumerate(groups):
        label = _common_prefix(names) or ("stem" if i == 0 else f"stage{i}")
        stages.append(Stage(name=f"{i}:{label}", params=tuple(names)))
    return tuple(stages)
