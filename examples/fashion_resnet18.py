"""Fine-tune an ImageNet backbone on FashionMNIST: the seed notebook's workflow, done right.

The four steps of transfer learning, with the seed's mistakes fixed:

1. take a network pretrained on ImageNet (ResNet18; offline, EfficientNet-Lite0, whose
   weights install from the package index; said in one line and in the report);
2. + 3. copy everything but the output layer and add a new 10-class head, with the input
   layer adapted to 1 grey channel (the RGB filters summed, instead of tripling every
   image with ``torch.cat((X, X, X), 1)``, which the seed then forgot at evaluation);
4. train: the new head with a 10x larger learning rate than the body; evaluation in
   ``eval()`` mode under ``no_grad``; images resized to 32 px, not 7.

On a CPU the default trains the stages after the first ``--freeze-stages`` ones: the
frozen stages never change and no augmentation is used, so what they compute is cached
once (``transferkit.stage_cache``) and each epoch only runs the trained stages. That is
what makes ``make demo`` fit in 10 minutes on 2 cores.

Run ``python examples/fashion_resnet18.py --help`` for the options. Outputs in ``--out``:
``model.safetensors``, ``history.json``/``.csv``, ``report.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

import transferkit as tk
from transferkit.cli.train import check_writable
from transferkit.data import TensorLoader, fashion_mnist
from transferkit.errors import TransferKitError, WeightsNotFoundError
from transferkit.freezing import freeze
from transferkit.report import (
    confusion_matrix,
    plot_confusion,
    plot_history,
    plot_misclassified,
    write_report,
)
from transferkit.schedules import warmup_cosine_scheduler
from transferkit.stage_cache import cache_stage_inputs, split_at_stage

log = logging.getLogger("fashion_resnet18")
DEFAULT_BACKBONE, FALLBACK_BACKBONE = "resnet18", "efficientnet_lite0"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default=None,
                   help=f"any registry name (default {DEFAULT_BACKBONE}; offline without its "
                        f"weights: {FALLBACK_BACKBONE})")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet', 'none' (train from scratch) or a weights file")
    p.add_argument("--recipe", default="full",
                   help="'full' (default: discriminative LRs, frozen stages cached) or any "
                        f"recipe of transferkit.fine_tune: {', '.join(tk.list_recipes())}")
    p.add_argument("--epochs", type=int, default=8 if gpu else 3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64 if gpu else 32)
    p.add_argument("--lr", type=float, default=1e-2, help="head LR (body: lr / 10)")
    p.add_argument("--freeze-stages", type=int, default=0 if gpu else 3,
                   help="recipe 'full': stages (stem first) kept frozen and cached")
    p.add_argument("--val-size", type=int, default=5000,
                   help="training images held out for validation (model selection)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--subset", type=int, default=None,
                   help="use only N training and N // 5 test images (quick runs)")
    p.add_argument("--out", default="runs/fashion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.freeze_stages < 0:
        p.error(f"--freeze-stages must be >= 0, got {args.freeze_stages}")
    if args.recipe != "full" and args.recipe not in tk.list_recipes():
        known = ["full", *tk.list_recipes()]
        p.error(f"unknown recipe {args.recipe!r}.{tk.errors.closest(args.recipe, known)}")
    return args


def build_model(args: argparse.Namespace, notes: list[str]) -> tuple[torch.nn.Module, str, str]:
    """Return (model, backbone name, weights description); fall back only when not pinned."""
    name = args.backbone or DEFAULT_BACKBONE
    pretrained: bool | str = {"imagenet": True, "none": False}.get(args.weights, args.weights)
    try:
        model = tk.create(name, 10, in_chans=1, pretrained=pretrained)
    except WeightsNotFoundError as exc:
        if args.backbone is not None or pretrained is not True:
            raise WeightsNotFoundError(
                f"{exc}\nOr run without --backbone to use {FALLBACK_BACKBONE}, whose ImageNet "
                "weights install from the package index, or pass --weights none."
            ) from None
        note = (f"{name} ImageNet weights are not available (offline, no cache); using "
                f"{FALLBACK_BACKBONE} with its ImageNet weights from the pip package instead.")
        log.warning("%s", note)
        notes.append(note)
        name = FALLBACK_BACKBONE
        model = tk.create(name, 10, in_chans=1, pretrained=True)
    weights = {True: "ImageNet", False: "none (from scratch)"}.get(pretrained, str(pretrained))
    return model, name, weights


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    out = Path(args.out)
    notes: list[str] = []
    try:
        check_writable(out)
    except OSError as exc:
        print(f"fashion_resnet18: error: {exc}", file=sys.stderr)
        return 1
    try:
        return run(args, out, notes, start)
    except TransferKitError as exc:
        print(f"fashion_resnet18: error: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, out: Path, notes: list[str], start: float) -> int:
    data = fashion_mnist(args.data_root)
    model, backbone, weights = build_model(args, notes)
    info = tk.get_info(model)
    device = tk.trainer.select_device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    n_train = args.subset or data.train_images.shape[0]
    n_test = max(1, args.subset // 5) if args.subset else data.test_images.shape[0]
    perm = torch.randperm(data.train_images.shape[0], generator=gen)[:n_train]
    n_val = min(args.val_size, n_train // 5)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    test_x, test_y = data.test_images[:n_test], data.test_labels[:n_test]
    log.info("backbone %s (%s weights), %d train / %d val / %d test images at %d px, on %s",
             backbone, weights, len(train_idx), n_val, n_test, args.image_size, device)

    def loader(images, labels, *, shuffle):
        return TensorLoader(images, labels, batch_size=args.batch_size, shuffle=shuffle,
                            image_size=args.image_size, mean=info.mean, std=info.std,
                            num_classes=10, device=device, seed=args.seed)

    train = loader(data.train_images[train_idx], data.train_labels[train_idx], shuffle=True)
    val = loader(data.train_images[val_idx], data.train_labels[val_idx], shuffle=False)
    test = loader(test_x, test_y, shuffle=False)
    facts = {"backbone": backbone, "weights": weights, "recipe": args.recipe,
             "epochs": args.epochs, "batch size": args.batch_size,
             "image size": args.image_size, "head lr": args.lr, "body lr": args.lr / 10,
             "device": str(device), "train/val/test images": f"{len(train_idx)}/{n_val}/{n_test}",
             "seed": args.seed}

    if args.recipe == "full":
        model.to(device)
        trainer, evaluate_on = train_full(args, model, train, val, test, facts, out, device)
        history = trainer.history
    else:
        result = tk.fine_tune(model, train, val, recipe=args.recipe, epochs=args.epochs,
                              lr=args.lr, out_dir=out, device=device, seed=args.seed)
        trainer, history, evaluate_on = result.trainer, result.history, test
    probs = trainer.predict(evaluate_on)
    preds = probs.argmax(1).cpu()
    test_acc = (preds == test_y).float().mean().item()
    tk.save_model(model, out / "model.safetensors", backbone=backbone,
                  class_names=data.classes, image_size=args.image_size,
                  extra={"weights": weights, "recipe": args.recipe, "test_acc": test_acc})
    confusion = confusion_matrix(preds, test_y, 10)
    wrong = (preds != test_y).nonzero().flatten()[:25]
    images = {
        "training curves": plot_history(history, out / "curves.png"),
        "confusion matrix": plot_confusion(confusion, data.classes, out / "confusion.png"),
        "misclassified test images": plot_misclassified(
            test_x[wrong], test_y[wrong], preds[wrong], data.classes, out / "misclassified.png",
            probs=probs[wrong].max(1).values.cpu()),
    }
    wall = time.perf_counter() - start  # everything but the imports and this report
    facts["wall time (s)"] = round(wall, 1)
    write_report(out / "report.md", title=f"FashionMNIST: {backbone} fine-tuned", facts=facts,
                 history=history, test={"test_acc": test_acc}, notes=notes,
                 confusion=confusion, class_names=data.classes,
                 images={k: str(v) for k, v in images.items() if v is not None})
    summary = {"backbone": backbone, "weights": weights, "test_acc": round(test_acc, 4),
               "wall_s": round(wall, 1)}
    print(f"test accuracy {test_acc:.4f} ({backbone}, {weights} weights) in {wall:.0f} s; "
          f"report: {out / 'report.md'}")
    print("RESULT " + json.dumps(summary))
    return 0


def train_full(args, model, train, val, test, facts, out, device):
    """Full fine-tuning with discriminative LRs; frozen early stages computed once."""
    stages = len(tk.get_info(model).stages)
    k = min(args.freeze_stages, stages - 1)
    net, data = model, (train, val, test)
    if k > 0:
        freeze(model, f"stages:{k - 1}")  # the stem and k - 1 stages after it
        x0, _ = next(iter(test))
        prefix, net = split_at_stage(model, k, x0[:4])
        data = tuple(tk.FeatureLoader(
            *cache_stage_inputs(prefix, model, loader), batch_size=args.batch_size,
            shuffle=loader.shuffle, seed=args.seed) for loader in (train, val, test))
        facts["frozen and cached"] = f"stem + {k - 1} stages (input of stage {k}: " \
                                     f"{tk.get_info(model).stages[k].name})"
    groups = tk.param_groups(model, head_lr=args.lr, body_lr=args.lr / 10, weight_decay=0.01)
    optimizer = torch.optim.AdamW(groups)
    scheduler = warmup_cosine_scheduler(optimizer, total_steps=args.epochs * len(data[0]),
                                        warmup=0.1)
    trainer = tk.Trainer(net, epochs=args.epochs, optimizer=optimizer, scheduler=scheduler,
                         device=device, channels_last=device.type == "cpu",
                         monitor="val_acc", out_dir=out, seed=args.seed)
    trainer.fit(data[0], data[1], resume=True if args.resume else None)
    return trainer, data[2]


if __name__ == "__main__":
    sys.exit(main())
