"""What transferkit reads from the environment: offline mode, cache folders, ImageNet statistics.

One place for each rule, shared by the weights resolution and the data sets:

- offline mode is on when ``TRANSFERKIT_OFFLINE`` or ``HF_HUB_OFFLINE`` holds a true value
  (``1``, ``true``, ``yes``, ``on``);
- transferkit's own cache is ``$TRANSFERKIT_CACHE``, else ``$XDG_CACHE_HOME/transferkit``,
  else ``~/.cache/transferkit`` (weights at its top, data sets in subfolders);
- torch hub's and Hugging Face's caches are found the way those libraries find them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFLINE_VARS",
    "hf_hub_cache_dir",
    "is_offline",
    "torch_hub_checkpoints_dir",
    "transferkit_cache_dir",
]

#: Per-channel RGB mean and std of ImageNet, the preprocessing of most pretrained weights.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Environment variables that switch downloads off.
OFFLINE_VARS = ("TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """Return whether downloads are forbidden (``TRANSFERKIT_OFFLINE``/``HF_HUB_OFFLINE``)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in OFFLINE_VARS)


def _user_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def transferkit_cache_dir() -> Path:
    """Return transferkit's own cache (``TRANSFERKIT_CACHE``, else the user cache)."""
    if os.environ.get("TRANSFERKIT_CACHE"):
        return Path(os.environ["TRANSFERKIT_CACHE"]).expanduser()
    return _user_cache() / "transferkit"


def torch_hub_checkpoints_dir() -> Path:
    """Return torch hub's checkpoints directory (follows ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache_dir() -> Path:
    """Return the Hugging Face hub cache directory, as ``huggingface_hub`` computes it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return _user_cache() / "huggingface" / "hub"
