"""The best epoch's weights: kept while ``fit`` runs, so that it can end with them.

:class:`BestWeights` copies the model's state dict to the CPU each time a validation
metric (the Trainer's ``monitor``) improves: one extra copy of the weights, refreshed in
place, none of it on the accelerator. When ``fit`` returns, :meth:`BestWeights.restore`
loads the best epoch's weights into the model and says so in one log line. After a resume
the best epoch can predate the run; then the ``best.pt`` written beside the checkpoint
holds its weights, and they are read from there.

With ``Trainer(ema=...)`` the weights validated, kept and restored are the average's
(:class:`~transferkit.train.ema.ModelEma`), read from the ``"ema"`` entry of ``best.pt``;
when no best epoch can be restored the model gets the average's last weights instead.
Weights are kept and loaded under the model's own names (``unwrap(model, views=False)``).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from torch import nn

from transferkit.adaptation.core import unwrap
from transferkit.errors import CheckpointError
from transferkit.train.distributed import DistInfo, all_reduce_sum
from transferkit.train.ema import ModelEma
from transferkit.train.state import read_state

__all__ = ["BestWeights", "is_validation_metric"]

log = logging.getLogger(__name__)


def is_validation_metric(monitor: str | None) -> bool:
    """Return whether ``monitor`` is measured on validation data (``val_*``)."""
    return monitor is not None and monitor.startswith("val_")


class BestWeights:
    """One CPU copy of a model's weights, taken at its best epoch.

    Attributes:
        epoch: The epoch (1-based) whose weights are held; ``None`` before the first copy.
    """

    def __init__(self) -> None:
        self.epoch: int | None = None
        self._state: dict[str, Any] | None = None

    def keep(self, model: nn.Module, epoch: int) -> None:
        """Copy ``model``'s state dict as the weights of ``epoch`` (into the same buffers)."""
        state = model.state_dict()
        if self._state is None or not _same_layout(self._state, state):
            self._state = {k: _cpu_copy(v) for k, v in state.items()}
        else:
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    self._state[key].copy_(value.detach())
                else:
                    self._state[key] = copy.deepcopy(value)
        self.epoch = epoch

    def weights_of(
        self, epoch: int, model: nn.Module, *, file: str | os.PathLike[str] | None,
        ema: bool = False,
    ) -> tuple[dict[str, Any], str]:
        """Return the weights of ``epoch`` and where they are from (``"memory"`` or ``file``).

        Args:
            epoch: The best epoch (1-based).
            model: The model they are for (keys and shapes are checked against it).
            file: The ``best.pt`` to read when the copy in memory is of another epoch.
            ema: Read the average's weights from ``file`` (its ``"ema"`` entry).

        Raises:
            CheckpointError: Neither the copy nor ``file`` holds that epoch, or the weights
                do not fit ``model``.
        """
        if self._state is not None and self.epoch == epoch:
            weights, source = self._state, "memory"
        elif file is None:
            raise CheckpointError(
                f"the weights of epoch {epoch} were not kept in memory and no best.pt "
                "is known to hold them"
            )
        else:
            state = read_state(file)
            if state.get("epoch") != epoch or state.get("batch_in_epoch"):
                raise CheckpointError(
                    f"{str(file)!r} holds epoch {state.get('epoch')}, not the best epoch {epoch}"
                )
            entry = state.get("ema") if ema else state
            if not isinstance(entry, dict):
                raise CheckpointError(f"{str(file)!r} holds no EMA weights (written with "
                                      "ema=None)")
            weights, source = entry["model"], str(file)
        _check_fits(weights, model.state_dict(), source)
        return weights, source


    def restore(
        self,
        model: nn.Module,
        *,
        best: dict[str, Any],
        history: list[dict[str, Any]],
        monitor: str | None,
        file: str | os.PathLike[str] | None,
        dist: DistInfo,
        ema: ModelEma | None = None,
    ) -> int | None:
        """Load the best epoch's weights into ``model``; return that epoch, or ``None``.

        ``None`` means the model keeps the last epoch's weights: without a validation
        ``monitor``, or when the best weights cannot be had (a warning says why). Under
        DDP every rank restores, or none does. One log line says what was done.
        With ``ema``, the weights kept were the average's: the best epoch's average is
        restored, and ``None`` means the model gets the average's last weights.

        Args:
            model: The trained model.
            best: The Trainer's ``best`` (``{"value", "epoch", ...}``).
            history: The run's records, from its first epoch (resumed ones included).
            monitor: The key that decided the best epoch.
            file: The ``best.pt`` holding a best epoch that predates this copy.
            dist: The process group's layout.
            ema: The run's average of the weights, when it validated that.
        """
        if not history:
            return None
        say = log.info if dist.is_main else log.debug
        last, what = history[-1]["epoch"], "the EMA weights" if ema is not None else "the weights"
        model = unwrap(model, views=False)  # the names weights are kept under
        no_best = (f"monitor {monitor} is not a validation metric"
                   if not is_validation_metric(monitor)
                   else "every epoch ended within the LR warm-up" if best["epoch"] is None
                   else None)
        if no_best is not None:
            if ema is not None:
                ema.copy_to(model)
            say("kept %s of the last epoch (%d): %s, so there is no best epoch to restore",
                what, last, no_best)
            return None
        epoch, score = best["epoch"], f"{monitor} {best['value']:.4g}"
        if epoch == last and ema is None:  # the model holds them already
            say("kept the weights of epoch %d (%s), the best of %d and the last", epoch,
                score, len(history))
            return epoch
        weights, source, error = None, "", None
        try:
            weights, source = self.weights_of(epoch, model, file=file, ema=ema is not None)
        except CheckpointError as exc:
            error = str(exc)
        if dist.enabled:
            device = next(iter(model.state_dict().values()), torch.empty(0)).device
            failed = torch.tensor([float(error is not None)], device=device)
            if all_reduce_sum(failed, dist).item() and error is None:
                error = "another process of the run could not get them"
        if error is not None:
            if ema is not None:
                ema.copy_to(model)
            if dist.is_main:
                log.warning("kept %s of the last epoch (%d), not those of the best epoch %d "
                            "(%s): %s", what, last, epoch, score, error)
            return None
        model.load_state_dict(weights)
        where = "" if source == "memory" else f", from {source}"
        say("restored %s of epoch %d (%s), the best of %d%s", what, epoch, score,
            len(history), where)
        return epoch


def _cpu_copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    return copy.deepcopy(value)


def _same_layout(kept: dict[str, Any], state: dict[str, Any]) -> bool:
    if kept.keys() != state.keys():
        return False
    return all(
        not isinstance(v, torch.Tensor)
        or (isinstance(kept[k], torch.Tensor) and kept[k].shape == v.shape
            and kept[k].dtype == v.dtype)
        for k, v in state.items()
    )


def _check_fits(weights: dict[str, Any], state: dict[str, Any], source: str) -> None:
    """Raise before loading anything: ``load_state_dict`` would load what fits, then fail."""
    missing = [k for k in state if k not in weights]
    extra = [k for k in weights if k not in state]
    shapes = [k for k in state if k in weights and isinstance(state[k], torch.Tensor)
              and getattr(weights[k], "shape", None) != state[k].shape]
    problems = [f"{what} {keys[:3]}" for what, keys in
                (("missing", missing), ("unexpected", extra), ("other shapes for", shapes))
                if keys]
    if problems:
        raise CheckpointError(
            f"the weights in {source} do not fit the model: {'; '.join(problems)}"
        )
