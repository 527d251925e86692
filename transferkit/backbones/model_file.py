"""Save and load self-contained model files: a safetensors state dict plus metadata.

A model file holds the fine-tuned weights (``safetensors``, never pickle: loading it
cannot run code) and, as one JSON string under the metadata key ``"transferkit"``,
everything needed to rebuild and use the model: the backbone name, ``num_classes``,
``in_chans``, the input ``image_size``, the normalisation ``mean``/``std`` and the
class names. :func:`load_model` rebuilds the architecture with
``create(backbone, num_classes, in_chans=..., pretrained=False)`` and loads the weights
strictly, so no pretrained weights (and no network) are needed to load a model file.

A model file also carries a digest record under the metadata key
``"transferkit.sha256"``: the sha256 of every tensor and of the metadata, written by
:func:`save_model` and checked by :func:`load_model`, so damaged bytes fail with the name
of the damaged tensor instead of loading. The model saved is always the plain one:
``torch.compile``, DDP and view wrappers are removed first
(:func:`~transferkit.adaptation.core.unwrap`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from transferkit import _validate
from transferkit._integrity import DIGEST_KEY, damaged_entries, describe_damaged, digest_record
from transferkit._io import atomic_write_bytes
from transferkit._state_dict import fitted
from transferkit._version import __version__
from transferkit.adaptation.core import get_info, unwrap
from transferkit.backbones.registry import backbone_spec, create
from transferkit.errors import CheckpointError, ConfigError, TransferKitError

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "ModelMeta", "load_model", "read_meta", "save_model"]

#: Version of the metadata layout; :func:`load_model` refuses files with a newer one.
FORMAT_VERSION = 1
#: The safetensors metadata key holding the JSON metadata.
METADATA_KEY = "transferkit"


@dataclass(frozen=True)
class ModelMeta:
    """Describe the model stored in a model file.

    Attributes:
        backbone: Registry name the model was built from (``create(backbone, ...)``).
        num_classes: Outputs of the head.
        in_chans: Channels of the input image.
        image_size: ``(height, width)`` of the input image.
        mean: Per-channel mean the input is normalised with (one value per channel).
        std: Per-channel std, as ``mean``.
        class_names: Name of each output, indexed by label.
        extra: Free-form JSON-compatible values (recipe, metrics, ...).
        format_version: Version of the metadata layout.
        transferkit_version: Version of transferkit that wrote the file.
    """

    backbone: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    transferkit_version: str = __version__


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    backbone: str,
    class_names: Sequence[str],
    image_size: int | Sequence[int],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its metadata to a safetensors model file, atomically.

    Everything is checked before anything is written; a crash while writing leaves the
    previous file (if any) in place.

    Args:
        model: A model built by :func:`transferkit.backbones.registry.create` (or adapted with
            :func:`transferkit.adaptation.core.adapt`) from ``backbone``; a compiled, DDP
            or view wrapper is removed first (its tensors are saved under their own names).
        path: Destination file (``.safetensors``); its folder must exist.
        backbone: The registry name the model was built from.
        class_names: One name per output of the head.
        image_size: Input size the model was trained at: an int or ``(height, width)``.
        extra: JSON-compatible values to store with the model (recipe, metrics, ...).

    Returns:
        The path written.

    Raises:
        ConfigError: ``class_names`` does not match the head, a bad ``image_size``,
            ``extra`` not JSON-compatible.
        UnknownBackboneError: ``backbone`` is not a registry name.
        CheckpointError: The folder of ``path`` does not exist or cannot be written.

    Example:
        >>> import tempfile
        >>> from transferkit.backbones.registry import create
        >>> model = create("resnet18", 2, pretrained=False)
        >>> path = save_model(model, Path(tempfile.mkdtemp()) / "m.safetensors",
        ...                   backbone="resnet18", class_names=["cat", "dog"], image_size=32)
        >>> loaded, meta = load_model(path)
        >>> meta.class_names, meta.image_size
        (('cat', 'dog'), (32, 32))
    """
    backbone_spec(backbone)  # fails early on a name load_model could not rebuild
    info = get_info(model)
    names = tuple(str(n) for n in class_names)
    if len(names) != info.num_classes:
        raise ConfigError(
            f"class_names has {len(names)} names but the model has {info.num_classes} "
            f"outputs; pass one name per class, e.g. {[f'class{i}' for i in range(2)]}."
        )
    meta = ModelMeta(
        backbone=backbone, num_classes=info.num_classes, in_chans=info.in_chans,
        image_size=_validate.image_size(image_size), mean=tuple(float(m) for m in info.mean),
        std=tuple(float(s) for s in info.std), class_names=names, extra=dict(extra or {}),
    )
    try:
        text = json.dumps(asdict(meta))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"extra must hold JSON-compatible values only: {exc}.") from exc
    # Clone: safetensors refuses tensors that share memory (tied weights, views).
    state = {k: v.detach().to("cpu").contiguous().clone()
             for k, v in unwrap(model).state_dict().items()}
    metadata = {METADATA_KEY: text}
    metadata[DIGEST_KEY] = digest_record(state, metadata)
    data = save_safetensors(state, metadata=metadata)
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(
            f"Cannot write model file {str(path)!r}: folder {str(path.parent)!r} does not "
            "exist. Create it first or pick another path."
        )
    try:
        return atomic_write_bytes(path, data)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot write model file {str(path)!r}: {exc.strerror or exc}. Pick a "
            "writable path."
        ) from exc


def _meta_from_json(text: str, path: Path) -> ModelMeta:
    try:
        raw = json.loads(text)
        version = int(raw.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"Model file {str(path)!r} has format version {version}, newer than this "
                f"transferkit ({__version__}) reads ({FORMAT_VERSION}). Upgrade transferkit."
            )
        return ModelMeta(
            backbone=str(raw["backbone"]), num_classes=int(raw["num_classes"]),
            in_chans=int(raw["in_chans"]), image_size=_validate.image_size(raw["image_size"]),
            mean=tuple(float(m) for m in raw["mean"]), std=tuple(float(s) for s in raw["std"]),
            class_names=tuple(str(n) for n in raw["class_names"]),
            extra=dict(raw.get("extra") or {}), format_version=version,
            transferkit_version=str(raw.get("transferkit_version", "unknown")),
        )
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise CheckpointError(
            f"Model file {str(path)!r} has malformed transferkit metadata ({exc!r}). "
            "Write it again with transferkit.save_model."
        ) from exc


def _header(path: str | os.PathLike[str]) -> tuple[Path, dict[str, str]]:
    """Return the path and safetensors metadata of a model file (the header only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Model file {str(path)!r} does not exist. Pass the model.safetensors written "
            "by `transferkit train` or transferkit.save_model."
        )
    try:
        with safe_open(path, framework="pt") as f:  # checks header and data extent
            metadata = dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001  # safetensors raises several private types
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors model file ({exc}). It may be "
            "truncated or not a model file; write it again with `transferkit train` or "
            "save_model."
        ) from exc
    if METADATA_KEY not in metadata:
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file without transferkit metadata (key "
            f"{METADATA_KEY!r}), so the model cannot be rebuilt. Write it with "
            "transferkit.save_model."
        )
    return path, metadata


def _verified_state(path: Path, metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """Read the tensors and check them (and the metadata) against the digest record."""
    try:
        state = load_safetensors(path.read_bytes())
    except Exception as exc:  # noqa: BLE001  # safetensors raises several private types
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors model file ({exc}). Write it "
            "again with `transferkit train` or save_model."
        ) from exc
    others = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    if DIGEST_KEY not in metadata:
        warnings.warn(
            f"Model file {str(path)!r} has no digest record ({DIGEST_KEY!r}): it was written "
            "by an older transferkit or another tool, so damaged bytes cannot be detected. "
            "HINT: load it once and write it again with transferkit.save_model.",
            stacklevel=3,
        )
        return state
    bad = damaged_entries(metadata[DIGEST_KEY], state, others)
    if bad:
        raise CheckpointError(
            f"Model file {str(path)!r} is corrupt: {describe_damaged(bad)}, so its bytes "
            "changed after it was written (disk, copy or transfer error); nothing was "
            "loaded. Use another copy of the file, or write it again with save_model."
        )
    return state


def read_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """Return the metadata of a model file without building the model.

    Only the file's header is read, so its tensors are not verified here; :func:`load_model`
    verifies them.

    Args:
        path: A file written by :func:`save_model`.

    Raises:
        CheckpointError: Missing, truncated or not a model file.
    """
    path, metadata = _header(path)
    return _meta_from_json(metadata[METADATA_KEY], path)


def load_model(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model stored in a model file, in eval mode.

    No pretrained weights are needed: the architecture is built with random weights and
    every tensor is then loaded from the file (strictly: same names and shapes, all
    checked before any is copied). The content is verified first against the digest record
    :func:`save_model` writes; a file without one (an older transferkit) loads with a
    warning that it could not be verified.

    Args:
        path: A file written by :func:`save_model`.
        device: Where to put the model.

    Returns:
        ``(model, meta)``.

    Raises:
        CheckpointError: Missing, truncated, corrupt (the message names the damaged tensor)
            or not a model file; a backbone this installation does not know; weights that
            do not fit the architecture.
    """
    path, metadata = _header(path)
    meta = _meta_from_json(metadata[METADATA_KEY], path)
    state = _verified_state(path, metadata)
    try:
        model = create(meta.backbone, meta.num_classes, in_chans=meta.in_chans, pretrained=False)
    except TransferKitError as exc:
        raise CheckpointError(
            f"Cannot rebuild the model of {str(path)!r} (backbone {meta.backbone!r}): {exc} "
            "Install the package that provides the backbone, or use the transferkit "
            "version that wrote the file."
        ) from exc
    state, problem = fitted(model, state)  # a file saved from a compiled model: _orig_mod.
    if problem is not None:
        raise CheckpointError(
            f"The weights in {str(path)!r} do not fit backbone {meta.backbone!r} "
            f"(num_classes={meta.num_classes}, in_chans={meta.in_chans}): {problem}. "
            "The file may be corrupt, or was written by another transferkit version."
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta
