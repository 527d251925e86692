"""Fine-tuning recipes behind one call: ``fine_tune(model, train, val, recipe="full")``.

Each recipe is a short composition of the lower layers: a freezing policy
(:mod:`transferkit.adaptation.freezing`), the Trainer's default optimizer and schedule (with the
recipe's learning rates and layer decay), cached inputs of the frozen part
(:mod:`transferkit.recipes.cache`), the L2-SP loss (:mod:`transferkit.recipes.l2sp`) and the
:class:`~transferkit.train.trainer.Trainer`. The recipes themselves are the table in
:mod:`transferkit.recipes.table`; ``docs/recipes.md`` says which to use when and shows the
measurements behind the defaults.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transferkit import _validate
from transferkit._io import check_writable
from transferkit.adaptation.core import get_info, unwrap
from transferkit.adaptation.freezing import BN_MODES, freeze, freeze_state, load_freeze_state
from transferkit.data.pipeline import TensorLoader
from transferkit.errors import ConfigError
from transferkit.recipes.budget import (
    Choice,
    default_epochs,
    default_label_smoothing,
    default_recipe,
    default_recipe_lr,
)
from transferkit.recipes.cache import (
    cache_inputs,
    is_conv_model,
    plain_loader,
    split_at_head,
    split_at_stage,
)
from transferkit.recipes.feature_loader import FeatureLoader, batch_size_of, loader_like
from transferkit.recipes.inputs import build_inputs, num_samples
from transferkit.recipes.l2sp import L2SP
from transferkit.recipes.lr_search import FIND, check_lr, find_phase_lr
from transferkit.recipes.table import (
    L2SP_ALPHA,
    LAYER_DECAY,
    PROBE_LR,
    UNFREEZE_UNTIL,
    check_recipe,
)
from transferkit.recipes.views import EvalMode
from transferkit.train.batch_checks import data_len
from transferkit.train.callbacks import Callback
from transferkit.train.checkpoint import get_rng_state, set_rng_state
from transferkit.train.devices import Precision, select_device
from transferkit.train.history import higher_is_better, write_history
from transferkit.train.lr_finder import LRFindResult
from transferkit.train.trainer import Trainer, check_trainer_args

__all__ = ["FineTuneResult", "fine_tune"]

log = logging.getLogger(__name__)

# Arguments fine_tune sets itself: passing them through **trainer_kwargs is an error.
_OWNED = {
    "model": "it is the first argument",
    "epochs": "pass epochs= to fine_tune",
    "lr": "pass lr= to fine_tune",
    "body_lr": "pass body_lr= to fine_tune",
    "freeze": "each recipe sets its own freezing",
    "unfreeze_every": "use recipe='gradual'",
    "unfreeze_until": f"use recipe='gradual' (unfreeze_until={UNFREEZE_UNTIL})",
    "layer_decay": f"use recipe='llrd' (layer_decay={LAYER_DECAY})",
    "optimizer": "each recipe builds its optimizer; use Trainer directly for your own",
    "scheduler": "each recipe builds its schedule; use Trainer directly for your own",
}


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` returns.

    Attributes:
        model: The fine-tuned model (the same object that was passed in).
        recipe: The recipe's name.
        history: One record per epoch over all phases, numbered continuously, each with
            a ``"phase"`` key (``"probe"`` or ``"finetune"``).
        seconds: Wall time of the whole call, caching included.
        trainer: A Trainer over the full model, ready for ``evaluate``/``predict`` on
            images. After a phase that trained on cached inputs (``linear_probe``,
            ``freeze_stages``) it is a new Trainer that trained nothing itself.
        notes: One line per choice ``fine_tune`` made that the user did not spell out
            (what was cached, a cache that could not be used), as also logged.
        timings: Where the time went, in seconds: ``cache_s`` (computing cached inputs,
            0 without a cache) and ``train_s`` (the epochs, validation included).
        settings: Every setting ``fine_tune`` chose itself because it was left out (the
            length of training, the LRs and, for tensors, the batch size, image size and
            augmentation), each with its reason; also logged, one line each.
        lr_find: The LR sweep of ``lr="find"`` (plot it with
            :func:`~transferkit.report.plot_lr_find`), else ``None``.
        image_size: The size the images trained at when ``train`` was tensors (given or
            chosen); ``None`` for a loader, which has its own. Evaluate and predict at it.
    """

    model: nn.Module
    recipe: str
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    trainer: Trainer | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    settings: list[Choice] = field(default_factory=list)
    lr_find: LRFindResult | None = None
    image_size: int | None = None


def _check_trainer_kwargs(kwargs: dict[str, Any]) -> None:
    for key in kwargs:
        if key in _OWNED:
            raise ConfigError(
                f"fine_tune does not take {key}= as a Trainer argument: {_OWNED[key]}."
            )


def _check_mixing(kwargs: dict[str, Any], *, recipe: str, cache_features: bool,
                  freeze_stages: int, alpha: float) -> str | None:
    """Refuse mixing where a phase trains on cached inputs; return the note for ``lp_ft``.

    Mixup and CutMix mix images. A cache holds the features (or stage outputs) of the
    images as they are, computed once, so there is nothing to mix: ``linear_probe`` on a
    cache and ``freeze_stages`` refuse them. ``lp_ft``'s probe fits the head on the clean
    images (as Kumar et al.); its fine-tuning phase mixes.
    """
    if kwargs.get("penalty") is not None and alpha > 0:
        raise ConfigError(f"l2sp={alpha} adds the L2-SP penalty, but penalty= was given too; "
                          "pass one of them.")
    given = [f"{k}={kwargs[k]}" for k in ("mixup", "cutmix") if kwargs.get(k)]
    if not given:
        return None
    what = " and ".join(given)
    if freeze_stages:
        raise ConfigError(
            f"{what} mixes images, but freeze_stages={freeze_stages} trains on the frozen "
            "stages' output cached once from the unmixed images; pass freeze_stages=0.")
    if recipe == "linear_probe" and cache_features:
        raise ConfigError(
            f"{what} mixes images, but recipe 'linear_probe' trains on features cached once "
            "from the unmixed images; pass cache_features=False to probe through the frozen "
            "body, mixing every batch.")
    if recipe == "lp_ft":
        return (f"lp_ft: mixing ({what}) in the fine-tuning phase only; the probe fits the "
                "head on the unmixed images.")
    return None


def _phase_best(trainer: Trainer, model: nn.Module) -> tuple[float, int, dict] | None:
    """Return the probe's best (value, epoch) and a CPU copy of the model it ended with.

    ``None`` unless the phase ended on its best validation epoch (``restore_best``), so
    that the copy holds the weights the value was measured on.
    """
    if trainer.restored_epoch is None or trainer.best.get("value") is None:
        return None
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return float(trainer.best["value"]), int(trainer.best["epoch"]), state


def _keep_better_phase(probe: tuple[float, int, dict], trainer: Trainer, model: nn.Module,
                       notes: list[str]) -> None:
    """Give ``model`` the probe's weights back when they validated better than fine-tuning's.

    On some small data sets fine-tuning the body never beats the probe on the validation
    data (measured: 8x8 digits, docs/recipes.md); the model then keeps the best weights of
    the whole run, not of its last phase. Ties keep the fine-tuned weights.
    """
    value, epoch, state = probe
    monitor, best = trainer.monitor, trainer.best.get("value")
    if trainer.restored_epoch is None or best is None:
        return  # the fine-tuned weights were not chosen on validation: nothing to compare
    if not (value > best if higher_is_better(monitor) else value < best):
        return
    model.load_state_dict(state)
    note = (f"lp_ft: the probe's best {monitor} {value:.4g} (epoch {epoch}) beat the "
            f"fine-tuning phase's best {best:.4g}: the model keeps the probe's weights "
            "(the body as pretrained, the probe's head)")
    log.info(note)
    notes.append(note)


def _phase_records(history: list[dict[str, Any]], phase: str, offset: int) -> list[dict]:
    return [{**r, "epoch": r["epoch"] + offset, "phase": phase} for r in history]


def _sample(data: Iterable[Any], device: torch.device) -> torch.Tensor:
    """Return two inputs of ``data`` without shifting any random stream (to check a split)."""
    rng = get_rng_state()
    try:
        batch = next(iter(plain_loader(data)), None)
    finally:
        set_rng_state(rng)
    if not isinstance(batch, (tuple, list)) or not isinstance(batch[0], torch.Tensor):
        raise ConfigError("caching needs (inputs, targets) batches of tensors; the first train "
                          f"batch is a {type(batch).__name__}.")
    return batch[0][:2].to(device)


def _augments(data: Any) -> bool:
    return isinstance(data, TensorLoader) and data.augment is not None


def _cached_loaders(model: nn.Module, module: str, what: str, train: Any, val: Any, *,
                    device: torch.device, seed: int, timings: dict[str, float],
                    flatten: bool = False) -> tuple[FeatureLoader, FeatureLoader | None]:
    """Cache the input of ``module`` over ``train`` (and ``val``); batch it like the images.

    The time it takes is added to ``timings["cache_s"]`` and logged, one line per split.
    """
    def cache(data: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        inputs, labels = cache_inputs(model, module, data, device=device)
        seconds = time.perf_counter() - start
        timings["cache_s"] = timings.get("cache_s", 0.0) + seconds
        log.info("cached the %s of %d %s images (%s) in %.1f s", what, inputs.shape[0], split,
                 "x".join(map(str, inputs.shape[1:])), seconds)
        return (inputs.flatten(1) if flatten else inputs), labels

    train_cache = loader_like(train, *cache(train, "train"), seed=seed)
    val_cache = None
    if val is not None:
        val_cache = FeatureLoader(*cache(val, "val"), batch_size=batch_size_of(val),
                                  shuffle=False)
    return train_cache, val_cache


def _probe(model: nn.Module, train: Any, val: Any, *, epochs: int, lr: float, cache: bool,
           args: dict[str, Any], notes: list[str], timings: dict[str, float],
           resume: bool, sweeps: list[Any] | None = None) -> Trainer:
    """Train the head alone, on cached features (``cache``) or through the frozen body."""
    device = select_device(args["device"])
    model.to(device)
    freeze(model, "body")
    base = {**args, "epochs": epochs, "lr": lr, "body_lr": lr}
    tail = None
    if cache:
        try:
            tail = split_at_head(model, _sample(train, device))
        except ConfigError as exc:
            note = f"linear probe: {exc} Probing through the frozen body instead (no cache)."
            log.warning(note)
            notes.append(note)
    if tail is None:
        net = EvalMode(model)
        trainer = Trainer(net, **_swept(net, train, base, sweeps))
        trainer.fit(train, val, resume=resume or None)
        return trainer
    if _augments(train):
        notes.append("linear probe: features cached from the images without augmentation "
                     "(the train loader's augmentation does not apply to a cache).")
        log.info(notes[-1])
    head = get_info(model).heads[0]
    train_feats, val_feats = _cached_loaders(model, head, "head inputs", train, val,
                                             device=device, seed=args["seed"], timings=timings,
                                             flatten=True)
    trainer = Trainer(tail, **_swept(tail, train_feats, base, sweeps))
    trainer.fit(train_feats, val_feats, resume=resume or None)
    return trainer


def _finetune(model: nn.Module, train: Any, val: Any, *, recipe: str, epochs: int, lr: float,
              body_lr: float, l2sp: float, freeze_stages: int, args: dict[str, Any],
              notes: list[str], timings: dict[str, float], resume: bool,
              sweeps: list[Any] | None = None) -> Trainer:
    """Train with the Trainer under the recipe's freezing (and its cache of frozen stages)."""
    base = {**args, "epochs": epochs, "lr": lr, "body_lr": body_lr}
    base["freeze"] = {"bitfit": "bitfit", "gradual": "body"}.get(recipe, "none")
    if recipe == "gradual":
        stages = len(get_info(model).stages)
        if data_len(train) is not None:
            # By optimizer step, all open by UNFREEZE_UNTIL of the run, while the cosine LR
            # is still high (measured: docs/recipes.md).
            base["unfreeze_until"] = UNFREEZE_UNTIL
            log.info("gradual: %d stages open one at a time by optimizer step, the stem after "
                     "%g of the run", stages, UNFREEZE_UNTIL)
        else:
            base["unfreeze_every"] = max(1, (epochs - 1) // max(1, stages))
            notes.append(f"gradual: the train data has no len(), so the run's steps are "
                         f"unknown: one more stage of {stages} every "
                         f"{base['unfreeze_every']} epoch(s) instead of by step.")
            log.warning(notes[-1])
    if recipe == "llrd":
        base["layer_decay"] = LAYER_DECAY
    if l2sp > 0:  # a penalty beside the task's loss (cross-entropy, BCE, the user's)
        base["penalty"] = L2SP(model, alpha=l2sp)
    net, train_data, val_data = model, train, val
    if freeze_stages:
        device = select_device(args["device"])
        model.to(device)
        stages = get_info(model).stages
        base["freeze"] = f"stages:{freeze_stages - 1}"  # the stem and the k - 1 after it
        net = split_at_stage(model, freeze_stages, _sample(train, device))
        name = stages[freeze_stages].name
        train_data, val_data = _cached_loaders(model, net.cut, f"input of stage {name}", train,
                                               val, device=device, seed=args["seed"],
                                               timings=timings)
        notes.append(f"stages 0..{freeze_stages - 1} frozen and their output cached once; "
                     f"stage {name} onwards and the head train on the cache.")
        log.info(notes[-1])
    trainer = Trainer(net, **_swept(net, train_data, base, sweeps))
    trainer.fit(train_data, val_data, resume=resume or None)
    return trainer


def _swept(net: nn.Module, data: Any, base: dict[str, Any],
           sweeps: list[Any] | None) -> dict[str, Any]:
    """``base``, or with ``lr="find"`` (``sweeps`` is a list) its LRs found by a sweep."""
    if sweeps is None:
        return base
    found, result, choices = find_phase_lr(net, data, base)
    sweeps.append((result, choices))
    return found


def _length(train: Any, epochs: int | None, steps: int | None,
            settings: list[Choice]) -> int:
    """Return the number of epochs: given, from ``steps``, or the default for the data."""
    if epochs is not None and steps is not None:
        raise ConfigError(f"pass epochs= or steps=, not both (got epochs={epochs!r}, "
                          f"steps={steps!r}).")
    if epochs is not None:
        return _validate.positive_int("epochs", epochs, example=5)
    per_epoch = data_len(train)
    if steps is not None:
        steps = _validate.positive_int("steps", steps, example=1000)
        if not per_epoch:
            raise ConfigError("steps= needs train data with a len() to turn steps into "
                              "epochs; pass epochs= instead.")
        epochs = math.ceil(steps / per_epoch)
        settings.append(Choice("epochs", epochs, f"{steps} steps given, {per_epoch} per "
                                                 "epoch, rounded up to whole epochs"))
        return epochs
    n = num_samples(train)
    if n is None:
        raise ConfigError("epochs= is needed: the train data has no len(), so fine_tune "
                          "cannot choose a length from its size; pass epochs=5, say.")
    epochs = default_epochs(n)
    why = f"default for {n} training images (round(1000/sqrt(N)), 3..60)"
    if per_epoch:
        why += f": {epochs * per_epoch} optimizer steps of {per_epoch} per epoch"
    settings.append(Choice("epochs", epochs, why))
    return epochs


def _body_ratio(spec: Any) -> float:
    """The recipe's body LR over its head LR (0.1 for a recipe without a body LR)."""
    return spec.body_lr / spec.lr if spec.body_lr else 0.1


def _lr_settings(spec: Any, lr: float | str | None, body_lr: float | None) -> list[Choice]:
    """The LR choices ``fine_tune`` makes for what was left out, as :class:`Choice` lines."""
    if spec.name == "linear_probe":
        return [] if lr is not None else [Choice("lr", spec.lr, "the linear probe's default")]
    out = []
    if spec.name == "lp_ft":
        out.append(Choice("probe lr", PROBE_LR, "the linear probe's default (PROBE_LR)"))
    if lr == FIND:  # the sweep reports its own
        return out
    if lr is None:
        out.append(Choice("lr", spec.lr, f"recipe {spec.name}'s default head LR"))
    if body_lr is None:
        head = spec.lr if lr is None else lr
        out.append(Choice("body_lr", head * _body_ratio(spec),
                          f"head LR x {_body_ratio(spec):g}, recipe {spec.name}'s ratio"))
    return out


def fine_tune(
    model: nn.Module,
    train: Iterable[Any],
    val: Iterable[Any] | None = None,
    *,
    recipe: str | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float | str | None = None,
    body_lr: float | None = None,
    l2sp: float = 0.0,
    probe_epochs: int | None = None,
    freeze_stages: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    device: str | torch.device = "auto",
    precision: Precision = "fp32",
    callbacks: Iterable[Callback] = (),
    seed: int = 0,
    progress: bool | None = None,
    cache_features: bool = True,
    bn: str | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    augment: str | None = None,
    balanced: bool = False,
    **trainer_kwargs: Any,
) -> FineTuneResult:
    """Fine-tune ``model`` on ``train`` with a named recipe; return the model and history.

    Recipes (``list_recipes()``): ``"full"``, ``"linear_probe"``, ``"lp_ft"``,
    ``"gradual"``, ``"llrd"``, ``"bitfit"``, ``"l2sp"``; see ``docs/recipes.md``.
    The model is trained in place. All arguments are checked before it changes.

    What is left out is chosen from the data (:mod:`transferkit.recipes.budget`, measured in
    ``benchmarks/small_data.py``) and reported in ``result.settings`` and the log: the
    number of epochs from the number of training images, the body LR at the recipe's ratio
    to ``lr``, and, when ``train`` is ``(images, labels)`` tensors, the batch size, the
    image size and the augmentation.

    Args:
        model: An adapted model (``transferkit.create`` or ``adapt``).
        train: Batches of ``(images, labels)`` (a DataLoader or a ``TensorLoader``), or
            the tensors ``(images, labels)`` themselves (``uint8`` or float images
            ``[N, C, H, W]``, grey ones also ``[N, H, W]``), which ``fine_tune`` batches,
            resizes, normalises (with the model's statistics) and augments.
        val: Validation batches, evaluated after every epoch: a loader, or tensors when
            ``train`` is tensors.
        recipe: The recipe's name; default from the data
            (:func:`~transferkit.recipes.budget.default_recipe`: ``full`` from 20 to 100
            training images a class, with ``label_smoothing=0.1`` unless given
            (:func:`~transferkit.recipes.budget.default_label_smoothing`), ``lp_ft`` at
            ``full``'s 1e-2/1e-3 below and above; for a loader that cannot say its size,
            :data:`~transferkit.recipes.table.DEFAULT_RECIPE`).
        epochs: Total epochs, all phases together (``lp_ft`` needs at least 2); default
            from the number of training images (``default_epochs``).
        steps: The length as optimizer steps instead, rounded up to whole epochs (needs
            ``train`` with a ``len()``); not with ``epochs``.
        lr: Head LR; default per recipe (see ``RECIPES``), or the data's tier when the
            recipe is chosen from the data (``default_recipe_lr``). For ``lp_ft``, the head LR of
            the fine-tuning phase (the probe uses ``PROBE_LR``). ``"find"``: found by
            :func:`~transferkit.train.lr_find` (the ``"valley"`` rule) at the start of that
            phase, on exactly what it trains (:mod:`transferkit.recipes.lr_search`); the
            sweep is in ``result.lr_find`` and the LRs in ``result.settings``.
        body_lr: Body LR (of the last stage for ``llrd``); default: ``lr`` times the
            recipe's body/head ratio, so ``lr=`` alone moves both.
        l2sp: L2-SP strength ``alpha`` added to any recipe (0: off; recipe ``"l2sp"``
            defaults to ``L2SP_ALPHA``). Not applied to a linear probe, which has no body
            to pull.
        probe_epochs: Epochs of the probe phase of ``lp_ft``; default ``epochs // 2``.
        freeze_stages: Keep the stem and the next ``freeze_stages - 1`` stages (stages
            ``0 .. freeze_stages - 1`` of ``get_info(model).stages``) frozen, compute their
            output once and train the later stages on it (recipes ``full``, ``llrd``,
            ``l2sp`` and the fine-tuning phase of ``lp_ft``). The train loader must not
            augment. 0 (the default): nothing is cached.
        out_dir: Each phase's Trainer writes to ``out_dir/<phase>/``; the combined
            history goes to ``out_dir/history.json`` and ``out_dir/history.csv``.
        resume: Continue from ``out_dir/<phase>/last.pt`` (every recipe but ``lp_ft``),
            with the same arguments; a larger ``epochs`` stretches the schedule.
        device: ``"auto"`` or a device.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        callbacks: Passed to every phase's Trainer (while a phase trains on cached inputs,
            its ``model`` is the view that runs on them).
        seed: Shuffling seed of the Trainer and of cached inputs.
        progress: Show progress bars.
        cache_features: Train linear probes on features cached once (``False``: run the
            frozen body, in eval mode, every epoch; the same result, more slowly).
        bn: BatchNorm while the body trains: ``"train"`` (batch statistics, running
            averages updated) or ``"frozen"`` (eval behaviour: the pretrained running
            statistics, not updated); default ``"frozen"`` for ``lp_ft`` (its probe was fit
            on eval-mode features, which batch statistics would shift) and ``"train"``
            otherwise. The returned model keeps it (``freeze_state(model)["bn"]``;
            ``transferkit.unfreeze(model)`` resets it).
        batch_size: Batch size for tensors (default: about ``N / 16``, 16..256; on the CPU
            at most 64 images at 224 px, ``budget.BATCH_PIXELS``).
        image_size: Training size for tensors (default: the largest multiple of 32, up to
            the backbone's pretrained size, whose run fits the device's compute budget,
            and at least the images' own size rounded up: ``default_image_size``).
        augment: Augmentation preset for tensors, one of ``AUGMENT_PRESETS`` (default
            ``"light"``: shifts, no flips).
        balanced: For tensors, draw the training batches class-balanced, with replacement
            (``TensorLoader(balanced=True)``; for a loader, use
            :class:`~transferkit.data.BalancedSampler` or that option yourself).
        **trainer_kwargs: Other :class:`~transferkit.train.trainer.Trainer` arguments
            (``weight_decay``, ``warmup``, ``grad_clip``, ``loss_fn``, ``monitor``, ``ema``,
            ``compile``, and the targets' ``task``, ``label_smoothing``, ``class_weights``,
            ``threshold``, ``mixup``, ``cutmix``...). Mixup and CutMix mix images: refused
            where a phase trains on a cache (``linear_probe`` with ``cache_features``,
            ``freeze_stages``); ``lp_ft`` mixes in its fine-tuning phase only (said in
            ``result.notes``).
            Every phase's Trainer gets them: with ``ema``, each phase averages its own
            weights (a probe on cached features, its head) and ends with them, so
            ``lp_ft`` fine-tunes from the probe's averaged head.

    Returns:
        A :class:`FineTuneResult`.

    Raises:
        UnknownRecipeError: Unknown recipe (a ``ConfigError``; the closest is suggested).
        ConfigError: Bad ``epochs``, ``steps``, ``lr``, ``body_lr``, ``l2sp``,
            ``probe_epochs``, ``freeze_stages``, ``resume``, ``batch_size``,
            ``image_size``, ``augment``, ``balanced`` or Trainer argument.
        DataError: ``(images, labels)`` tensors that do not match.
        OSError: ``out_dir`` cannot be created or written.

    Example:
        >>> import torch, transferkit
        >>> model = transferkit.create("resnet18", 2, in_chans=1, pretrained=False)
        >>> data = [(torch.randn(8, 1, 32, 32), torch.arange(8) % 2)] * 2
        >>> result = fine_tune(model, data, recipe="bitfit", epochs=1, device="cpu")
        >>> [r["phase"] for r in result.history]
        ['finetune']
    """
    start = time.perf_counter()
    # An unknown name fails before the data is read; no name: chosen from the data below.
    spec = check_recipe(recipe) if recipe is not None else None
    inputs = build_inputs(model, train, val, batch_size=batch_size, image_size=image_size,
                          augment=augment, seed=seed, cached=bool(freeze_stages),
                          balanced=balanced, device=select_device(device).type)
    train, val, settings = inputs.train, inputs.val, inputs.choices
    if spec is None:
        n_train, n_classes = num_samples(train), get_info(model).num_classes
        settings.insert(0, default_recipe(n_train, n_classes))
        spec = check_recipe(settings[0].value)
        if lr is None and (rule_lr := default_recipe_lr(n_train, n_classes)) is not None:
            settings.insert(1, rule_lr)  # the tier's head LR; the body's follows at the ratio
            lr = rule_lr.value
        if not {"label_smoothing", "loss_fn"} & trainer_kwargs.keys() and (
                rule_ls := default_label_smoothing(n_train, n_classes)) is not None:
            settings.insert(1, rule_ls)  # full's tier: no LR line before it
            trainer_kwargs["label_smoothing"] = rule_ls.value
    epochs = _length(train, epochs, steps, settings)
    lr_ = check_lr(lr, body_lr)
    body_lr_ = (None if body_lr is None
                else _validate.rate("body_lr", body_lr, allow_zero=False, example=1e-4))
    alpha = _validate.rate("l2sp", l2sp)
    if spec.name == "l2sp" and alpha == 0:
        alpha = L2SP_ALPHA
    n_probe = 0
    if spec.name == "lp_ft":
        if epochs < 2:
            raise ConfigError(f"recipe 'lp_ft' needs epochs >= 2 (probe, then fine-tune), "
                              f"got epochs={epochs}; pass epochs=2 or recipe='linear_probe'.")
        n_probe = max(1, epochs // 2) if probe_epochs is None else _validate.integer(
            "probe_epochs", probe_epochs, minimum=1, maximum=epochs - 1)
    elif probe_epochs is not None:
        raise ConfigError(f"probe_epochs={probe_epochs!r} applies to recipe 'lp_ft' only, "
                          f"not {spec.name!r}; remove it.")
    bn_ = _validate.choice("bn", bn, BN_MODES) if bn is not None else (
        "frozen" if spec.name == "lp_ft" else "train")
    freeze_stages = _validate.integer("freeze_stages", freeze_stages, minimum=0, example=3)
    if freeze_stages and not spec.caches_stages:
        raise ConfigError(f"freeze_stages={freeze_stages} does not apply to recipe "
                          f"{spec.name!r}, whose frozen part changes (or is everything); "
                          "use recipe='full', 'llrd', 'l2sp' or 'lp_ft', or freeze_stages=0.")
    if freeze_stages:
        stages = get_info(model).stages
        if freeze_stages >= len(stages):
            raise ConfigError(
                f"freeze_stages={freeze_stages} must be below the model's {len(stages)} "
                f"stages ({', '.join(s.name for s in stages)}): at least one must train.")
        if _augments(train):
            raise ConfigError(
                f"freeze_stages={freeze_stages} caches the frozen stages' output of the images "
                "as they are, so the train loader's augmentation could not apply: pass a "
                "loader without augment=, or freeze_stages=0.")
    _validate.flag("resume", resume)
    if resume and (out_dir is None or spec.name == "lp_ft"):
        chosen = [f" (chose {c})" for c in settings if c.name == "recipe"]
        raise ConfigError("resume=True needs out_dir= (it continues out_dir/<phase>/last.pt) and "
                          f"a one-phase recipe (not 'lp_ft'{''.join(chosen)}).")
    if resume and lr_ == FIND:
        raise ConfigError(f"resume=True with lr={FIND!r} would sweep again; pass the LR the run "
                          "found (in its result.settings, or the CLI's OUT/config.toml).")
    _validate.flag("cache_features", cache_features)
    _check_trainer_kwargs(trainer_kwargs)
    mixing_note = _check_mixing(trainer_kwargs, recipe=spec.name, cache_features=cache_features,
                                freeze_stages=freeze_stages, alpha=alpha)
    settings += _lr_settings(spec, lr_, body_lr_)
    if "channels_last" not in trainer_kwargs and select_device(device).type == "cpu" and \
            is_conv_model(model):
        # Measured (benchmarks/throughput.py, docs/benchmarks.md): EfficientNet-Lite0 trains
        # 2.1-2.5x faster channels-last on the CPU, ResNet-18 0.8-1.2x (within the noise).
        trainer_kwargs["channels_last"] = True
        settings.append(Choice("channels_last", True, "a convolutional model on the CPU"))
    common = {"device": device, "precision": precision, "callbacks": tuple(callbacks),
              "seed": seed, "progress": progress}
    check_trainer_args(has_val=val is not None, **common, **trainer_kwargs)
    if spec.name == "linear_probe" and alpha > 0:
        warnings.warn(f"l2sp={alpha} has no effect with recipe 'linear_probe': the body is "
                      "frozen. HINT: use recipe='lp_ft' to regularise its fine-tuning phase.",
                      stacklevel=2)
    root = check_writable(out_dir, what="out_dir") if out_dir is not None else None

    def args_for(phase: str) -> dict[str, Any]:
        out = root / phase if root is not None else None
        args = {**common, **trainer_kwargs, "out_dir": out}
        if phase == "probe" and spec.name == "lp_ft":
            args.update(mixup=0.0, cutmix=0.0)  # the probe fits on unmixed images
        return args

    history: list[dict[str, Any]] = []
    notes: list[str] = [mixing_note] if mixing_note else []
    timings: dict[str, float] = {"cache_s": 0.0}
    trainer: Trainer
    sweeps: list[Any] | None = [] if lr_ == FIND else None
    for choice in settings:
        log.info("chose %s", choice)
    before = freeze_state(model)
    probe = None  # lp_ft: the probe's best, compared with fine-tuning's at the end
    try:
        if spec.name in ("linear_probe", "lp_ft"):
            n = epochs if spec.name == "linear_probe" else n_probe
            probe_lr = spec.name == "linear_probe" and lr_ not in (None, FIND)
            trainer = _probe(unwrap(model), train, val, epochs=n,
                             lr=lr_ if probe_lr else PROBE_LR,  # type: ignore[arg-type]
                             cache=cache_features, args=args_for("probe"), notes=notes,
                             timings=timings, resume=resume,
                             sweeps=sweeps if spec.name == "linear_probe" else None)
            history += _phase_records(trainer.history, "probe", 0)
            probe = _phase_best(trainer, model) if spec.name == "lp_ft" else None
        if spec.name != "linear_probe":
            head = lr_ if isinstance(lr_, float) else spec.lr  # "find": replaced by the sweep
            body = body_lr_ if body_lr_ is not None else head * _body_ratio(spec)
            # Set before the Trainer, which keeps this BatchNorm mode under its own
            # freezing policy (every fine-tuning phase applies one).
            freeze(model, "none", bn=bn_)
            trainer = _finetune(
                model, train, val, recipe=spec.name, epochs=epochs - n_probe, lr=head,
                body_lr=body, l2sp=alpha, freeze_stages=freeze_stages,
                args=args_for("finetune"), notes=notes, timings=timings, resume=resume,
                sweeps=sweeps)
            history += _phase_records(trainer.history, "finetune", n_probe)
            if probe is not None:
                _keep_better_phase(probe, trainer, model, notes)
    except BaseException:
        if not history:  # nothing trained yet: give the model its freezing back
            load_freeze_state(model, before)
        raise
    if trainer.class_weights is not None and trainer_kwargs.get("class_weights") == "balanced":
        notes.append("class_weights='balanced' (inverse class frequency): "
                     + ", ".join(f"{w:.3g}" for w in trainer.class_weights.tolist()))
    if trainer.model is not model:  # trained a view: a Trainer over the model, for images
        # It evaluates and predicts with the trained phase's task and loss.
        kept = {k: v for k, v in {**common, **trainer_kwargs}.items()
                if k not in ("label_smoothing", "class_weights", "ema")}  # it trains nothing
        trainer = Trainer(model, **{**kept, "epochs": epochs, "lr": trainer.lr,
                                    "task": trainer.task, "loss_fn": trainer.loss_fn})
    trainer.history = list(history)
    for _, choices in sweeps or ():
        settings += choices
    timings["train_s"] = sum(float(r.get("time", 0.0)) for r in history)
    if root is not None:
        write_history(root, history)
    seconds = time.perf_counter() - start
    log.info("fine_tune: recipe %s, %d epoch(s) in %.1f s", spec.name, len(history), seconds)
    return FineTuneResult(model=model, recipe=spec.name, history=history, seconds=seconds,
                          trainer=trainer, notes=notes, timings=timings, settings=settings,
                          lr_find=sweeps[0][0] if sweeps else None,
                          image_size=inputs.image_size)
