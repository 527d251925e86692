"""Freezing policies, frozen BatchNorm and gradual unfreezing.

Policies: ``"none"`` (full fine-tuning), ``"body"`` (linear probe: only the head
trains), ``"stages:k"`` (freeze the stem and the first k stages after it: stages
``0..k``), ``"bitfit"`` (biases and head), ``"norm"`` (normalisation layers and head).

BatchNorm modes (``bn=``): ``"auto"`` (the default) keeps every BatchNorm layer whose
parameters are all frozen in eval behaviour, even after ``model.train()`` (a forward
pre-hook switches it back), so the running statistics of the frozen part never change,
while a BatchNorm layer that trains behaves as usual; ``"frozen"`` does that for every
BatchNorm layer (their affine parameters still follow the policy); ``"train"`` leaves every
BatchNorm layer to ``model.train()`` (batch statistics, running averages updated).
"""

from __future__ import annotations

from torch import nn

from transferkit import _validate
from transferkit.adaptation.core import AdaptInfo, get_info, unwrap
from transferkit.errors import ConfigError, StageIndexError, UnknownPolicyError, closest

__all__ = [
    "POLICIES",
    "freeze",
    "unfreeze",
    "freeze_state",
    "load_freeze_state",
    "freezing_summary",
    "GradualUnfreezing",
]

POLICIES = ("none", "body", "stages:k", "bitfit", "norm")
BN_MODES = ("auto", "train", "frozen")
_STATE_ATTR = "transferkit_freeze"
_HOOK_ATTR = "_transferkit_bn_hook"  # on each BatchNorm module held in eval behaviour
_BATCHNORM = nn.modules.batchnorm._BatchNorm
_NORMS = (_BATCHNORM, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _trainable(model: nn.Module, info: AdaptInfo, policy: str) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    heads = tuple(h + "." for h in info.head_modules)
    head = {n for n in names if n.startswith(heads)}
    if policy == "none":
        return set(names)
    if policy == "body":
        return head
    if policy == "bitfit":
        return head | {n for n in names if n.endswith("bias")}
    if policy == "norm":
        norm = {
            f"{m}.{p}" if m else p
            for m, mod in model.named_modules()
            if isinstance(mod, _NORMS)
            for p, _ in mod.named_parameters(recurse=False)
        }
        return head | norm
    k = _stage_count(policy, info)
    frozen = {p for s in info.stages[: k + 1] for p in s.params}
    return set(names) - frozen


def _stage_count(policy: str, info: AdaptInfo) -> int:
    text = policy.split(":", 1)[1]
    if not text.lstrip("-").isdigit():
        raise UnknownPolicyError(f"policy {policy!r}: k must be an int, as in 'stages:2'")
    k = int(text)
    if not 0 <= k < len(info.stages):
        raise StageIndexError(
            f"policy {policy!r}: stage index {k} out of range; this model has stages "
            f"0..{len(info.stages) - 1}: {[s.name for s in info.stages]}"
        )
    return k


def _check_policy(policy: object) -> str:
    if isinstance(policy, str) and (policy in POLICIES or policy.startswith("stages:")):
        return policy
    raise UnknownPolicyError(
        f"unknown freezing policy {policy!r}; valid: {', '.join(POLICIES)}."
        + closest(str(policy), POLICIES)
    )


def _bn_eval_hook(module: nn.Module, _args: tuple) -> None:
    module.training = False


def _held_in_eval(model: nn.Module, bn: str) -> set[int]:
    """Return the ids of the BatchNorm modules that ``bn`` keeps in eval behaviour.

    Under ``"auto"`` a BatchNorm layer is held when none of its parameters trains; one
    without affine parameters follows the layer before it (the last module registered
    before it that has parameters of its own, normally the convolution it normalises).
    """
    if bn == "train":
        return set()
    held, previous = set(), list(model.parameters())
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, _BATCHNORM):
            if bn == "frozen" or not any(p.requires_grad for p in own or previous):
                held.add(id(module))
        if own:
            previous = own
    return held


def _set_bn(model: nn.Module, bn: str) -> None:
    """Hold the BatchNorm modules that ``bn`` freezes in eval behaviour; release the others."""
    held = _held_in_eval(model, bn)
    for module in model.modules():
        if not isinstance(module, _BATCHNORM):
            continue
        handle = module.__dict__.pop(_HOOK_ATTR, None)
        if handle is not None:
            handle.remove()
        if id(module) in held:
            module.eval()
            setattr(module, _HOOK_ATTR, module.register_forward_pre_hook(_bn_eval_hook))
        elif handle is not None:  # released (a stage opened): train as the model does
            module.train(model.training)


def _apply(model: nn.Module, trainable: set[str], policy: str, bn: str) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    _set_bn(model, bn)
    frozen = sorted(n for n, _ in model.named_parameters() if n not in trainable)
    setattr(model, _STATE_ATTR, {"policy": policy, "bn": bn, "frozen": frozen})


def freeze(model: nn.Module, policy: str = "body", *, bn: str = "auto") -> nn.Module:
    """Set which parameters train according to ``policy``; return the model.

    Args:
        model: An adapted model (or any classifier whose head can be discovered).
        policy: One of ``"none"``, ``"body"``, ``"stages:k"``, ``"bitfit"``, ``"norm"``.
        bn: ``"auto"`` (a BatchNorm layer whose parameters are all frozen keeps its running
            statistics: eval behaviour, even after ``model.train()``; the others behave as
            usual), ``"frozen"`` (every BatchNorm layer in eval behaviour) or ``"train"``
            (every BatchNorm layer as usual: batch statistics in ``model.train()``).

    Raises:
        UnknownPolicyError: Unknown policy (the closest valid name is suggested).
        StageIndexError: ``k`` outside the model's stages.

    Example:
        >>> import torch, torchvision, transferkit
        >>> model = transferkit.adapt(torchvision.models.resnet18(), 10)
        >>> _ = transferkit.freeze(model, "body")
        >>> [n for n, p in model.named_parameters() if p.requires_grad]
        ['fc.weight', 'fc.bias']
        >>> before = model.bn1.running_mean.clone()
        >>> _ = model.train()(torch.randn(2, 3, 64, 64))   # a training-mode forward pass
        >>> torch.equal(before, model.bn1.running_mean)    # the frozen body's statistics
        True
    """
    policy = _check_policy(policy)
    bn = _validate.choice("bn", bn, BN_MODES)
    model_ = unwrap(model)
    trainable = _trainable(model_, get_info(model_), policy)  # validates before changing
    _apply(model_, trainable, policy, bn)
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every parameter trainable and give BatchNorm the default mode (``"auto"``) back.

    With every parameter trainable, ``"auto"`` lets every BatchNorm layer behave as usual.
    """
    model_ = unwrap(model)
    _apply(model_, {n for n, _ in model_.named_parameters()}, "none", "auto")
    return model


def freeze_state(model: nn.Module) -> dict:
    """Return the freezing state as plain Python (safe for ``weights_only`` checkpoints).

    A model that was never frozen reports policy ``"none"`` and the default BatchNorm mode
    ``"auto"``.
    """
    state = getattr(unwrap(model), _STATE_ATTR, None)
    if state is None:
        return {"policy": "none", "bn": "auto", "frozen": []}
    return {"policy": state["policy"], "bn": state["bn"], "frozen": list(state["frozen"])}


def load_freeze_state(model: nn.Module, state: dict) -> None:
    """Restore a state from :func:`freeze_state`: trainable parameters and BatchNorm mode.

    Raises:
        ConfigError: If the state names parameters the model does not have, or an unknown
            BatchNorm mode.
    """
    model_ = unwrap(model)
    names = {n for n, _ in model_.named_parameters()}
    try:
        frozen = set(state["frozen"])
        policy, bn = str(state["policy"]), str(state["bn"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"not a freezing state: {state!r:.200}") from exc
    unknown = frozen - names
    if unknown or bn not in BN_MODES:
        raise ConfigError(f"freezing state does not fit this model: unknown "
                          f"{sorted(unknown)[:5] if unknown else f'bn={bn!r}'}")
    _apply(model_, names - frozen, policy, bn)


def freezing_summary(model: nn.Module) -> str:
    """Return a table of trainable vs total parameters per stage and for the head."""
    model_ = unwrap(model)
    info = get_info(model_)
    params = dict(model_.named_parameters())
    heads = tuple(h + "." for h in info.head_modules)
    sections = [(s.name, s.params) for s in info.stages]
    sections.append(("head", tuple(n for n in params if n.startswith(heads))))
    rows = [("stage", "trainable", "total")]
    for name, members in sections:
        total = sum(params[n].numel() for n in members)
        train = sum(params[n].numel() for n in members if params[n].requires_grad)
        rows.append((name, f"{train:,}", f"{total:,}"))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)


class GradualUnfreezing:
    """Unfreeze one stage every ``every`` epochs, head first (ULMFiT / fastai style).

    At epoch ``e`` the head and the last ``e // every`` stages train. The state is a
    pure function of the epoch, so resuming from a checkpoint needs nothing extra.
    Build the optimizer with ``param_groups(..., include_frozen=True)`` so that it
    never has to be rebuilt.

    Args:
        model: An adapted model.
        every: Epochs between two unfreezings (>= 1).
        bn: BatchNorm mode, as in :func:`freeze`; with ``"auto"`` a stage's BatchNorm
            layers start updating their running statistics when the stage opens.
    """

    def __init__(self, model: nn.Module, *, every: int = 1, bn: str = "auto") -> None:
        every = _validate.positive_int("every", every)
        bn = _validate.choice("bn", bn, BN_MODES)
        self.model, self.every, self.bn = unwrap(model), every, bn
        self.info = get_info(self.model)
        self._open = -1

    def on_epoch_start(self, epoch: int) -> list[str]:
        """Set trainability for ``epoch``; return the names of stages unfrozen now."""
        n = len(self.info.stages)
        count = min(n, max(0, epoch) // self.every)
        previous = self._open
        trainable = _trainable(self.model, self.info, "body")
        for stage in self.info.stages[n - count:] if count else ():
            trainable |= set(stage.params)
        policy = "none" if count == n else f"gradual:{count}"
        _apply(self.model, trainable, policy, self.bn)
        self._open = count
        if previous < 0 or count <= previous:
            return []
        return [s.name for s in self.info.stages[n - count : n - previous]]
