"""Where and in which precision the Trainer runs: device selection and autocast.

Knows nothing about models or training: ``select_device`` maps ``"auto"`` to the best
available device, ``autocast`` returns the context that runs a forward pass in the chosen
precision.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch

__all__ = ["PRECISION_DTYPES", "Precision", "autocast", "select_device"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def select_device(device: str | torch.device = "auto", *, local_rank: int = 0) -> torch.device:
    """Pick the training device: ``"auto"`` prefers CUDA, then MPS, then CPU.

    Args:
        device: ``"auto"`` or anything ``torch.device`` accepts.
        local_rank: The CUDA device index to use when ``device`` names no index.
    """
    if str(device) == "auto":
        if torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Return the autocast context of ``precision`` on ``device`` (a no-op for ``"fp32"``).

    Args:
        device: The device the forward pass runs on.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    """
    dtype = PRECISION_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
