"""Fine-tuning recipes behind one call: ``fine_tune(model, train, val, recipe="lp_ft")``.

Each recipe is a short composition of the lower layers: a freezing policy
(:mod:`transferkit.freezing`), parameter groups (:mod:`transferkit.param_groups`), cached
features (:mod:`transferkit.features`), the L2-SP loss (:mod:`transferkit.l2sp`) and the
:class:`~transferkit.trainer.Trainer`. See ``docs/recipes.md`` for which recipe to use
when and the measurements behind the defaults.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import numbers
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.adaptation import get_info, unwrap
from transferkit.callbacks import Callback
from transferkit.checkpoint import atomic_write_text
from transferkit.devices import Precision, select_device
from transferkit.errors import ConfigError, UnknownRecipeError, closest
from transferkit.features import (
    EvalMode,
    FeatureLoader,
    HeadOnFeatures,
    batch_size_of,
    head_inputs,
    loader_like,
)
from transferkit.freezing import freeze, freeze_state, load_freeze_state
from transferkit.l2sp import L2SPLoss
from transferkit.param_groups import param_groups
from transferkit.schedules import warmup_cosine_scheduler
from transferkit.trainer import Trainer

__all__ = [
    "RECIPES", "FineTuneResult", "Recipe", "UnknownRecipeError", "fine_tune", "list_recipes"
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A named fine-tuning recipe and its default learning rates.

    Attributes:
        name: The name ``fine_tune(recipe=...)`` takes.
        summary: What trains, in one line.
        reference: Where the recipe comes from.
        lr: Default LR of the head (of the fine-tuning phase for ``lp_ft``).
        body_lr: Default LR of the body (None: the body does not train).
    """

    name: str
    summary: str
    reference: str
    lr: float = 1e-3
    body_lr: float | None = 1e-4


PROBE_LR = 1e-2  # head LR of a linear probe (also the probe phase of lp_ft)
L2SP_ALPHA = 0.01  # alpha of recipe "l2sp" when fine_tune(l2sp=0)
LAYER_DECAY = 0.7  # per-stage LR multiplier of recipe "llrd", counted back from the head

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("full", "everything trains; head LR 10x the body LR",
               "Howard & Ruder, ULMFiT (ACL 2018): discriminative fine-tuning"),
        Recipe("linear_probe", "frozen body; the head trains on features cached once",
               "Kornblith et al., Do Better ImageNet Models Transfer Better? (CVPR 2019)",
               lr=PROBE_LR, body_lr=None),
        Recipe("lp_ft", "linear probe first, then everything trains from the probed head",
               "Kumar et al., Fine-Tuning can Distort Pretrained Features (ICLR 2022)"),
        Recipe("gradual", "head first, then one more stage every few epochs, last stage first",
               "Howard & Ruder, ULMFiT (ACL 2018); fastai's fine_tune"),
        Recipe("llrd", f"layer-wise LR decay: stage i from the top gets body_lr*{LAYER_DECAY}^i",
               "Clark et al., ELECTRA (ICLR 2020); Bao et al., BEiT (ICLR 2022)"),
        Recipe("bitfit", "biases and the head train, all other weights frozen",
               "Ben Zaken et al., BitFit (ACL 2022)", lr=1e-3, body_lr=1e-3),
        Recipe("l2sp", f"full, plus L2-SP toward the pretrained body (alpha={L2SP_ALPHA})",
               "Li, Grandvalet & Davoine, Explicit Inductive Bias for Transfer Learning "
               "with Convolutional Networks (ICML 2018)"),
    )
}

# Arguments fine_tune sets itself: passing them through **trainer_kwargs is an error.
_OWNED = {
    "model": "it is the first argument",
    "epochs": "pass epochs= to fine_tune",
    "lr": "pass lr= to fine_tune",
    "body_lr": "pass body_lr= to fine_tune",
    "freeze": "each recipe sets its own freezing",
    "unfreeze_every": "use recipe='gradual'",
    "optimizer": "each recipe builds its optimizer; use Trainer directly for your own",
    "scheduler": "each recipe builds its schedule; use Trainer directly for your own",
}
_TRAINER_ARGS = [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` returns.

    Attributes:
        model: The fine-tuned model (the same object that was passed in).
        recipe: The recipe's name.
        history: One record per epoch over all phases, numbered continuously, each with
            a ``"phase"`` key (``"probe"`` or ``"finetune"``).
        seconds: Wall time of the whole call, feature extraction included.
        trainer: The last Trainer used; after ``linear_probe``, a Trainer over the full
            model (ready for ``evaluate``/``predict`` on images) that trained nothing.
    """

    model: nn.Module
    recipe: str
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    trainer: Trainer | None = None


def list_recipes() -> list[str]:
    """Return the names of the recipes, in the order of the documentation."""
    return list(RECIPES)


def _check_rate(name: str, value: object, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}.")
    return float(value)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}; e.g. {name}=5.")
    return int(value)


def _check_recipe(recipe: object) -> Recipe:
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    raise UnknownRecipeError(
        f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}.{closest(str(recipe), RECIPES)}"
        " Pass one of them as fine_tune(..., recipe='lp_ft')."
    )


def _check_trainer_kwargs(kwargs: dict[str, Any]) -> None:
    for key in kwargs:
        if key in _OWNED:
            raise ConfigError(
                f"fine_tune does not take {key}= as a Trainer argument: {_OWNED[key]}."
            )
        if key not in _TRAINER_ARGS:
            raise ConfigError(
                f"fine_tune got an unknown argument {key!r}; it passes extra keyword "
                f"arguments to Trainer, which takes {sorted(_TRAINER_ARGS)}."
                + closest(key, _TRAINER_ARGS)
            )


def _dry_run(kwargs: dict[str, Any], has_val: bool) -> None:
    # Let the Trainer validate every value on a stand-in module, before the model changes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = nn.Linear(1, 1)
        optimizer = torch.optim.SGD(module.parameters(), lr=1.0)  # skips head discovery
        args = {**kwargs, "device": "cpu", "progress": False, "optimizer": optimizer}
        stand_in = Trainer(module, **args)
    stand_in._check_monitor(has_val)


def _phase_records(history: list[dict[str, Any]], phase: str, offset: int) -> list[dict]:
    return [{**r, "epoch": r["epoch"] + offset, "phase": phase} for r in history]


def _schedule(optimizer: torch.optim.Optimizer, data: Any, epochs: int, kw: dict) -> Any:
    try:
        n = len(data)
    except TypeError:
        return None  # no len(): constant LR, as the Trainer does
    total = epochs * math.ceil(n / kw.get("grad_accum", 1))
    return warmup_cosine_scheduler(optimizer, total_steps=total, warmup=kw.get("warmup", 0.05))


def _optimizer(model: nn.Module, lr: float, body_lr: float, kw: dict, **extra: Any) -> Any:
    wd = kw.get("weight_decay", 0.05)
    groups = param_groups(model, lr, body_lr, weight_decay=wd, **extra)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


def _probe(model: nn.Module, train: Any, val: Any, *, epochs: int, lr: float, cache: bool,
           common: dict[str, Any], kw: dict[str, Any], phase_dir: Path | None) -> Trainer:
    """Train the head alone, on cached features (``cache``) or through the frozen body."""
    info = get_info(model)
    if cache and len(info.heads) > 1:
        log.warning("linear probe: %d heads %s; probing through the body (no cache)",
                    len(info.heads), info.heads)
        cache = False
    device = select_device(common["device"])
    model.to(device)
    freeze(model, "body")
    optimizer = _optimizer(model, lr, lr, kw)  # the head's parameters only (body frozen)
    args = {**common, **kw, "epochs": epochs, "optimizer": optimizer, "out_dir": phase_dir}
    if not cache:
        args["scheduler"] = _schedule(optimizer, train, epochs, kw)
        trainer = Trainer(EvalMode(model), **args)
        trainer.fit(train, val)
        return trainer
    start = time.perf_counter()
    feats, labels = head_inputs(model, train, device=device)
    shape = tuple(feats.shape[1:])
    train_feats = loader_like(train, feats.flatten(1), labels, seed=common["seed"])
    val_feats = None
    if val is not None:
        vf, vl = head_inputs(model, val, device=device)
        val_feats = FeatureLoader(vf.flatten(1), vl, batch_size=batch_size_of(val), shuffle=False)
    log.info("linear probe: extracted %d train%s features (%d-d) in %.1f s", feats.shape[0],
             f" + {val_feats.features.shape[0]} val" if val_feats is not None else "",
             math.prod(shape), time.perf_counter() - start)
    args["scheduler"] = _schedule(optimizer, train_feats, epochs, kw)
    trainer = Trainer(HeadOnFeatures(model, shape), **args)
    trainer.fit(train_feats, val_feats)
    return trainer


def _finetune(model: nn.Module, train: Any, val: Any, *, recipe: str, epochs: int, lr: float,
              body_lr: float, l2sp: float, common: dict[str, Any], kw: dict[str, Any],
              phase_dir: Path | None) -> Trainer:
    """Train with the Trainer under the recipe's freezing and optimizer."""
    args = {**common, **kw, "epochs": epochs, "lr": lr, "body_lr": body_lr, "out_dir": phase_dir}
    args["freeze"] = {"bitfit": "bitfit", "gradual": "body"}.get(recipe, "none")
    if recipe == "gradual":
        stages = len(get_info(model).stages)
        # Every stage opens by the last epoch when epochs > stages; otherwise one per epoch.
        args["unfreeze_every"] = max(1, (epochs - 1) // max(1, stages))
        log.info("gradual: one more stage of %d every %d epoch(s)", stages,
                 args["unfreeze_every"])
    if recipe == "llrd":
        args["optimizer"] = _optimizer(model, lr, body_lr, kw, layer_decay=LAYER_DECAY,
                                       include_frozen=True)
        args["scheduler"] = _schedule(args["optimizer"], train, epochs, kw)
    if l2sp > 0:
        args["loss_fn"] = L2SPLoss(model, kw.get("loss_fn"), alpha=l2sp)
    trainer = Trainer(model, **args)
    trainer.fit(train, val)
    return trainer


def fine_tune(
    model: nn.Module,
    train: Iterable[Any],
    val: Iterable[Any] | None = None,
    *,
    recipe: str = "lp_ft",
    epochs: int = 5,
    lr: float | None = None,
    body_lr: float | None = None,
    l2sp: float = 0.0,
    probe_epochs: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    precision: Precision = "fp32",
    callbacks: Iterable[Callback] = (),
    seed: int = 0,
    progress: bool | None = None,
    cache_features: bool = True,
    bn: str | None = None,
    **trainer_kwargs: Any,
) -> FineTuneResult:
    """Fine-tune ``model`` on ``train`` with a named recipe; return the model and history.

    Recipes (``list_recipes()``): ``"full"``, ``"linear_probe"``, ``"lp_ft"``,
    ``"gradual"``, ``"llrd"``, ``"bitfit"``, ``"l2sp"``; see ``docs/recipes.md``.
    The model is trained in place. All arguments are checked before it changes.

    Args:
        model: An adapted model (``transferkit.create`` or ``adapt``).
        train: Batches of ``(images, labels)`` (a DataLoader or a ``TensorLoader``).
        val: Validation batches, evaluated after every epoch.
        recipe: The recipe's name.
        epochs: Total epochs, all phases together (``lp_ft`` needs at least 2).
        lr: Head LR; default per recipe (see ``RECIPES``). For ``lp_ft``, the head LR of
            the fine-tuning phase (the probe uses ``PROBE_LR``).
        body_lr: Body LR (of the last stage for ``llrd``); default per recipe.
        l2sp: L2-SP strength ``alpha`` added to any recipe (0: off; recipe ``"l2sp"``
            defaults to ``L2SP_ALPHA``). Not applied to a linear probe, which has no body
            to pull.
        probe_epochs: Epochs of the probe phase of ``lp_ft``; default ``epochs // 2``.
        out_dir: Each phase's Trainer writes to ``out_dir/<phase>/``; the combined
            history goes to ``out_dir/history.json``.
        device: ``"auto"`` or a device.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        callbacks: Passed to every phase's Trainer (during a cached probe, its ``model``
            is the head alone).
        seed: Shuffling seed of the Trainer and of cached features.
        progress: Show progress bars.
        cache_features: Train linear probes on features cached once (``False``: run the
            frozen body, in eval mode, every epoch; the same result, more slowly).
        bn: BatchNorm while the body trains: ``"train"`` (batch statistics, running
            averages updated) or ``"frozen"`` (eval behaviour: the pretrained running
            statistics, not updated); default ``"frozen"`` for ``lp_ft`` (its probe was fit
            on eval-mode features, which batch statistics would shift) and ``"train"``
            otherwise. The returned model keeps it (``freeze_state(model)["bn"]``;
            ``transferkit.unfreeze(model)`` resets it).
        **trainer_kwargs: Other :class:`~transferkit.trainer.Trainer` arguments
            (``weight_decay``, ``warmup``, ``grad_clip``, ``loss_fn``, ``monitor``...).

    Returns:
        A :class:`FineTuneResult`.

    Raises:
        UnknownRecipeError: Unknown recipe (a ``ConfigError``; the closest is suggested).
        ConfigError: Bad ``epochs``, ``lr``, ``body_lr``, ``l2sp``, ``probe_epochs`` or
            Trainer argument.

    Example:
        >>> import torch, transferkit
        >>> model = transferkit.create("resnet18", 2, in_chans=1, pretrained=False)
        >>> data = [(torch.randn(8, 1, 32, 32), torch.arange(8) % 2)] * 2
        >>> result = fine_tune(model, data, recipe="bitfit", epochs=1, device="cpu")
        >>> [r["phase"] for r in result.history]
        ['finetune']
    """
    start = time.perf_counter()
    spec = _check_recipe(recipe)
    epochs = _check_int("epochs", epochs, 1)
    lr_ = _check_rate("lr", lr)
    body_lr_ = _check_rate("body_lr", body_lr)
    alpha = _check_rate("l2sp", l2sp, allow_zero=True) or 0.0
    if spec.name == "l2sp" and alpha == 0:
        alpha = L2SP_ALPHA
    n_probe = 0
    if spec.name == "lp_ft":
        if epochs < 2:
            raise ConfigError(f"recipe 'lp_ft' needs epochs >= 2 (probe, then fine-tune), "
                              f"got epochs={epochs}; pass epochs=2 or recipe='linear_probe'.")
        n_probe = max(1, epochs // 2) if probe_epochs is None else probe_epochs
        if isinstance(n_probe, bool) or not isinstance(n_probe, int) or not 1 <= n_probe < epochs:
            raise ConfigError(f"probe_epochs must be an int in [1, epochs - 1] = [1, {epochs - 1}]"
                              f", got {probe_epochs!r}.")
    elif probe_epochs is not None:
        raise ConfigError(f"probe_epochs={probe_epochs!r} applies to recipe 'lp_ft' only, "
                          f"not {spec.name!r}; remove it.")
    if bn is not None and bn not in ("train", "frozen"):
        raise ConfigError(f"bn={bn!r}; use 'train', 'frozen' or None (the recipe's default).")
    bn_ = bn if bn is not None else ("frozen" if spec.name == "lp_ft" else "train")
    _check_trainer_kwargs(trainer_kwargs)
    if spec.name == "linear_probe" and alpha > 0:
        warnings.warn(f"l2sp={alpha} has no effect with recipe 'linear_probe': the body is "
                      "frozen. HINT: use recipe='lp_ft' to regularise its fine-tuning phase.",
                      stacklevel=2)
    common = {"device": device, "precision": precision, "callbacks": tuple(callbacks),
              "seed": seed, "progress": progress}
    try:
        select_device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r} is not a device: {exc}; e.g. 'cpu'.") from exc
    _dry_run({**common, **trainer_kwargs}, val is not None)
    root = Path(out_dir) if out_dir is not None else None

    def phase_dir(name: str) -> Path | None:
        return root / name if root is not None else None

    history: list[dict[str, Any]] = []
    trainer: Trainer
    before = freeze_state(model)
    try:
        if spec.name in ("linear_probe", "lp_ft"):
            n = epochs if spec.name == "linear_probe" else n_probe
            plr = lr_ if (lr_ is not None and spec.name == "linear_probe") else PROBE_LR
            trainer = _probe(unwrap(model), train, val, epochs=n, lr=plr, cache=cache_features,
                             common=common, kw=trainer_kwargs, phase_dir=phase_dir("probe"))
            history += _phase_records(trainer.history, "probe", 0)
        if spec.name != "linear_probe":
            head = lr_ if lr_ is not None else spec.lr
            body = body_lr_ if body_lr_ is not None else (spec.body_lr or head * 0.1)
            # Set before the Trainer, which keeps this BatchNorm mode under its own
            # freezing policy (every fine-tuning phase applies one).
            freeze(model, "none", bn=bn_)
            trainer = _finetune(model, train, val, recipe=spec.name, epochs=epochs - n_probe,
                                lr=head, body_lr=body, l2sp=alpha, common=common,
                                kw=trainer_kwargs, phase_dir=phase_dir("finetune"))
            history += _phase_records(trainer.history, "finetune", n_probe)
        else:
            full = {**common, **trainer_kwargs, "epochs": epochs, "lr": plr}
            trainer = Trainer(model, **full)
            trainer.history = list(history)
    except BaseException:
        if not history:  # nothing trained yet: give the model its freezing back
            load_freeze_state(model, before)
        raise
    if root is not None:
        atomic_write_text(root / "history.json", json.dumps(history, indent=1))
    seconds = time.perf_counter() - start
    log.info("fine_tune: recipe %s, %d epoch(s) in %.1f s", spec.name, len(history), seconds)
    return FineTuneResult(model=model, recipe=spec.name, history=history, seconds=seconds,
                          trainer=trainer)
