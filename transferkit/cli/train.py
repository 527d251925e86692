"""``transferkit train``: fine-tune a backbone on an image folder or FashionMNIST."""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from transferkit._io import check_writable
from transferkit.adaptation import get_info
from transferkit.backbones import backbone_spec, create, save_model
from transferkit.data import Augment, TensorLoader, fashion_mnist, load_image_folder
from transferkit.errors import ConfigError, DataError, closest
from transferkit.recipes import fine_tune, list_recipes

__all__ = ["FASHION_MNIST", "cmd_train"]

log = logging.getLogger("transferkit.cli")
FASHION_MNIST = "fashion-mnist"
_SHOW_SKIPPED = 3  # undecodable files named in the warning; the count covers the rest


def _load_data(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, tuple[str, ...]]:
    """Return train images/labels, val images/labels (or None) and the class names."""
    if args.data == FASHION_MNIST:
        if args.in_chans not in (None, 1):
            raise ConfigError("FashionMNIST is grayscale: use --in-chans 1 (or leave it out).")
        fm = fashion_mnist()
        return (fm.train_images.unsqueeze(1), fm.train_labels, fm.test_images.unsqueeze(1),
                fm.test_labels, tuple(fm.classes))
    with warnings.catch_warnings(record=True):  # the CLI reports skipped files itself
        warnings.simplefilter("always")
        data = load_image_folder(args.data, image_size=args.image_size,
                                 in_chans=args.in_chans or 3, val_fraction=args.val_fraction,
                                 seed=args.seed)
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
    val = (data.val_images, data.val_labels) if len(data.val_labels) else (None, None)
    return data.train_images, data.train_labels, val[0], val[1], data.classes


def _subset(images: Any, labels: Any, n: int | None, seed: int) -> tuple[Any, Any]:
    if images is None or n is None or n >= len(labels):
        return images, labels
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[keep], labels[keep]


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune, evaluate and write ``args.out/model.safetensors`` (see docs/cli.md)."""
    # Everything that can be checked without data is checked before loading any.
    recipes = list(list_recipes())
    if args.recipe not in recipes:
        raise ConfigError(
            f"Unknown recipe {args.recipe!r}.{closest(args.recipe, recipes)} "
            f"Valid: {', '.join(recipes)}."
        )
    backbone_spec(args.backbone)
    weights: bool | str = {"imagenet": True, "none": False}.get(args.weights, args.weights)
    if isinstance(weights, str) and not Path(weights).is_file():
        raise ConfigError(
            f"--weights {args.weights!r} is neither 'imagenet', 'none' nor an existing file."
        )
    out = check_writable(Path(args.out), what="--out")

    train_x, train_y, val_x, val_y, classes = _load_data(args)
    train_x, train_y = _subset(train_x, train_y, args.subset, args.seed)
    val_x, val_y = _subset(val_x, val_y, args.subset, args.seed + 1)
    in_chans = int(train_x.shape[1])
    model = create(args.backbone, len(classes), in_chans=in_chans, pretrained=weights)
    info = get_info(model)
    common: dict[str, Any] = dict(batch_size=args.batch_size, image_size=args.image_size,
                                  mean=info.mean, std=info.std, num_classes=len(classes),
                                  in_chans=in_chans, seed=args.seed)
    pad = max(1, int(train_x.shape[-1]) // 8)
    train = TensorLoader(train_x, train_y, shuffle=True,
                         augment=Augment(crop_padding=pad, hflip=0.5), **common)
    val = TensorLoader(val_x, val_y, **common) if val_x is not None else None
    log.info("training %s on %d images (%d classes), validating on %d, recipe %s",
             args.backbone, len(train_y), len(classes), 0 if val_y is None else len(val_y),
             args.recipe)
    result = fine_tune(model, train, val, recipe=args.recipe, epochs=args.epochs, lr=args.lr,
                       out_dir=out, device=args.device, seed=args.seed)
    metrics = result.trainer.evaluate(val) if val is not None else {}
    extra = {"recipe": args.recipe, "epochs": args.epochs, "data": str(args.data),
             "seconds": round(float(result.seconds), 3),
             "val": {k: float(v) for k, v in metrics.items()}}
    path = save_model(result.model, out / "model.safetensors", backbone=args.backbone,
                      class_names=classes, image_size=args.image_size, extra=extra)
    summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "count")
    print(f"{path}\t{summary or 'no validation data'}")
    return 0

