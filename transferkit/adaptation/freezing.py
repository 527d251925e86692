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

Gradual unfreezing opens one stage at a time, last stage first, at times (epochs or
optimizer steps) fixed in advance: :func:`unfreeze_steps` spreads the openings over the
first part of a run, while the learning rate is still high.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    "check_unfreeze_until",
    "unfreeze_steps",
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


def check_unfreeze_until(value: object, *, name: str = "until") -> float:
    """Return ``value`` as the fraction of a run after which every stage is open.

    Raises:
        ConfigError: ``value`` is not a real in ``(0, 1]``.
    """
    until = _validate.probability(name, value)
    if until == 0:
        raise ConfigError(f"{name}=0 would open every stage before the head trained alone; "
                          f"pass a fraction of the run in (0, 1], e.g. {name}=0.25.")
    return until


def unfreeze_steps(n_stages: int, total_steps: int, *, until: float) -> tuple[int, ...]:
    """Return the optimizer step at which each stage opens, last stage first.

    The openings are evenly spaced and the last one (the stem) comes at ``until`` of the
    run: stage ``j`` counted back from the head (``j = 1`` for the last stage) opens after
    ``round(j * until * total_steps / n_stages)`` steps, at least one, so the head trains
    alone first. A pure function: the same run always opens the same stages at the same
    steps.

    Args:
        n_stages: Stages of the model (``len(get_info(model).stages)``).
        total_steps: Optimizer steps of the whole run.
        until: Fraction of the run by which every stage is open, in ``(0, 1]``.

    Example:
        >>> unfreeze_steps(5, 100, until=0.5)
        (10, 20, 30, 40, 50)
    """
    n_stages = _validate.positive_int("n_stages", n_stages)
    total_steps = _validate.positive_int("total_steps", total_steps)
    until = check_unfreeze_until(until)
    return tuple(max(1, round(j * until * total_steps / n_stages))
                 for j in range(1, n_stages + 1))


class GradualUnfreezing:
    """Open one stage at a time, head first, last stage first (ULMFiT / fastai style).

    Stage ``j`` counted back from the head (``j = 1`` for the last stage, the stem last)
    opens at time ``at[j - 1]``: epoch ``j * every`` with ``every=``, or the optimizer
    steps given as ``steps=`` (the Trainer's ``unfreeze_until=`` passes
    :func:`unfreeze_steps`). Which stages train is a pure function of the time, so
    resuming from a checkpoint at the same time gives the same state. Build the optimizer
    with ``param_groups(..., include_frozen=True)`` so that it never has to be rebuilt.

    Args:
        model: An adapted model.
        every: Epochs between two openings (>= 1); the default when ``steps`` is not given.
        steps: The optimizer step at which each stage opens, last stage first (one per
            stage, non-decreasing).
        bn: BatchNorm mode, as in :func:`freeze`; with ``"auto"`` a stage's BatchNorm
            layers start updating their running statistics when the stage opens.

    Attributes:
        unit: ``"epoch"`` or ``"step"``: what the times of :meth:`update` count.
        at: When each stage opens, last stage first, in ``unit``.
    """

    def __init__(self, model: nn.Module, *, every: int | None = None,
                 steps: Sequence[int] | None = None, bn: str = "auto") -> None:
        bn = _validate.choice("bn", bn, BN_MODES)
        self.model, self.bn = unwrap(model), bn
        self.info = get_info(self.model)
        n = len(self.info.stages)
        if steps is not None:
            if every is not None:
                raise ConfigError("GradualUnfreezing takes every= (epochs) or steps= (optimizer "
                                  "steps), not both.")
            at = tuple(_validate.integer("steps", s, minimum=0) for s in steps)
            if len(at) != n or list(at) != sorted(at):
                raise ConfigError(f"steps={list(steps)!r} must give one non-decreasing step per "
                                  f"stage ({n}: {[s.name for s in self.info.stages]}), last "
                                  "stage first; e.g. unfreeze_steps(n_stages, total, until=0.5).")
            self.unit, self.at = "step", at
        else:
            every = _validate.positive_int("every", 1 if every is None else every)
            self.unit, self.at = "epoch", tuple(every * j for j in range(1, n + 1))
        self.every = every
        self._open = -1

    def open_count(self, time: int) -> int:
        """Return how many stages are open at ``time`` (an epoch or a step, per ``unit``)."""
        return sum(1 for t in self.at if t <= time)

    def update(self, time: int, *, force: bool = False) -> list[str]:
        """Set trainability for ``time``; return the names of the stages opened now.

        Nothing changes when the open stages are the same as at the last call, unless
        ``force`` (then the state is applied again, e.g. over a change made by hand).
        """
        n = len(self.info.stages)
        count = self.open_count(time)
        previous = self._open
        if count == previous and not force:
            return []
        trainable = _trainable(self.model, self.info, "body")
        for stage in self.info.stages[n - count:] if count else ():
            trainable |= set(stage.params)
        policy = "none" if count == n else f"gradual:{count}"
        _apply(self.model, trainable, policy, self.bn)
        self._open = count
        if previous < 0 or count <= previous:
            return []
        return [s.name for s in self.info.stages[n - count : n - previous]]

    def on_epoch_start(self, epoch: int) -> list[str]:
        """Set trainability for ``epoch`` (``unit="epoch"``); return the stages opened now."""
        return self.update(epoch, force=True)
