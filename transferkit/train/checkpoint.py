"""Write and read training checkpoints safely.

A checkpoint is a plain ``dict`` of tensors and plain Python values, so it loads with
``torch.load(path, weights_only=True)``: loading never runs code from the file. Before
that, the CRC-32 of every entry of the zip file ``torch.save`` writes is checked
(:func:`transferkit._integrity.zip_damage`), because ``torch.load`` ignores it: damaged
bytes raise :class:`~transferkit.errors.CheckpointError`, they never load.

Writes are atomic (:func:`transferkit._io.atomic_write_bytes`): a process killed at any
moment leaves either the previous file or the new one, never a half.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit._integrity import zip_damage
from transferkit._io import atomic_write_bytes
from transferkit.errors import CheckpointError

__all__ = [
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Serialise ``state`` with ``torch.save`` and write it to ``path`` atomically.

    Args:
        state: Tensors and plain Python values only (dict, list, tuple, str, int,
            float, bool, None), so that it loads with ``weights_only=True``.
        path: Destination file; its folder is created if missing.

    Returns:
        The destination path.

    Raises:
        CheckpointError: The folder cannot be created or the file cannot be written.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise CheckpointError(
            f"Cannot write checkpoint {str(path)!r}: {exc}. "
            "Check that the folder is writable and the disk is not full."
        ) from exc


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: The checkpoint file.
        map_location: Where to put the tensors (default: CPU).

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointError: The file is missing, truncated, not a dictionary, or corrupt: an
            entry fails its CRC-32 check (the message names the entry and its tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not exist. Pass the path of a file written by "
            "the Trainer, e.g. '<out_dir>/last.pt'."
        )
    damage = zip_damage(path)
    if damage is not None:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is corrupt: {damage.describe()}, so its bytes "
            "changed after it was written (disk, copy or transfer error); nothing was loaded. "
            "Use another checkpoint (e.g. 'best.pt' or 'last.pt') or start without resume."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise CheckpointError(
            f"Checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}). "
            "The file is truncated, corrupt or not a transferkit checkpoint; "
            "use another checkpoint (e.g. 'best.pt' or 'last.pt') or start without resume."
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"Checkpoint {str(path)!r} holds a {type(state).__name__}, not a dict; "
            "it was not written by transferkit."
        )
    return state


def get_rng_state() -> dict[str, Any]:
    """Return the state of every random generator training uses, as tensors and numbers.

    Covers torch (CPU and every CUDA device), NumPy's global generator and Python's
    ``random``. The result loads with ``torch.load(weights_only=True)``.
    """
    version, mt, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": torch.tensor(mt, dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": gauss_next,
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_name": str(np_name),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from a dictionary returned by :func:`get_rng_state`.

    Args:
        state: The saved states.

    Raises:
        CheckpointError: ``state`` lacks a key or holds a value of the wrong kind.
    """
    try:
        torch.set_rng_state(state["torch"].cpu())
        cuda = state["cuda"]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda[: torch.cuda.device_count()]])
        mt = tuple(int(v) for v in state["python"].tolist())
        random.setstate((state["python_version"], mt, state["python_gauss"]))
        keys = state["numpy"].cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (
                state["numpy_name"],
                keys,
                state["numpy_pos"],
                state["numpy_has_gauss"],
                state["numpy_gauss"],
            )
        )
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"Cannot restore the random generators from the checkpoint: {exc!r}. "
            "The checkpoint was not written by this version of transferkit."
        ) from exc
