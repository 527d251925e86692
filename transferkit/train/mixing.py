"""Mixup and CutMix on training batches, on the training device: torchvision's own.

:func:`batch_mixer` returns torchvision's ``transforms.v2.MixUp`` or ``CutMix`` (one of
the two at random per batch, with equal odds, when both are on: ``v2.RandomChoice``, as
timm's ``switch_prob=0.5``). They take any batch size, mix each sample with its
neighbour in the (shuffled) batch, turn class indices into one-hot targets and mix
``(N, C)`` soft or multi-hot targets as they are, so every kind of target the Trainer
accepts can be mixed. timm's ``Mixup`` does the same but needs an even batch size (the
last batch of an epoch often is not) and draws from NumPy; ``benchmarks/mixing.py``
measured both on the same batches (docs/trainer.md).

The draws (the mixing ratio, CutMix's box, which of the two) come from torch's global
generator, which the Trainer checkpoints with every ``last.pt``: a run resumed in the
middle of an epoch mixes the next batches exactly as the uninterrupted run did.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from transferkit import _validate

__all__ = ["Mixer", "batch_mixer", "check_mix_alphas"]

#: ``mix(images, targets) -> (mixed images, (N, C) mixed targets)``.
Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_mix_alphas(mixup: object, cutmix: object) -> tuple[float, float]:
    """Return ``(mixup, cutmix)`` as floats: the ``alpha`` of each Beta draw, 0 for off.

    Raises:
        ConfigError: A negative or non-finite value.
    """
    return (_validate.rate("mixup", mixup, example=0.2),
            _validate.rate("cutmix", cutmix, example=1.0))


def batch_mixer(*, mixup: float, cutmix: float, num_classes: int) -> Mixer | None:
    """Return the batch transform that mixes training batches (``None``: both off).

    Args:
        mixup: ``alpha`` of MixUp's ``Beta(alpha, alpha)`` ratio (0: off; 0.2 is common).
        cutmix: ``alpha`` of CutMix (0: off; 1.0 is common).
        num_classes: The model's number of outputs (to one-hot class indices).

    Returns:
        ``mix(images, targets)``, or ``None`` when both are 0.

    Example:
        >>> mix = batch_mixer(mixup=0.2, cutmix=0.0, num_classes=3)
        >>> x, y = mix(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
        >>> tuple(y.shape), torch.allclose(y.sum(1), torch.ones(4))
        ((4, 3), True)
    """
    mixup, cutmix = check_mix_alphas(mixup, cutmix)
    if not (mixup or cutmix):
        return None
    from torchvision.transforms import v2  # lazy: about 1 s to import, only when mixing

    steps = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup else []) + (
        [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix else [])
    return steps[0] if len(steps) == 1 else v2.RandomChoice(steps)
