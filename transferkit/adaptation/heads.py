"""Find and replace a model's output layer(s).

Discovery rule, in order:

1. ``head="a.b.c"`` (one name or several) given by the caller;
2. timm models: the module(s) returned by ``get_classifier()``;
3. any other model: the parametrised layer(s) whose output becomes the model's
   output through parameter-free operations only (flatten, pooling, averaging),
   read off one dummy forward pass (:mod:`transferkit.adaptation.tracing`). Two such layers
   (DeiT/LeViT distillation heads) are both heads.

A backbone without a classifier (timm with ``num_classes=0``, a DINO/CLIP-style tower
whose forward returns pooled features) is *headless* (:func:`pooled_width`): :func:`adapt`
gives it a head through timm's ``reset_classifier`` where the model has one, else by
wrapping it in :class:`PooledClassifier`. A model whose output is a feature map (4-D) or a
token sequence (3-D) cannot take a head: :class:`~transferkit.errors.HeadNotFoundError`.

Auxiliary classifiers (GoogLeNet ``aux1.fc2``, Inception v3 ``AuxLogits.fc``) are the
``nn.Linear``/convolution layers whose qualified name contains ``aux`` and that have
as many outputs as the main head; they are replaced too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from transferkit.adaptation.tracing import Trace, leaf_modules
from transferkit.errors import HeadNotFoundError, closest

__all__ = [
    "PooledClassifier",
    "find_aux_heads",
    "find_heads",
    "head_outputs",
    "new_head",
    "pooled_width",
    "set_module",
]

_HEAD_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


def head_outputs(module: nn.Module) -> int:
    """Return the number of outputs of a Linear or convolution head."""
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _check_names(model: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            candidates = [n for n, m in modules.items() if isinstance(m, _HEAD_TYPES)]
            raise HeadNotFoundError(
                f"head={name!r} names no module of {type(model).__name__}."
                f"{closest(name, candidates)} Last Linear/conv layers: {candidates[-5:]}"
            )
        if not isinstance(modules[name], _HEAD_TYPES):
            raise HeadNotFoundError(
                f"head={name!r} is a {type(modules[name]).__name__}; the head must be an "
                "nn.Linear or a convolution"
            )
    return tuple(names)


def _has_head_layer(module: nn.Module) -> bool:
    return any(isinstance(m, _HEAD_TYPES) for m in module.modules())


def _not_pooled(model: nn.Module, shape: tuple[int, ...]) -> HeadNotFoundError:
    return HeadNotFoundError(
        f"{type(model).__name__} outputs a {len(shape)}-D tensor (shape {tuple(shape)} for one "
        "image): a feature map or token sequence, not one feature vector per image, so a "
        "classification head cannot be put on it. Pool it and put the head on yourself, e.g. "
        f"nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear({shape[1]}, "
        "num_classes)) for an (N, C, H, W) map (a timm model: create it with "
        "global_pool='avg'), or pass head='name.of.layer' naming the layer to replace."
    )


def pooled_width(model: nn.Module, trace: Trace | None) -> int | None:
    """Return ``D`` if ``model`` has no classifier and outputs pooled features ``(N, D)``.

    A timm model is headless when ``get_classifier()`` holds no Linear/convolution (timm's
    ``nn.Identity`` for ``num_classes=0``); any other model when no Linear/convolution writes
    its 2-D output (a final norm, no layer at all) or a bare 2-D parameter projects it
    (CLIP's ``features @ proj``).

    Args:
        model: The model (unwrapped).
        trace: Its dummy forward pass (``None``: not known, so not headless).
    """
    if trace is None or len(trace.out_shape) != 2:
        return None
    if callable(getattr(model, "get_classifier", None)):
        found = model.get_classifier()
        found = found if isinstance(found, (tuple, list, nn.ModuleList)) else (found,)
        headless = all(isinstance(m, nn.Module) and not _has_head_layer(m) for m in found)
        return trace.out_shape[-1] if headless else None
    modules = dict(model.named_modules())
    if not trace.out_projected and any(isinstance(modules[n], _HEAD_TYPES) for n in trace.outputs):
        return None
    return trace.out_shape[-1]


class PooledClassifier(nn.Module):
    """A backbone that returns pooled features, with a new linear head on them.

    :func:`~transferkit.adaptation.core.adapt` builds it for a headless model that timm cannot
    reset: ``body`` is the model, unchanged, and ``head`` the new ``nn.Linear``, so freezing,
    :func:`~transferkit.adaptation.groups.param_groups` and reports find the head as
    ``"head"`` and the body's parameters under ``"body."``.

    Args:
        body: The backbone; its forward returns ``(N, D)`` features.
        head: The layer applied to them.

    Example:
        >>> import torch
        >>> tower = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                       nn.LayerNorm(8))
        >>> PooledClassifier(tower, nn.Linear(8, 2))(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 2])
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``head(body(x))``."""
        return self.head(self.body(x))


def _names_of(model: nn.Module, targets: Sequence[nn.Module]) -> tuple[str, ...]:
    ids = {id(t) for t in targets}
    return tuple(n for n, m in model.named_modules() if id(m) in ids)


def find_heads(
    model: nn.Module, trace: Trace | None, head: str | Sequence[str] | None = None
) -> tuple[str, ...]:
    """Return the qualified names of the model's output layer(s); the model is not changed.

    Raises:
        HeadNotFoundError: If no head can be found; the message lists candidates.
    """
    if head is not None:
        return _check_names(model, [head] if isinstance(head, str) else list(head))
    if callable(getattr(model, "get_classifier", None)):
        found = model.get_classifier()
        found = tuple(found) if isinstance(found, (tuple, list, nn.ModuleList)) else (found,)
        # timm may return a wrapper (LeViT's NormLinear): its last Linear/conv is the head
        found = tuple(
            m
            if isinstance(m, _HEAD_TYPES)
            else next((s for s in reversed(list(m.modules())) if isinstance(s, _HEAD_TYPES)), m)
            for m in found
        )
        if found and all(isinstance(m, _HEAD_TYPES) for m in found):
            return _names_of(model, found)
    if trace is not None and len(trace.out_shape) > 2:
        raise _not_pooled(model, trace.out_shape)
    if trace is not None and trace.outputs:
        modules = dict(model.named_modules())
        outs = tuple(n for n in trace.outputs if isinstance(modules[n], _HEAD_TYPES))
        if outs and len(outs) == len(trace.outputs):
            return outs
    candidates = [n for n, m in leaf_modules(model) if isinstance(m, _HEAD_TYPES)]
    raise HeadNotFoundError(
        f"could not find the output layer of {type(model).__name__}: no nn.Linear or "
        f"convolution writes the model's output. Candidates: {candidates[-5:]}. "
        "Pass head='name.of.module' to adapt()."
    )


def find_aux_heads(model: nn.Module, heads: Sequence[str]) -> tuple[str, ...]:
    """Return auxiliary classifiers: layers named ``*aux*`` sized like the main head."""
    modules = dict(model.named_modules())
    width = head_outputs(modules[heads[0]])
    return tuple(
        n
        for n, m in leaf_modules(model)
        if n not in heads
        and "aux" in n.lower()
        and isinstance(m, _HEAD_TYPES)
        and head_outputs(m) == width
    )


def new_head(old: nn.Module, num_classes: int) -> nn.Module:
    """Return a freshly initialised layer like ``old`` with ``num_classes`` outputs."""
    ref = old.weight
    kwargs = {"device": ref.device, "dtype": ref.dtype, "bias": old.bias is not None}
    if isinstance(old, nn.Linear):
        layer: nn.Module = nn.Linear(old.in_features, num_classes, **kwargs)
    else:
        layer = type(old)(
            old.in_channels,
            num_classes,
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            dilation=old.dilation,
            **kwargs,
        )
    with torch.no_grad():  # keep the old layer's trainability
        layer.requires_grad_(ref.requires_grad)
    return layer


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
