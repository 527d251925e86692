"""Load a state dict all or nothing: every name and shape is checked before a tensor is copied.

``nn.Module.load_state_dict`` copies every tensor that fits before it raises about the
ones that do not, so a failed load leaves the model half-overwritten. :func:`mismatch`
finds every problem first, and its callers load only when there is none.

``torch.compile`` and DDP/DataParallel save their module's tensors under a prefix
(``_orig_mod.``, ``module.``); :func:`strip_wrapper_prefixes` removes it, so a state dict
saved from a wrapped model loads into the plain one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["WRAPPER_PREFIXES", "fitted", "mismatch", "strip_wrapper_prefixes"]

#: Key prefixes that wrappers add: DDP/DataParallel (``module.``), torch.compile (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_one(state: Mapping[str, Any]) -> dict[str, Any] | None:
    prefix = next((p for p in WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)),
                  None)
    return None if prefix is None else {k[len(prefix) :]: v for k, v in state.items()}


def strip_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``state`` without the wrapper prefixes that every one of its keys carries."""
    out: dict[str, Any] | None = dict(state)
    while out is not None:
        state, out = out, _strip_one(out)
    return dict(state)


def mismatch(
    module: nn.Module, state: Mapping[str, Any], *, optional_suffixes: tuple[str, ...] = ()
) -> str | None:
    """Return why ``state`` cannot load strictly into ``module``, or ``None`` if it can.

    Checks, without changing anything: every entry is a tensor, has the shape of the
    module's tensor of that name, and names match both ways (a missing name ending with one
    of ``optional_suffixes``, e.g. ``num_batches_tracked``, is allowed).

    Args:
        module: The module to load into (already unwrapped).
        state: The state dict.
        optional_suffixes: Endings of names that may be missing from ``state``.
    """
    expected = module.state_dict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            return f"entry {key!r} is a {type(value).__name__}, not a tensor"
    for key, ref in expected.items():  # in the model's order: its first mismatch first
        value = state.get(key)
        if value is not None and tuple(value.shape) != tuple(ref.shape):
            return (f"tensor {key!r} has shape {tuple(value.shape)} in the file but "
                    f"{tuple(ref.shape)} in the model")
    missing = [k for k in expected if k not in state and not k.endswith(optional_suffixes)]
    unexpected = [k for k in state if k not in expected]
    if not (missing or unexpected):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]!r})")
    return "tensor names differ: " + " and ".join(parts)


def fitted(
    module: nn.Module, state: Mapping[str, Any], *, optional_suffixes: tuple[str, ...] = ()
) -> tuple[dict[str, Any], str | None]:
    """Return ``state`` as it loads into ``module``, and why it cannot (``None``: it can).

    When ``state`` does not fit as it is but every key carries a wrapper prefix
    (:data:`WRAPPER_PREFIXES`), the prefixes are removed one at a time until it fits: a
    state dict saved from a compiled or DDP model loads into the plain one. When nothing
    fits, the most stripped state and its problem are returned. No tensor is copied.

    Args:
        module: The module to load into (already unwrapped).
        state: The state dict.
        optional_suffixes: As in :func:`mismatch`.
    """
    candidate: dict[str, Any] | None = dict(state)
    best: tuple[dict[str, Any], str | None] = (dict(state), None)
    while candidate is not None:  # one prefix at a time: a model may own a "module" child
        best = (candidate, mismatch(module, candidate, optional_suffixes=optional_suffixes))
        if best[1] is None:
            break
        candidate = _strip_one(candidate)
    return best
