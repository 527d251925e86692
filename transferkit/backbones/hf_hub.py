"""timm models on the Hugging Face Hub (``hf_hub:org/name``), resolved from the local cache.

A timm repository on the Hub holds ``config.json`` (the architecture, ``num_classes``,
``model_args`` and the ``pretrained_cfg`` with the preprocessing) and the weights
(``model.safetensors`` or ``pytorch_model.bin``). Both are looked up in the local Hugging
Face cache first (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``),
in its own layout: ``models--<org>--<name>/snapshots/<revision>/``, the revision
``refs/main`` names first. Only a ``config.json`` that is not cached is downloaded, and only
when offline mode is off; the weights go through
:func:`~transferkit.backbones.weights.resolve_state_dict` like every other backbone's, so
offline without cached weights is a :class:`~transferkit.errors.WeightsNotFoundError`, never
random weights.

timm spells the prefix ``hf-hub:``; both spellings are accepted, ``hf_hub:`` is the name
transferkit reports.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from transferkit._env import IMAGENET_MEAN, IMAGENET_STD, hf_hub_cache_dir, is_offline
from transferkit.backbones.sources import timm_create
from transferkit.backbones.specs import BackboneSpec
from transferkit.backbones.weights import WeightsSource, hf_cache_files, hf_repo_dir
from transferkit.errors import ConfigError, UnknownBackboneError, WeightsNotFoundError

__all__ = ["HUB_PREFIXES", "cached_hub_names", "hub_repo_id", "hub_spec"]

#: Name prefixes of Hub models: transferkit's spelling first, then timm's.
HUB_PREFIXES = ("hf_hub", "hf-hub")
_CONFIG = "config.json"


def hub_repo_id(name: str) -> str | None:
    """Return the ``org/name`` of a Hub backbone name, or ``None`` if it is not one.

    Args:
        name: A backbone name (``"hf_hub:timm/resnet18.a1_in1k"``).

    Raises:
        ConfigError: It has a Hub prefix but no ``org/name`` after it.

    Example:
        >>> hub_repo_id("hf-hub:timm/resnet18.a1_in1k"), hub_repo_id("resnet18")
        ('timm/resnet18.a1_in1k', None)
    """
    prefix, sep, repo = name.partition(":")
    if not sep or prefix not in HUB_PREFIXES:
        return None
    org, slash, rest = repo.partition("/")
    if not slash or not org or not rest or "/" in rest or "@" in repo:
        raise ConfigError(
            f"Backbone {name!r} is not a Hugging Face Hub name: write 'hf_hub:org/name', "
            "e.g. 'hf_hub:timm/resnet18.a1_in1k' (a revision with '@' is not supported: "
            "the cached revision refs/main names is used)."
        )
    return repo


def _download_config(repo_id: str) -> Path:
    """Download ``config.json`` of ``repo_id`` into the cache (tests replace this)."""
    # huggingface_hub comes with timm; only a name whose config is not cached needs it.
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, _CONFIG, cache_dir=str(hf_hub_cache_dir())))


def _config_file(name: str, repo_id: str) -> Path:
    files, shown = hf_cache_files(repo_id, [_CONFIG])
    for file in files:
        if file.is_file():
            return file
    repo = hf_repo_dir(repo_id)
    fetch = (f"run `hf download {repo_id}` (or timm.create_model('hf-hub:{repo_id}', "
             f"pretrained=True)) on a machine with internet, then copy {repo} to this machine")
    if is_offline():
        reason = "offline mode is on (TRANSFERKIT_OFFLINE/HF_HUB_OFFLINE), so nothing is downloaded"
    else:
        try:
            return _download_config(repo_id)
        except Exception as exc:  # noqa: BLE001  # no network, unknown or private repository
            reason = f"downloading it failed: {type(exc).__name__}: {exc}"
    raise WeightsNotFoundError(
        f"Backbone {name!r}: the Hugging Face Hub repository {repo_id!r} is not in the local "
        f"cache (looked for {shown}) and {reason}. To use it: {fetch}; or point HF_HOME / "
        "HF_HUB_CACHE at the cache that holds it. Nothing was built with random weights."
    )


def _read_config(file: Path, name: str) -> tuple[str, dict[str, Any], dict[str, Any], int]:
    """Return ``(architecture, pretrained_cfg, model_args, num_classes)``, as timm reads them."""
    try:
        raw = json.loads(file.read_text())
        if "pretrained_cfg" not in raw:  # timm's older layout: the cfg at the top level
            cfg = {k: v for k, v in raw.items() if k not in ("architecture", "num_features")}
            raw = {"architecture": raw["architecture"], "pretrained_cfg": cfg}
        arch = str(raw["architecture"])
        cfg = dict(raw["pretrained_cfg"])
        args = dict(raw.get("model_args") or {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnknownBackboneError(
            f"Backbone {name!r}: {str(file)!r} is not a timm model config ({exc!r}). Only "
            "timm models (a config.json with 'architecture' and 'pretrained_cfg') can be "
            "loaded from the Hub; delete the cached folder if it is damaged."
        ) from exc
    cfg.pop("label_names", None)  # not a PretrainedCfg field
    num_classes = int(raw.get("num_classes", cfg.get("num_classes", 0)) or 0)
    return arch, cfg, args, num_classes


def hub_spec(name: str) -> BackboneSpec:
    """Return the spec of Hub backbone ``name`` from its cached (or downloaded) config.

    Args:
        name: ``"hf_hub:org/name"`` (or timm's ``"hf-hub:org/name"``).

    Raises:
        ConfigError: ``name`` is not of that form.
        WeightsNotFoundError: The config is not cached and cannot be downloaded (the message
            names the cache folder and how to fill it).
        UnknownBackboneError: The repository is not a timm model, or its architecture is
            not in the installed timm.
    """
    import timm

    repo_id = hub_repo_id(name)
    if repo_id is None:
        raise ConfigError(f"{name!r} is not a Hugging Face Hub backbone name ('hf_hub:org/name').")
    canonical = f"{HUB_PREFIXES[0]}:{repo_id}"
    arch, cfg, args, num_classes = _read_config(_config_file(canonical, repo_id), canonical)
    if not timm.is_model(arch):
        raise UnknownBackboneError(
            f"Backbone {canonical!r} needs timm architecture {arch!r}, which timm "
            f"{timm.__version__} does not have. Upgrade timm (pip install -U timm)."
        )
    cfg.update(hf_hub_id=repo_id, source="hf-hub")  # what timm's create_model sets
    input_size = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224)))
    kwargs = {**args, "num_classes": num_classes}
    return BackboneSpec(
        name=canonical, source=HUB_PREFIXES[0], architecture=arch, weights_tag=cfg.get("tag"),
        builder=functools.partial(timm_create, arch, pretrained_cfg=cfg, **kwargs),
        weights=WeightsSource(
            cache_name=f"hf_hub--{repo_id.replace('/', '--')}", hf_hub_id=repo_id,
            download="timm", download_ref=f"hf-hub:{repo_id}",
        ),
        num_classes=num_classes, in_chans=int(args.get("in_chans", input_size[0])),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
        input_size=input_size,  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 0.875)), license=cfg.get("license"),
        first_layer=cfg.get("first_conv"), head=cfg.get("classifier") if num_classes else None,
    )


def cached_hub_names() -> list[str]:
    """Return ``hf_hub:org/name`` for every timm repository in the local Hugging Face cache.

    A repository counts when a cached snapshot holds a ``config.json`` naming an
    ``architecture`` (timm's layout; a ``transformers`` config names ``architectures``).
    Nothing is downloaded.
    """
    root = hf_hub_cache_dir()
    if not root.is_dir():
        return []
    names = []
    for repo in sorted(root.glob("models--*--*")):
        org, _, rest = repo.name[len("models--"):].partition("--")
        repo_id = f"{org}/{rest}"
        file = next((f for f in hf_cache_files(repo_id, [_CONFIG])[0] if f.is_file()), None)
        try:
            if file is not None and "architecture" in json.loads(file.read_text()):
                names.append(f"{HUB_PREFIXES[0]}:{repo_id}")
        except (OSError, ValueError):
            continue  # a damaged config: create() explains it when asked
    return names
