"""``transferkit train``: fine-tune a backbone on an image folder or FashionMNIST.

A thin shell over :func:`transferkit.recipes.fine_tune`: it reads the data (split folders,
``--val``/``--test`` folders, a multi-label ``--labels`` file, or FashionMNIST), chooses
what only the files can tell (the stored image size and the number of channels, from the
images' headers), hands the tensors to ``fine_tune`` (which chooses the rest from the
data) and writes the model file, the history and ``report.md``. A test split, when there
is one, is evaluated once, at the end, with the weights the model ends with (the best on
validation).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from transferkit._io import atomic_write_text, check_writable
from transferkit.adaptation import get_info
from transferkit.backbones import backbone_spec, create, save_model
from transferkit.cli.config import write_config
from transferkit.data import (
    TensorLoader,
    fashion_mnist,
    image_stats,
    list_images,
    load_image_folder,
    load_image_labels,
    stratified_val_mask,
)
from transferkit.errors import ConfigError, DataError
from transferkit.recipes import Choice, check_recipe, fine_tune, image_size_choice
from transferkit.report import plot_lr_find, write_multilabel_run_report, write_run_report
from transferkit.train import LRFindResult, TensorBoardLogger
from transferkit.train.multilabel_metrics import per_class_scores

__all__ = ["FASHION_MNIST", "FASHION_VAL_FRACTION", "cmd_train"]

log = logging.getLogger("transferkit.cli")
FASHION_MNIST = "fashion-mnist"
#: FashionMNIST's validation split: 5,000 of its 60,000 training images, stratified.
FASHION_VAL_FRACTION = 1 / 12
_SHOW_SKIPPED = 3  # undecodable files named in the warning; the count covers the rest


class _Data:
    """The splits the CLI trains, validates and tests on, and where they came from."""

    def __init__(self, train: tuple[Any, Any], val: tuple[Any, Any] | None,
                 test: tuple[Any, Any] | None, classes: tuple[str, ...],
                 sources: list[str]) -> None:
        self.train, self.val, self.test = train, val, test
        self.classes, self.sources = classes, sources


def _fashion(args: argparse.Namespace, choices: list[Choice]) -> _Data:
    if args.in_chans not in (None, 1):
        raise ConfigError("FashionMNIST is grayscale: use --in-chans 1 (or leave it out).")
    if args.val is not None or args.test is not None or args.labels is not None:
        raise ConfigError("--val, --test and --labels apply to image folders; FashionMNIST has "
                          "its own labels, test split and a validation split taken from its "
                          "training images.")
    fm = fashion_mnist()
    fraction = FASHION_VAL_FRACTION if args.val_fraction is None else args.val_fraction
    images, labels = fm.train_images.unsqueeze(1), fm.train_labels
    mask = stratified_val_mask(labels, len(fm.classes), fraction, args.seed)
    train, val = (images[~mask], labels[~mask]), (images[mask], labels[mask])
    test = (fm.test_images.unsqueeze(1), fm.test_labels)
    choices.append(Choice("in_chans", 1, "FashionMNIST is grey"))
    sources = [f"train: FashionMNIST train ({len(train[1])} images)",
               f"validation: {fraction:.3g} of FashionMNIST train, stratified, seed "
               f"{args.seed} ({len(val[1])} images)",
               f"test: FashionMNIST test ({len(test[1])} images)"]
    return _Data(train, val if len(val[1]) else None, test, tuple(fm.classes), sources)


def _survey(args: argparse.Namespace, choices: list[Choice]) -> tuple[int, int]:
    """The stored image size and channels: given, or from the images' headers."""
    files = list_images(args.data)
    if not files:
        raise DataError(f"no image files under {args.data!r} (extensions: .png, .jpg, ...).")
    stats = image_stats(files)
    in_chans = args.in_chans
    if in_chans is None:
        in_chans = stats.in_chans
        choices.append(Choice("in_chans", in_chans, f"{'every' if stats.grey else 'not every'}"
                              f" one of {stats.surveyed} surveyed images is grey"))
    size = args.image_size
    if size is None:  # stored at; fine_tune chooses the training size (resized per batch)
        pretrained = backbone_spec(args.backbone).input_size[1:]
        stored = image_size_choice(stats.median_size, pretrained, "median image")
        choices.append(Choice("stored_size", stored.value, stored.why))
        size = stored.value
    return size, in_chans


def _folder(args: argparse.Namespace, choices: list[Choice]) -> _Data:
    size, in_chans = _survey(args, choices)
    with warnings.catch_warnings(record=True):  # the CLI reports skipped files itself
        warnings.simplefilter("always")
        if args.labels is not None:
            data = load_image_labels(args.labels, root=args.data, image_size=size,
                                     in_chans=in_chans, val_fraction=args.val_fraction,
                                     seed=args.seed, val=args.val, test=args.test)
        else:
            data = load_image_folder(args.data, image_size=size, in_chans=in_chans,
                                     val_fraction=args.val_fraction, seed=args.seed,
                                     val=args.val, test=args.test)
    if data.skipped:
        names = ", ".join(repr(s) for s in data.skipped[:_SHOW_SKIPPED])
        more = f" and {len(data.skipped) - _SHOW_SKIPPED} more" if len(
            data.skipped) > _SHOW_SKIPPED else ""
        if args.strict:
            raise DataError(
                f"{len(data.skipped)} file(s) under {args.data!r} cannot be decoded: "
                f"{names}{more}. Fix or remove them, or drop --strict to skip them."
            )
        warnings.warn(f"skipped {len(data.skipped)} undecodable image(s): {names}{more}",
                      stacklevel=2)
    val = (data.val_images, data.val_labels) if len(data.val_labels) else None
    test = (data.test_images, data.test_labels) if data.test_images is not None else None
    return _Data((data.train_images, data.train_labels), val, test, data.classes,
                 data.describe())


def _subset(pair: tuple[Any, Any] | None, n: int | None, seed: int) -> tuple[Any, Any] | None:
    if pair is None or n is None or n >= len(pair[1]):
        return pair
    keep = torch.randperm(len(pair[1]), generator=torch.Generator().manual_seed(seed))[:n]
    return pair[0][keep], pair[1][keep]


def _check_args(args: argparse.Namespace) -> tuple[str | None, bool | str, Path]:
    """Check everything that needs no data; return the recipe (None: fine_tune chooses it
    from the data), the weights and --out."""
    recipe = check_recipe(args.recipe).name if args.recipe is not None else None
    backbone_spec(args.backbone)
    weights: bool | str = {"imagenet": True, "none": False}.get(args.weights, args.weights)
    if isinstance(weights, str) and not Path(weights).is_file():
        raise ConfigError(
            f"--weights {args.weights!r} is neither 'imagenet', 'none' nor an existing file."
        )
    return recipe, weights, check_writable(Path(args.out), what="--out")


def _write_lr_find(out: Path, sweep: LRFindResult) -> str:
    """Write ``lr_find.json`` and ``lr_find.png``; return the report's note on them."""
    fields = ("lrs", "losses", "smoothed", "suggestion", "rule", "lr_ratio", "diverged")
    atomic_write_text(out / "lr_find.json",
                      json.dumps({k: getattr(sweep, k) for k in fields}, indent=1))
    png = plot_lr_find(sweep.lrs, sweep.smoothed, out / "lr_find.png", losses=sweep.losses,
                       suggestion=sweep.suggestion, rule=sweep.rule)
    plot = "lr_find.png" if png else "lr_find.png not drawn (matplotlib is not installed)"
    if png is None:
        log.warning("%s", plot)
    return f"{sweep.describe()}; the sweep in lr_find.json, {plot}"


def _multilabel_report(out: Path, result: Any, loader: TensorLoader, labels: torch.Tensor,
                       classes: tuple[str, ...], split: str, *, title: str,
                       facts: dict[str, Any], settings: list[Choice],
                       seconds: float) -> dict[str, float]:
    """Evaluate a multi-label run on ``split``; write its report; return its metrics."""
    trainer = result.trainer
    scores = per_class_scores(trainer.predict(loader, probs=False), labels,
                              threshold=trainer.threshold)
    found = trainer.evaluate(loader)
    metrics = {f"{split}_map": found["map"], f"{split}_f1": found["f1"],
               f"{split}_count": int(found["count"])}
    facts["threshold"] = trainer.threshold
    facts["wall time (s)"] = round(seconds, 1)
    write_multilabel_run_report(out, title=title, facts=facts, history=result.history,
                                metrics=metrics, class_names=classes, settings=settings,
                                notes=result.notes, per_class={
                                    "ap": scores["ap"].tolist(), "f1": scores["f1"].tolist(),
                                    "support": scores["support"].tolist()})
    return metrics


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune, test and write ``args.out/model.safetensors`` and ``report.md``."""
    start = time.perf_counter()
    recipe, weights, out = _check_args(args)
    loggers = [TensorBoardLogger(args.tensorboard)] if args.tensorboard else []
    choices: list[Choice] = []
    data = _fashion(args, choices) if args.data == FASHION_MNIST else _folder(args, choices)
    train = _subset(data.train, args.subset, args.seed)
    val = _subset(data.val, args.subset, args.seed + 1)
    in_chans = int(train[0].shape[1])
    for line in data.sources:
        log.info("%s", line)
    torch.manual_seed(args.seed)  # the new head's initialisation: a run repeats exactly
    model = create(args.backbone, len(data.classes), in_chans=in_chans, pretrained=weights)
    log.info("training %s on %d images (%d classes), validating on %d", args.backbone,
             len(train[1]), len(data.classes), 0 if val is None else len(val[1]))
    for choice in choices:
        log.info("chose %s", choice)
    result = fine_tune(
        model, train, val, recipe=recipe, epochs=args.epochs, steps=args.steps, lr=args.lr,
        body_lr=args.body_lr, batch_size=args.batch_size, image_size=args.image_size,
        augment=args.augment, freeze_stages=args.freeze_stages, precision=args.precision,
        patience=args.patience, resume=args.resume, out_dir=out, device=args.device,
        seed=args.seed, balanced=args.balanced, callbacks=loggers, ema=args.ema,
        compile=args.compile, keep_memory=False if args.no_keep_memory else None,
        **{k: v for k in ("mixup", "cutmix", "label_smoothing", "class_weights")
           if (v := getattr(args, k)) is not None})
    if result.lr_find is not None:
        result.notes.append(_write_lr_find(out, result.lr_find))
    settings = choices + result.settings
    recipe = result.recipe
    size = result.image_size  # what it trained at: the test split and predict use it too
    info = get_info(model)
    split, pair = ("test", data.test) if data.test is not None else ("val", val)
    metrics: dict[str, float] = {}
    facts: dict[str, Any] = {"backbone": args.backbone, "weights": str(args.weights),
                             "recipe": recipe, "data": str(args.data),
                             **{line.split(":", 1)[0]: line.split(":", 1)[1].strip()
                                for line in data.sources},
                             "image size": size, "in_chans": in_chans,
                             "epochs": len(result.history), "device": str(args.device),
                             "test-time augmentation": args.tta,
                             **({"EMA decay": args.ema} if args.ema is not None else {})}
    if pair is not None:
        loader = TensorLoader(*pair, batch_size=256, image_size=size, mean=info.mean,
                              std=info.std, num_classes=len(data.classes))
        title = f"{args.backbone} fine-tuned on {args.data}"
        if result.trainer.task == "multi_label":
            metrics = _multilabel_report(out, result, loader, pair[1], data.classes, split,
                                         title=title, facts=facts, settings=settings,
                                         seconds=time.perf_counter() - start)
        else:
            probs = result.trainer.predict(loader, tta=args.tta)
            facts["wall time (s)"] = round(time.perf_counter() - start, 1)
            _, metrics = write_run_report(
                out, title=title, facts=facts, history=result.history, probs=probs,
                labels=pair[1], images=pair[0], class_names=data.classes, split=split,
                settings=settings, notes=result.notes)
    else:
        log.warning("no validation or test images: report.md not written")
    extra = {"recipe": recipe, "data": str(args.data), "splits": data.sources,
             "settings": [str(s) for s in settings], "task": result.trainer.task,
             "threshold": result.trainer.threshold,
             "seconds": round(float(result.seconds), 3), **metrics}
    path = save_model(result.model, out / "model.safetensors", backbone=args.backbone,
                      class_names=data.classes, image_size=size, extra=extra)
    chosen = {s.name: s.value for s in settings if not (s.name == "epochs" and args.steps)}
    write_config(out, args, args.parser, {**chosen, "image_size": size}, comments=(
        "The options of this run, the settings it chose from the data included:",
        f"transferkit train --config {out / 'config.toml'} --out NEW_FOLDER repeats it."))
    summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.endswith("count"))
    print(f"{path}\t{summary or 'no validation or test data'}")
    return 0
