"""An exponential moving average (EMA) of a model's weights, evaluated in the model's place.

:class:`ModelEma` keeps the average on torch's own machinery,
:class:`torch.optim.swa_utils.AveragedModel`: a deep copy of the model whose tensors are
moved towards the model's after every optimizer step,
``ema = decay * ema + (1 - decay) * weights``. What this module adds:

- **A warm-up of the decay** (timm's ``ModelEmaV3``): the ``n``-th update after the first
  uses ``ema_decay(n) = min(decay, 1 - (1 + n) ** -2/3)``. A fixed ``decay=0.999`` would
  keep 37% of the initial weights (the random head) after 1000 steps; warmed up, the
  average spans about ``(1 + n) ** 2/3`` recent steps until that reaches
  ``1 / (1 - decay)``. The first update copies the weights.
- **BatchNorm statistics and other buffers are copied** from the model at every update,
  not averaged (``AveragedModel(use_buffers=False)``, timm's ``exclude_buffers=True``).
  Measured (``benchmarks/ema_tta.py``, docs/trainer.md): averaging them too cost 1.2 and
  2.5 points of FashionMNIST test accuracy against copying, on two seeds. A running
  statistic already averages the last ~10 steps (momentum 0.1); averaging it again lags
  it a second time behind the averaged weights, and the short averages of fine-tuning
  runs (a few dozen steps) are of the same length as that lag.
- **Frozen parameters** are averaged like the others: the average of a constant is that
  constant, bitwise, so they stay equal to the model's; a stage that opens later starts
  averaging from its pretrained value.
- **Checkpoints**: :meth:`ModelEma.state_dict` is plain tensors and numbers (the copy's
  tensors under the model's own names, the update count and the decay); loading checks
  every name and shape first (:meth:`ModelEma.loader`), so a resume is all or nothing.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from transferkit import _validate
from transferkit._state_dict import fitted
from transferkit.adaptation.core import unwrap
from transferkit.errors import CheckpointError, ConfigError

__all__ = ["EMA_WARMUP_POWER", "ModelEma", "check_ema", "ema_decay", "resume_ema"]

log = logging.getLogger(__name__)

#: The power of the decay's warm-up, ``1 - (1 + n) ** -EMA_WARMUP_POWER`` (timm's default).
EMA_WARMUP_POWER = 2 / 3


def check_ema(decay: object) -> float | None:
    """Return the EMA decay ``decay`` as a float (``None``: no EMA), or raise.

    Raises:
        ConfigError: Not a number in ``(0, 1)``.

    Example:
        >>> check_ema(0.999)
        0.999
    """
    if decay is None:
        return None
    value = _validate.rate("ema", decay, allow_zero=False, upper=1.0, example=0.999)
    if value == 1.0:
        raise ConfigError("ema=1.0 would never move from the first weights; pass a decay "
                          "below 1, e.g. ema=0.999 (or ema=None for no average).")
    return value


def ema_decay(updates: int, *, decay: float) -> float:
    """Return the decay of the update that follows ``updates`` earlier ones (warmed up).

    A pure function of the update count: ``0`` for the first update (a copy), then
    ``min(decay, 1 - (1 + updates) ** -EMA_WARMUP_POWER)``.

    Args:
        updates: Updates already made (``ModelEma.updates`` before this one).
        decay: The target decay.

    Example:
        >>> [round(ema_decay(n, decay=0.999), 3) for n in (0, 1, 10, 100, 10**5)]
        [0.0, 0.37, 0.798, 0.954, 0.999]
    """
    if updates <= 0:
        return 0.0
    return min(decay, 1.0 - (1.0 + updates) ** -EMA_WARMUP_POWER)


class ModelEma:
    """An exponential moving average of ``model``'s weights (its buffers copied).

    Holds one deep copy of the model (without its ``torch.compile`` or DDP wrapper: a
    recipe's view is copied as the view), on the model's device.

    Args:
        model: The model whose weights are averaged.
        decay: The target decay, in ``(0, 1)`` (warmed up, see :func:`ema_decay`).

    Attributes:
        decay: The target decay.
        module: The averaged copy: evaluate it, or copy it into the model
            (:meth:`copy_to`). Never train it.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(2, 1)
        >>> ema = ModelEma(model, decay=0.9)
        >>> ema.update(model)  # the first update copies the weights
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(1.0)
        >>> ema.update(model)  # moves 1 - ema_decay(1) = 63% of the way
        >>> bool(torch.allclose(ema.module.weight, model.weight - ema_decay(1, decay=0.9)))
        True
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        checked = check_ema(decay)
        if checked is None:
            raise ConfigError("ModelEma needs a decay in (0, 1), got None; e.g. decay=0.999.")
        self.decay: float = checked
        self._averaged = AveragedModel(unwrap(model, views=False), multi_avg_fn=self._average,
                                       use_buffers=False)  # buffers copied: see above
        self.module: nn.Module = self._averaged.module
        self.module.eval().requires_grad_(False)

    @property
    def updates(self) -> int:
        """The number of updates made (0: the copy holds the weights it was built from)."""
        return int(self._averaged.n_averaged)

    def current_decay(self) -> float:
        """Return the decay the last update used (0.0 after at most one update)."""
        return ema_decay(self.updates - 1, decay=self.decay)

    @torch.no_grad()
    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor],
                 n: torch.Tensor) -> None:
        # AveragedModel calls this per device and dtype of the parameters, from the second
        # update on (the first copies); it copies the buffers itself.
        get_ema_multi_avg_fn(ema_decay(int(n), decay=self.decay))(averaged, current, n)

    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (after an optimizer step)."""
        self._averaged.update_parameters(unwrap(model, views=False))

    def copy_to(self, model: nn.Module, *, say: bool = False) -> None:
        """Load the averaged weights and buffers into ``model`` (its wrappers see-through).

        Args:
            model: The model averaged.
            say: Log one line saying so.
        """
        unwrap(model, views=False).load_state_dict(self.module.state_dict())
        if say:
            log.info("the model holds the EMA weights of the last step (%d updates, decay "
                     "%.4g)", self.updates, self.current_decay())

    def _restart(self) -> None:
        self._averaged.n_averaged.zero_()  # the next update copies the weights

    def state_dict(self) -> dict[str, Any]:
        """Return the checkpoint entry: ``{"decay", "updates", "model"}`` (the copy's tensors)."""
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def loader(self, entry: Any, *, path: str | os.PathLike[str]) -> Callable[[], None]:
        """Check a checkpoint's ``"ema"`` entry against this average; return its loader.

        Nothing changes until the returned function is called. A checkpoint without an
        average (``None``: written with ``ema=None`` or by an older transferkit) restarts
        the average from the resumed weights, warm-up included, and a decay other than
        this one's continues the checkpoint's average at this decay; both warn.

        Raises:
            CheckpointError: The entry is malformed or its tensors do not fit the model.
        """
        if entry is None:
            warnings.warn(
                f"Checkpoint {str(path)!r} holds no EMA weights (written with ema=None or by "
                "an older transferkit): the average restarts from the resumed weights, its "
                "warm-up included. HINT: resume with ema=None to continue without one.",
                stacklevel=6)
            return self._restart
        bad = (not isinstance(entry, dict) or not isinstance(entry.get("model"), dict)
               or not isinstance(entry.get("updates"), int) or entry["updates"] < 0
               or not isinstance(entry.get("decay"), float))
        if bad:
            raise CheckpointError(
                f"Checkpoint {str(path)!r}: its 'ema' entry is malformed (expected decay, "
                "updates and model). Resume from another checkpoint, or without resume.")
        weights, problem = fitted(self.module, entry["model"])
        if problem is not None:
            raise CheckpointError(
                f"Checkpoint {str(path)!r}: its EMA weights do not fit this model: {problem}. "
                "Nothing was loaded: resume with the model it was saved from.")
        if entry["decay"] != self.decay:
            warnings.warn(
                f"Checkpoint {str(path)!r} averaged with ema={entry['decay']} but this Trainer "
                f"has ema={self.decay}: the average continues at {self.decay}. HINT: pass "
                f"Trainer(..., ema={entry['decay']}) for an exact resume.", stacklevel=6)

        def load() -> None:
            self.module.load_state_dict(weights, strict=True)
            self._averaged.n_averaged.fill_(entry["updates"])

        return load


def resume_ema(ema: ModelEma | None, entry: Any, *,
               path: str | os.PathLike[str]) -> Callable[[], None]:
    """Check a checkpoint's ``"ema"`` entry for a Trainer's average; return its loader.

    With ``ema=None`` nothing loads, and a checkpoint that holds an average warns that it
    is not used. Otherwise see :meth:`ModelEma.loader`.

    Raises:
        CheckpointError: The entry does not fit ``ema`` (nothing changes).
    """
    if ema is not None:
        return ema.loader(entry, path=path)
    if isinstance(entry, dict):
        warnings.warn(
            f"Checkpoint {str(path)!r} holds EMA weights (ema={entry.get('decay')}, "
            f"{entry.get('updates')} updates) that this Trainer (ema=None) does not use. "
            f"HINT: pass Trainer(..., ema={entry.get('decay')}) to continue the average.",
            stacklevel=5)
    return lambda: None
