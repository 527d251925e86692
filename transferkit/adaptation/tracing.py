"""Find the layers that read the input and the layers that write the output.

One dummy forward pass in eval mode records which parametrised modules consume
the input image and which produce the model's output. Dependencies are read off
the autograd graph, so names, nesting and parameter-free glue (flatten, pooling,
space-to-depth, averaging of two heads) do not matter.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from transferkit.errors import InputAdaptationError

__all__ = ["Trace", "trace", "leaf_modules", "Snapshot"]

_DEFAULT_SIZES = (64, 224, 299)


@dataclass(frozen=True)
class Trace:
    """What one dummy forward pass revealed about a model."""

    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    order: tuple[str, ...]
    input_size: tuple[int, int]
    out_features: int
    out_shape: tuple[int, ...] = ()
    out_projected: bool = False  # a bare >=2-D Parameter (CLIP's proj) mixes the output


class Snapshot:
    """Shallow copy of every module's attributes, to put a model back exactly as it was.

    Dict and list attributes are copied one level deep, so caches that a forward pass
    fills in place (timm's LeViT attention-bias cache) are undone too.
    """

    def __init__(self, model: nn.Module) -> None:
        self.saved = [
            (
                m,
                {
                    k: copy.copy(v) if isinstance(v, (dict, list)) else v
                    for k, v in m.__dict__.items()
                },
            )
            for m in model.modules()
        ]

    def restore(self) -> None:
        for module, attrs in self.saved:
            module.__dict__.clear()
            module.__dict__.update(attrs)


def leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for every non-root module that owns parameters directly."""
    for name, module in model.named_modules():
        if name and next(module.parameters(recurse=False), None) is not None:
            yield name, module


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def _walk(roots: Sequence[object], stops: dict[object, str], image: torch.Tensor):
    """Return (module names met first on each path, whether the image is reached,
    whether a bare parameter of two or more dimensions is met first on a path)."""
    met: set[str] = set()
    reached = False
    projected = False
    seen: set[object] = set()
    stack = [fn for fn in roots if fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in stops:
            met.add(stops[fn])
            continue
        variable = getattr(fn, "variable", None)
        if variable is image:
            reached = True
            continue
        if isinstance(variable, nn.Parameter) and variable.ndim >= 2:
            projected = True
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return met, reached, projected


def _candidate_sizes(model: nn.Module) -> tuple[int, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    sizes: list[int] = []
    if isinstance(getattr(model, "image_size", None), int):  # torchvision ViT
        sizes.append(model.image_size)
    if "input_size" in cfg:
        sizes.append(int(cfg["input_size"][-1]))
    return tuple(dict.fromkeys([*sizes, *_DEFAULT_SIZES]))


def trace(model: nn.Module, *, in_chans: int = 3, sizes: Sequence[int] | None = None) -> Trace:
    """Run one zero-image forward pass and read the graph; the model is left unchanged.

    Args:
        model: The model to inspect.
        in_chans: Channels of the dummy image.
        sizes: Square image sizes to try in order; the first that runs is used.

    Raises:
        InputAdaptationError: If no size runs through the model.
    """
    leaves = dict(leaf_modules(model))
    snapshot = Snapshot(model)
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    errors: list[str] = []
    model.eval()
    try:
        for size in sizes or _candidate_sizes(model):
            image = torch.zeros(1, in_chans, size, size, device=device, dtype=dtype)
            image.requires_grad_(True)
            stops: dict[object, str] = {}
            consumed: dict[str, list[object]] = {}
            order: list[str] = []
            direct: set[str] = set()

            def pre(name: str):
                def hook(_m: nn.Module, args: tuple) -> None:
                    for t in _tensors(args):
                        if t is image:
                            direct.add(name)
                        consumed.setdefault(name, []).append(t.grad_fn)

                return hook

            def post(name: str):
                def hook(_m: nn.Module, _args: tuple, out: object) -> None:
                    order.append(name)
                    for t in _tensors(out):
                        if t.grad_fn is not None:
                            stops.setdefault(t.grad_fn, name)  # innermost module wins

                return hook

            handles = []
            for name, module in leaves.items():
                handles.append(module.register_forward_pre_hook(pre(name)))
                handles.append(module.register_forward_hook(post(name)))
            try:
                with torch.enable_grad():
                    out = model(image)
            except Exception as exc:  # noqa: BLE001 - try the next size
                errors.append(f"{size}px: {type(exc).__name__}: {exc}"[:200])
                continue
            finally:
                for h in handles:
                    h.remove()
            outs = list(_tensors(out))
            heads, _, projected = _walk([t.grad_fn for t in outs], stops, image)
            inputs = []
            for name in dict.fromkeys(order):
                hit = name in direct or _walk(consumed.get(name, []), stops, image)[1]
                if hit:
                    inputs.append(name)
            out_features = int(outs[0].shape[-1]) if outs and outs[0].ndim >= 1 else 0
            ordered_heads = tuple(n for n in dict.fromkeys(order) if n in heads)
            return Trace(
                outputs=ordered_heads,
                inputs=tuple(inputs),
                order=tuple(dict.fromkeys(order)),
                input_size=(size, size),
                out_features=out_features,
                out_shape=tuple(outs[0].shape) if outs else (),
                out_projected=projected,
            )
    finally:
        snapshot.restore()  # training flags and anything the forward pass cached
    raise InputAdaptationError(
        f"could not run a {in_chans}-channel dummy image through {type(model).__name__} "
        f"at any of the sizes tried ({'; '.join(errors)}). Pass input_size= to adapt()."
    )
