"""Freezing policies, frozen BatchNorm and gradual unfreezing.

Policies: ``"none"`` (full fine-tuning), ``"body"`` (linear probe: only the head
trains), ``"stages:k"`` (freeze the stem and the first k stages after it: stages
``0..k``), ``"bitfit"`` (biases and head), ``"norm"`` (normalisation layers and head).

``bn="frozen"``: every BatchNorm layer keeps eval behaviour even after
``model.train()`` (a forward pre-hook switches it back), so its running statistics
never change. Its affine parameters follow the policy.
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
    "check_freeze_state",
    "load_freeze_state",
    "freezing_summary",
    "GradualUnfreezing",
]

POLICIES = ("none", "body", "stages:k", "bitfit", "norm")
BN_MODES = ("train", "frozen")
_STATE_ATTR = "transferkit_freeze"
_HOOKS_ATTR = "_transferkit_bn_hooks"
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
          nn.modules.instancenorm._InstanceNorm)


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


def _set_bn(model: nn.Module, bn: str) -> None:
    for handle in getattr(model, _HOOKS_ATTR, []):
        handle.remove()
    hooks = []
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
                hooks.append(module.register_forward_pre_hook(_bn_eval_hook))
    setattr(model, _HOOKS_ATTR, hooks)


def _apply(model: nn.Module, trainable: set[str], policy: str, bn: str) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    _set_bn(model, bn)
    frozen = sorted(n for n, _ in model.named_parameters() if n not in trainable)
    setattr(model, _STATE_ATTR, {"policy": policy, "bn": bn, "frozen": frozen})


def freeze(model: nn.Module, policy: str = "body", *, bn: str = "train") -> nn.Module:
    """Set which parameters train according to ``policy``; return the model.

    Args:
        model: An adapted model (or any classifier whose head can be discovered).
        policy: One of ``"none"``, ``"body"``, ``"stages:k"``, ``"bitfit"``, ``"norm"``.
        bn: ``"train"`` (BatchNorm behaves as usual) or ``"frozen"`` (always eval).

    Raises:
        UnknownPolicyError: Unknown policy (the closest valid name is suggested).
        StageIndexError: ``k`` outside the model's stages.

    Example:
        >>> import torchvision, transferkit
        >>> model = transferkit.adapt(torchvision.models.resnet18(), 10)
        >>> _ = transferkit.freeze(model, "body")
        >>> [n for n, p in model.named_parameters() if p.requires_grad]
        ['fc.weight', 'fc.bias']
    """
    policy = _check_policy(policy)
    bn = _validate.choice("bn", bn, BN_MODES)
    model_ = unwrap(model)
    trainable = _trainable(model_, get_info(model_), policy)  # validates before changing
    _apply(model_, trainable, policy, bn)
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every parameter trainable and give BatchNorm its normal behaviour back."""
    model_ = unwrap(model)
    _apply(model_, {n for n, _ in model_.named_parameters()}, "none", "train")
    return model


def freeze_state(model: nn.Module) -> dict:
    """Return the freezing state as plain Python (safe for ``weights_only`` checkpoints)."""
    state = getattr(unwrap(model), _STATE_ATTR, None)
    if state is None:
        return {"policy": "none", "bn": "train", "frozen": []}
    return {"policy": state["policy"], "bn": state["bn"], "frozen": list(state["frozen"])}


def _checked_state(model: nn.Module, state: object) -> tuple[set[str], str, str]:
    """Return ``(trainable, policy, bn)`` of a freezing state, or raise; changes nothing."""
    names = {n for n, _ in model.named_parameters()}
    try:
        frozen = {str(n) for n in state["frozen"]}  # type: ignore[index]
        policy, bn = state["policy"], state["bn"]  # type: ignore[index]
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"not a freezing state: {state!r:.200}; expected the dict freeze_state() returns, "
            "with 'policy', 'bn' and 'frozen'."
        ) from exc
    if not isinstance(policy, str) or bn not in BN_MODES:
        raise ConfigError(
            f"freezing state has policy {policy!r} and bn {bn!r}; expected a policy name and "
            f"bn in {BN_MODES}. It was not written by freeze_state()."
        )
    unknown = sorted(frozen - names)
    if unknown:
        raise ConfigError(
            f"freezing state does not fit this model: it freezes {len(unknown)} parameters the "
            f"model does not have (first: {unknown[:3]}). It was saved from another model."
        )
    return names - frozen, policy, bn


def check_freeze_state(model: nn.Module, state: dict) -> None:
    """Check that :func:`load_freeze_state` would accept ``state``; change nothing.

    Raises:
        ConfigError: As :func:`load_freeze_state`.
    """
    _checked_state(unwrap(model), state)


def load_freeze_state(model: nn.Module, state: dict) -> None:
    """Restore a state from :func:`freeze_state`; on an error nothing changes.

    Raises:
        ConfigError: The state is malformed, has an unknown ``bn`` mode, or names
            parameters the model does not have.
    """
    model_ = unwrap(model)
    trainable, policy, bn = _checked_state(model_, state)
    _apply(model_, trainable, policy, bn)


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
        bn: BatchNorm policy, as in :func:`freeze`.
    """

    def __init__(self, model: nn.Module, *, every: int = 1, bn: str = "train") -> None:
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
