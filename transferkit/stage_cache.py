"""Cache what frozen early stages compute, and train only the stages after them.

When the first ``k`` stages of a backbone are frozen and no augmentation touches the
images, their output for a given image never changes: computing it once and training the
remaining stages on the cached tensors gives the same updates as running the frozen stages
every epoch, at a fraction of the cost (and no backward pass through them is ever built).

:func:`split_at_stage` finds, from one recorded forward pass, the modules that run before
stage ``k`` starts and returns a :class:`StageTail`: a module that runs ``model`` on the
cached stage input, with those modules bypassed. The split is verified on a sample batch
(the tail on the prefix's output must equal the whole model's output); a model whose
forward does something between stages that the split would skip is refused with an error
instead of being trained wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from transferkit.adaptation import get_info
from transferkit.errors import ConfigError, StageIndexError

__all__ = ["StageTail", "cache_stage_inputs", "split_at_stage"]

log = logging.getLogger(__name__)


class StageTail(nn.Module):
    """Run ``model`` from the input of stage ``k`` on: the earlier modules are bypassed.

    The tail shares every parameter with ``model`` (training the tail trains the model);
    ``model`` itself is only changed for the duration of each forward call, and restored
    even when the call raises.

    Args:
        model: The full model.
        bypass: Names of the modules that run before stage ``k`` (replaced by identities
            while the tail runs).
        stage: ``k``.
        in_chans: Channels of the cached stage input (recorded for data checks).
    """

    def __init__(self, model: nn.Module, bypass: tuple[str, ...], stage: int, in_chans: int):
        super().__init__()
        self.model = model
        self.bypass = bypass
        self.stage = stage
        info = get_info(model)
        # The Trainer checks the channel count of batches against the model's record.
        self.transferkit_info = dataclasses.replace(info, in_chans=in_chans)

    @contextlib.contextmanager
    def _bypassed(self) -> Iterator[None]:
        saved = []
        try:
            for name in self.bypass:
                parent, _, child = name.rpartition(".")
                owner = self.model.get_submodule(parent) if parent else self.model
                saved.append((owner, child, owner._modules[child]))
                owner._modules[child] = nn.Identity()
            yield
        finally:
            for owner, child, module in reversed(saved):
                owner._modules[child] = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the model's output for the cached stage input ``x``."""
        with self._bypassed():
            return self.model(x)


def _call_order(model: nn.Module, sample: torch.Tensor) -> tuple[list[str], list[str]]:
    """Return module names in the order their forward started, and in the order it ended."""
    started: list[str] = []
    ended: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: started.append(n)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: ended.append(n)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return started, ended


def split_at_stage(
    model: nn.Module, stage: int, sample: torch.Tensor, *, atol: float = 1e-4
) -> tuple[nn.Module, StageTail]:
    """Split ``model`` where stage ``stage`` starts: a frozen prefix and a trainable tail.

    Args:
        model: An adapted backbone (``get_info(model).stages`` lists its stages).
        stage: Index into ``get_info(model).stages``: the first stage the tail runs
            (``1`` leaves only the stem in the prefix).
        sample: A small input batch (``[N, C, H, W]``) used to record the call order and
            to verify the split.
        atol: Largest allowed difference between the tail-on-prefix and the whole model.

    Returns:
        ``(prefix, tail)``: ``prefix(x)`` computes the input of stage ``stage`` (call it
        under ``torch.no_grad()``); ``tail(prefix(x))`` equals ``model(x)``.

    Raises:
        StageIndexError: ``stage`` is not in ``1 .. len(stages) - 1``.
        ConfigError: The model cannot be split there (its forward does work between the
            stages that the split would skip); cache an earlier stage or none.
    """
    stages = get_info(model).stages
    if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage < len(stages):
        raise StageIndexError(
            f"stage={stage!r} must be an int in 1..{len(stages) - 1}: the model has "
            f"{len(stages)} stages ({', '.join(s.name for s in stages)})."
        )
    first_param = stages[stage].params[0]
    first_module = first_param.rpartition(".")[0]
    was_training = model.training
    model.eval()
    try:
        started, ended = _call_order(model, sample)
        if first_module not in started:
            raise ConfigError(
                f"cannot split at stage {stage} ({stages[stage].name}): its first module "
                f"{first_module!r} does not run in the forward pass."
            )
        cut = started.index(first_module)
        # Modules whose forward ended before stage `stage` started, outermost only.
        done_before = ended[: _ended_before(ended, started, cut)]
        names = set(done_before)
        bypass = tuple(
            n for n in dict.fromkeys(done_before)
            if not any(n.startswith(p + ".") for p in names if p != n)
        )
        captured: list[torch.Tensor] = []
        hook = model.get_submodule(first_module).register_forward_pre_hook(
            lambda m, args: captured.append(args[0])
        )
        try:
            with torch.no_grad():
                expected = model(sample)
        finally:
            hook.remove()
        if len(captured) != 1:
            raise ConfigError(
                f"cannot split at stage {stage}: {first_module!r} runs {len(captured)} times "
                "per forward pass."
            )
        tail = StageTail(model, bypass, stage, int(captured[0].shape[1]))
        prefix = _Prefix(model, first_module)
        try:
            with torch.no_grad():
                got = tail(prefix(sample))
        except Exception as exc:  # the model's forward cannot take the cached input
            raise ConfigError(
                f"cannot split {type(model).__name__} at stage {stage} "
                f"({stages[stage].name}): its forward does work between stages that the "
                f"split would skip ({type(exc).__name__}: {exc}); cache an earlier stage."
            ) from exc
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=atol, rtol=1e-4):
            diff = (got - expected).abs().max().item() if got.shape == expected.shape else None
            raise ConfigError(
                f"cannot split {type(model).__name__} at stage {stage} "
                f"({stages[stage].name}): running the later stages on the cached input does "
                f"not reproduce the model's output (max difference {diff}). Its forward "
                "does work between stages that the split would skip; cache an earlier stage."
            )
    finally:
        model.train(was_training)
    return prefix, tail


def _ended_before(ended: list[str], started: list[str], cut: int) -> int:
    """Return how many entries of ``ended`` finished before ``started[cut]`` began."""
    before = set(started[:cut])
    count = 0
    for name in ended:
        if name not in before:
            break
        count += 1
    return count


class _Prefix:
    """Compute the input of the module ``first_module`` and stop there."""

    class _Stop(Exception):
        pass

    def __init__(self, model: nn.Module, first_module: str) -> None:
        self.model, self.first_module = model, first_module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            out.append(args[0])
            raise self._Stop

        handle = self.model.get_submodule(self.first_module).register_forward_pre_hook(hook)
        try:
            self.model(x)
        except self._Stop:
            pass
        finally:
            handle.remove()
        return out[0]


def cache_stage_inputs(
    prefix: Any,
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``prefix`` over ``data`` once, in eval mode without gradients.

    Args:
        prefix: The ``prefix`` returned by :func:`split_at_stage`.
        model: The model it belongs to (put in eval mode meanwhile, then restored).
        data: Un-augmented ``(images, labels)`` batches, in a fixed order.
        dtype: Storage dtype of the cached tensors.

    Returns:
        ``(inputs, labels)``: the stage inputs ``[N, C, H, W]`` and the labels ``[N]``.
    """
    was_training = model.training
    model.eval()
    feats, labels = [], []
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for x, y in data:
                feats.append(prefix(x).to(dtype))
                labels.append(y)
    finally:
        model.train(was_training)
    if not feats:
        raise ConfigError("cache_stage_inputs got no batches; the data is empty.")
    out = torch.cat(feats)
    log.info(
        "cached the stage inputs of %d images (%s) in %.1f s",
        out.shape[0], "x".join(map(str, out.shape[1:])), time.perf_counter() - start,
    )
    return out, torch.cat(labels)
