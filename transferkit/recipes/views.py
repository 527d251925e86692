"""The three ways a recipe trains a model through another forward pass.

Each is a :class:`~transferkit.adaptation.core.ModelView`: it shares every parameter with the
model, and :func:`~transferkit.adaptation.core.unwrap` (so freezing, ``param_groups``,
``get_info``, saving) sees the model itself.

- :class:`HeadOnFeatures`: the model's own head on cached features (the linear probe);
- :class:`StageTail`: the stages after a cached, frozen prefix (``freeze_stages=``);
- :class:`EvalMode`: the whole model, kept in eval mode while its head trains (the
  linear probe without a cache).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from transferkit.adaptation.core import ModelView, get_info, unwrap

__all__ = ["EvalMode", "HeadOnFeatures", "StageTail"]


class HeadOnFeatures(ModelView):
    """The model's own head module, applied to cached features.

    Holds the very head object of ``model`` (no copy), so training this module trains
    the model's head. Inputs ``[B, D, 1, 1]`` or ``[B, D]`` are reshaped to the head's
    input shape ``[B, *sample_shape]``.

    Args:
        model: The adapted model whose head (``get_info(model).heads[0]``) is used.
        sample_shape: Shape of one sample's head input (``(D,)`` for a linear head).
    """

    def __init__(self, model: nn.Module, sample_shape: Sequence[int]) -> None:
        shape = tuple(int(s) for s in sample_shape)
        super().__init__(unwrap(model), input_channels=math.prod(shape))
        self.head = self.source.get_submodule(get_info(self.source).heads[0])
        self.sample_shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the head's output for features ``x``."""
        return self.head(x.reshape(x.shape[0], *self.sample_shape))


class StageTail(ModelView):
    """Run ``model`` from the input of one of its modules on: the earlier modules are bypassed.

    The tail shares every parameter with ``model`` (training the tail trains the model);
    ``model`` itself is only changed for the duration of each forward call, and restored
    even when the call raises. Build it with :func:`~transferkit.recipes.cache.split_at_stage`,
    which checks that the tail on the cached input reproduces the model.

    Args:
        model: The full model.
        cut: Name of the module whose input the tail takes (the first module of the stage).
        bypass: Names of the modules that run before ``cut`` (identities while the tail runs).
        stage: Index of the stage the tail starts with.
        input_channels: Channels of the cached input.
    """

    def __init__(self, model: nn.Module, *, cut: str, bypass: tuple[str, ...], stage: int,
                 input_channels: int) -> None:
        super().__init__(model, input_channels=input_channels)
        self.model = model
        self.cut, self.bypass, self.stage = cut, bypass, stage

    @contextlib.contextmanager
    def _bypassed(self) -> Iterator[None]:
        saved = []
        try:
            for name in self.bypass:
                parent, _, child = name.rpartition(".")
                owner = self.model.get_submodule(parent) if parent else self.model
                saved.append((owner, child, getattr(owner, child)))
                setattr(owner, child, nn.Identity())
            yield
        finally:
            for owner, child, module in reversed(saved):
                setattr(owner, child, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the model's output for the cached stage input ``x``."""
        with self._bypassed():
            return self.model(x)


class EvalMode(ModelView):
    """Wrap ``model`` so that it stays in eval mode when trained: the uncached probe.

    Dropout and BatchNorm then behave as during feature extraction, so training the head
    through the frozen body gives what training on cached features gives.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, input_channels=get_info(model).in_chans)
        self.model = model

    def train(self, mode: bool = True) -> EvalMode:
        """Set this wrapper's mode; the wrapped model stays in eval mode."""
        super().train(mode)
        self.model.eval()  # dropout and BatchNorm as at extraction time
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``model(x)``."""
        return self.model(x)
