"""Discriminative learning rates: parameter groups for any ``torch.optim`` optimizer.

The new head learns with ``head_lr``, the pretrained body with ``body_lr``.
With ``layer_decay=d``, body stage ``i`` counted back from the head (the last
stage is ``i=0``) gets ``body_lr * d**i``. As in timm's optimizer factory, weight
decay skips biases and normalisation parameters (every parameter with fewer than two
dimensions) and what the model exempts itself: the names returned by a
``no_weight_decay()`` method of the model or of any submodule (timm's ViT:
``pos_embed``, ``cls_token``; Swin: its ``relative_position_bias_table``), see
:func:`no_weight_decay_names`.

Torch LR schedulers scale each group's own initial LR, so the ratios between
groups survive them; with ``OneCycleLR`` pass ``max_lr=[g["lr"] for g in groups]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

from transferkit import _validate
from transferkit.adaptation.core import get_info, unwrap
from transferkit.errors import ConfigError

__all__ = ["no_weight_decay_names", "param_groups", "param_groups_table"]


def no_weight_decay_names(model: nn.Module) -> frozenset[str]:
    """Return the names of the parameters that get no weight decay.

    Those with fewer than two dimensions (biases, norm weights), and those named by a
    ``no_weight_decay()`` method of the model or of any of its submodules: a set of
    parameter names relative to that module (``"pos_embed"``), which may also be
    ``fnmatch`` patterns (``"pos_embed.*"``), as timm's optimizer factory reads them. A
    submodule's names are prefixed with its own (``backbone.pos_embed``). Names that match
    no parameter are ignored (timm's ViT names ``dist_token`` even without one).

    Args:
        model: A model, possibly wrapped in DDP or a view.

    Returns:
        Qualified parameter names, as in ``model.named_parameters()``.

    Raises:
        ConfigError: A ``no_weight_decay()`` returned something other than a collection
            of strings.

    Example:
        >>> import timm
        >>> from transferkit.adaptation import no_weight_decay_names
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> sorted(n for n in no_weight_decay_names(vit) if "blocks" not in n)
        ['cls_token', 'head.bias', 'norm.bias', 'norm.weight', 'patch_embed.proj.bias', 'pos_embed']
    """
    inner = unwrap(model)
    patterns: list[str] = []
    for prefix, module in inner.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if not callable(method):
            continue
        value = method()
        names = None if isinstance(value, str) or not isinstance(value, Iterable) else list(value)
        if names is None or not all(isinstance(n, str) for n in names):
            where = f"submodule {prefix!r}" if prefix else "the model"
            raise ConfigError(
                f"{type(module).__name__}.no_weight_decay() of {where} returned "
                f"{value!r}; it must return a set of parameter names (or fnmatch "
                "patterns) relative to that module, e.g. {'pos_embed', 'cls_token'}."
            )
        patterns += [f"{prefix}.{n}" if prefix else n for n in names]
    return frozenset(
        name
        for name, param in inner.named_parameters()
        if param.ndim < 2 or any(fnmatchcase(name, pat) for pat in patterns)
    )


def param_groups(
    model: nn.Module,
    head_lr: float,
    body_lr: float,
    *,
    weight_decay: float = 0.0,
    layer_decay: float | None = None,
    include_frozen: bool = False,
) -> list[dict]:
    """Return parameter groups with a larger LR for the head than for the body.

    Every trainable parameter appears exactly once; frozen ones are left out unless
    ``include_frozen`` (build all groups up front for gradual unfreezing: optimizers
    skip parameters without gradients).

    Args:
        model: An adapted model (see :func:`transferkit.adapt`), possibly wrapped in DDP.
        head_lr: LR of the output layer(s).
        body_lr: LR of the pretrained body (of its last stage with ``layer_decay``).
        weight_decay: Weight decay of weights; biases, norm parameters and what the
            model's ``no_weight_decay()`` names get 0 (see :func:`no_weight_decay_names`).
        layer_decay: Multiplier per stage counted back from the head, in (0, 1].
        include_frozen: Also put parameters with ``requires_grad=False`` into the groups.

    Returns:
        Dicts with keys ``params``, ``lr``, ``weight_decay`` and ``name``.

    Example:
        >>> import torch, torchvision, transferkit
        >>> model = transferkit.adapt(torchvision.models.resnet18(), 10)
        >>> groups = transferkit.param_groups(model, head_lr=1e-2, body_lr=1e-3)
        >>> [g["name"] for g in groups]
        ['body', 'head']
        >>> opt = torch.optim.SGD(groups, momentum=0.9)
    """
    head_lr = _validate.rate("head_lr", head_lr)
    body_lr = _validate.rate("body_lr", body_lr)
    weight_decay = _validate.rate("weight_decay", weight_decay)
    if layer_decay is not None:
        layer_decay = _validate.rate("layer_decay", layer_decay, allow_zero=False, upper=1.0,
                                     example=0.7)
    inner = unwrap(model)
    info = get_info(inner)
    heads = tuple(h + "." for h in info.head_modules)
    stage_of = {p: i for i, s in enumerate(info.stages) for p in s.params}
    last = len(info.stages) - 1
    exempt = no_weight_decay_names(inner) if weight_decay else frozenset()
    groups: dict[str, dict] = {}
    for name, param in inner.named_parameters():
        if not param.requires_grad and not include_frozen:
            continue
        if name.startswith(heads):
            key, lr = "head", head_lr
        elif layer_decay is None:
            key, lr = "body", body_lr
        else:
            i = stage_of.get(name, last)
            key = f"stage{i}:{info.stages[i].name.split(':', 1)[-1]}"
            lr = body_lr * layer_decay ** (last - i)
        decay = 0.0 if name in exempt else weight_decay
        if weight_decay and not decay:
            key += "/no_decay"
        group = groups.setdefault(
            key, {"params": [], "lr": lr, "weight_decay": decay, "name": key}
        )
        group["params"].append(param)
    return list(groups.values())


def param_groups_table(groups: list[dict]) -> str:
    """Return a text table of groups: name, number of parameters, LR and weight decay."""
    rows = [("group", "#params", "lr", "weight_decay")]
    for i, g in enumerate(groups):
        count = sum(p.numel() for p in g["params"])
        wd = g.get("weight_decay", 0)
        rows.append((str(g.get("name", i)), f"{count:,}", f"{g['lr']:.3g}", f"{wd:.3g}"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)
