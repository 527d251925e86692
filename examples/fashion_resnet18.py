"""Fine-tune an ImageNet backbone on FashionMNIST: the seed notebook's workflow, done right.

The four steps of transfer learning, with the seed's mistakes fixed:

1. take a network pretrained on ImageNet (ResNet18; when its weights are in no cache and
   cannot be downloaded, EfficientNet-Lite0, whose weights install from the package index;
   said in one line, with the reason, and in the report);
2. + 3. copy everything but the output layer and add a new 10-class head, with the input
   layer adapted to 1 grey channel (the RGB filters summed, instead of tripling every
   image with ``torch.cat((X, X, X), 1)``, which the seed then forgot at evaluation);
4. train: the new head with a 10x larger learning rate than the body (recipe ``full``);
   evaluation in ``eval()`` mode under ``no_grad``; images resized up, not down to 7 px.

The example is a thin shell over ``transferkit.fine_tune``, the engine ``transferkit
train`` uses too: it hands the training and validation images to ``fine_tune`` as
``(images, labels)`` tensors, and ``fine_tune`` chooses every setting left out from the
data, each reported with its reason in the log ("chose ...") and the report: the batch size
(about N/16, 16..256; on the CPU at most 64 at 224 px), the number of epochs
(round(1000/sqrt(N)) within 3..60), the image size (the largest multiple of 32 whose run
fits the device's compute budget), the augmentation (``light`` random shifts up to about
11,000 images, none past them), the body LR (the recipe's ratio to ``--lr``) and
channels-last on a CPU. For the 55,000 training images that is batch 256, 4 epochs, 32 px
and no augmentation on a CPU. A default that helps the example helps ``fine_tune`` and the
command line alike.

Why everything trains by default (``--freeze-stages 0``): on the 2-core CPU, keeping the
stem and two stages frozen with their output cached (``--freeze-stages 3``, the example's
earlier default) was no faster than training everything channels-last, and less accurate
(issue 14: cached 317 s / 91.27%; ``fine_tune(recipe="full", channels_last=True)``, all
stages trained, 299 s / 91.56%; fastai 441 s / 91.23%). At 32 px the frozen stem and two
stages do a small share of a step, and being frozen their backward pass is never built
anyway: the cache saves only their forward pass, at the price of an extra pass over the
data to build it (61 s for 55,000 images). Most of a step went to the late stages' 5x5
depthwise convolutions on 1x1 and 2x2 feature maps, whose oneDNN backward pass is
pathologically slow; the Trainer now runs them on the kernel taps that reach their input
(``Trainer(crop_kernels=None)``, on by default on a CPU), which helps every path. Training
everything also lets the images be augmented, which a cache cannot.

Run ``python examples/fashion_resnet18.py --help`` for the options. Outputs in ``--out``:
``model.safetensors``, ``history.json``/``.csv``, ``report.md`` and PNG plots. ``--tta
flip`` (any of ``transferkit.train.TTA_MODES``) averages the test predictions over fixed
views of each test image.

``--compare`` answers "does transfer help, and which recipe?" with one measurement: four
arms on the same split and seed, each with the settings ``fine_tune`` chooses for it (the
same for all four, since they train on the same images) -- ``scratch`` (the same backbone,
``--weights none``, every stage trains), ``linear_probe``, ``full`` (the default path above)
and ``lp_ft`` -- each written to ``OUT/compare/<arm>/``, then one table printed and written
to ``OUT/compare.md`` and ``OUT/compare.json``.

``--eval-every STEPS`` also evaluates the first ``EVAL_IMAGES`` validation images every
STEPS optimizer steps (``transferkit.PeriodicEval``) and writes the accuracy over time to
``OUT/eval_every.json``: what ``benchmarks/time_to_accuracy.py`` reads to see when an
accuracy is first reached, mid-epoch. Off by default (each evaluation costs time).

``--resume`` continues recipe ``full`` from ``OUT/finetune/last.pt`` (same options, possibly a
larger ``--epochs``: the cosine schedule is then stretched to the new last epoch, said in one
line).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

import transferkit as tk
from transferkit.backbones import is_offline
from transferkit.data import AUGMENT_PRESETS, TensorLoader, fashion_mnist
from transferkit.errors import TransferKitError, WeightsNotFoundError
from transferkit.recipes import PROBE_LR, Choice, default_image_size
from transferkit.recipes.budget import default_passes
from transferkit.recipes.inputs import AUGMENT_NONE_FROM
from transferkit.report import write_run_report
from transferkit.train import TTA_MODES, select_device

log = logging.getLogger("fashion_resnet18")
DEFAULT_BACKBONE, FALLBACK_BACKBONE = "resnet18", "efficientnet_lite0"
EVAL_IMAGES = 1000  # --eval-every: the validation images evaluated every STEPS steps
# --compare: arm -> (weights override, recipe), in table order. Only the full arm keeps
# --freeze-stages; scratch trains every stage (random frozen stages would handicap it).
ARMS: dict[str, tuple[str | None, str]] = {
    "scratch": ("none", "full"),
    "linear_probe": (None, "linear_probe"),
    "full": (None, "full"),
    "lp_ft": (None, "lp_ft"),
}
CHOSEN = "default: fine_tune chooses it from the data, said in the log and the report"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default=None,
                   help=f"any registry name (default {DEFAULT_BACKBONE}; when its weights can be "
                        f"neither found nor downloaded: {FALLBACK_BACKBONE})")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet', 'none' (train from scratch) or a weights file")
    p.add_argument("--recipe", default=None,
                   help="'full' (default: everything trains, head LR 10x the body's) or any "
                        f"recipe of transferkit.fine_tune: {', '.join(tk.list_recipes())}; "
                        "not with --compare, which runs its own")
    p.add_argument("--compare", action="store_true",
                   help="train four arms with the same budget (the same chosen settings; "
                        "--epochs, if given, >= 2): scratch (--weights none, every stage "
                        "trains), linear_probe, full, lp_ft; into OUT/compare/<arm>/, with one "
                        "table in OUT/compare.md and .json. Not with --recipe, --resume or "
                        "--weights none")
    p.add_argument("--epochs", type=int, default=None, help=CHOSEN)
    p.add_argument("--batch-size", type=int, default=None, help=CHOSEN)
    p.add_argument("--image-size", type=int, default=None, help=CHOSEN)
    p.add_argument("--lr", type=float, default=None,
                   help="head LR (default: the recipe's); the body follows at the recipe's "
                        "ratio unless --body-lr is given")
    p.add_argument("--body-lr", type=float, default=None,
                   help="body LR (default: --lr times the recipe's ratio)")
    p.add_argument("--augment", choices=tuple(AUGMENT_PRESETS), default=None,
                   help="augmentation preset (default: fine_tune chooses it: light random "
                        f"shifts up to about {round(AUGMENT_NONE_FROM, -3):,} training "
                        "images, none past them or with --freeze-stages)")
    p.add_argument("--freeze-stages", type=int, default=0, metavar="K",
                   help="keep the stem and the next K-1 stages frozen, their output cached "
                        "once (fine_tune(freeze_stages=K); the full arm only with --compare). "
                        "Default 0: everything trains")
    p.add_argument("--tta", choices=tuple(TTA_MODES), default="none",
                   help="test-time augmentation of the test evaluation (default: none)")
    p.add_argument("--val-size", type=int, default=5000,
                   help="training images held out for validation (model selection)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--subset", type=int, default=None,
                   help="use only N training and N // 5 test images (fine_tune's choices "
                        "fill the same compute budget with more epochs and larger images: "
                        "name --epochs and --image-size for a quick run)")
    p.add_argument("--out", default="runs/fashion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="recipe 'full': continue from OUT/finetune/last.pt, with the same options "
                        "(a larger --epochs stretches the schedule to the new end; give the "
                        "first run's --image-size then, as the size chosen depends on the "
                        "run's length)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--eval-every", type=int, default=None, metavar="STEPS",
                   help=f"also evaluate the first {EVAL_IMAGES} validation images every STEPS "
                        "optimizer steps, into OUT/eval_every.json (time to accuracy)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "image_size", "lr", "body_lr", "val_size", "subset",
                 "eval_every"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.freeze_stages < 0:
        p.error(f"--freeze-stages must be >= 0, got {args.freeze_stages}")
    if args.compare:
        if args.recipe is not None:
            p.error("--compare runs its own recipes (scratch, linear_probe, full, lp_ft); "
                    "drop --recipe")
        if args.resume:
            p.error("--compare cannot --resume: every arm trains afresh in OUT/compare/<arm>/")
        if args.epochs is not None and args.epochs < 2:
            p.error(f"--compare needs --epochs >= 2 (lp_ft probes, then fine-tunes), "
                    f"got {args.epochs}")
        if args.weights == "none":
            p.error("--compare compares pretrained weights with none (its scratch arm); "
                    "drop --weights none")
    args.recipe = args.recipe or "full"
    if args.recipe not in tk.list_recipes():
        p.error(f"unknown recipe {args.recipe!r}."
                f"{tk.errors.closest(args.recipe, tk.list_recipes())}")
    if args.resume and args.recipe != "full":
        p.error(f"--resume continues recipe 'full' only (transferkit.fine_tune starts "
                f"afresh), not {args.recipe!r}")
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
        why = ("offline mode is set (TRANSFERKIT_OFFLINE/HF_HUB_OFFLINE)" if is_offline()
               else f"the download failed (--backbone {name} shows why)")
        note = (f"{name} ImageNet weights are not available: they are in no local cache and "
                f"{why}; using {FALLBACK_BACKBONE} with its ImageNet weights from the pip "
                "package instead.")
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
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"fashion_resnet18: error: --out {str(out)!r} is not writable "
              f"({exc.strerror or exc}); pick a folder you can write to.", file=sys.stderr)
        return 1
    checkpoint = out / "finetune" / "last.pt"
    if args.resume and not checkpoint.is_file():
        print(f"fashion_resnet18: error: --resume: there is no checkpoint "
              f"{str(checkpoint)!r} to continue; run without --resume first.",
              file=sys.stderr)
        return 1
    try:
        if args.compare:
            return compare(args, out, notes)
        return run(args, out, notes, start)
    except (TransferKitError, OSError) as exc:
        print(f"fashion_resnet18: error: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, out: Path, notes: list[str], start: float) -> int:
    data = fashion_mnist(args.data_root)
    model, backbone, weights = build_model(args, notes)
    result = train_and_report(args, data, model, backbone, weights, out, notes, start)
    summary = {k: result[k] for k in ("backbone", "weights", "test_acc", "tta", "wall_s", "used")}
    tta = "" if args.tta == "none" else f", test-time augmentation {args.tta}"
    print(f"test accuracy {result['test_acc']:.4f} ({backbone}, {weights} weights{tta}) in "
          f"{result['wall_s']:.0f} s; report: {out / 'report.md'}")
    print("RESULT " + json.dumps(summary))
    return 0


def compare(args: argparse.Namespace, out: Path, notes: list[str]) -> int:
    """Train every arm of ``ARMS`` with the same budget; print and write one table."""
    data = fashion_mnist(args.data_root)
    # Resolve the backbone once (the fallback is said here, once): every arm uses it.
    _, backbone, _ = build_model(args, notes)
    rows, used = [], {}
    for i, (arm, (weights_arg, recipe)) in enumerate(ARMS.items(), 1):
        arm_args = argparse.Namespace(**{
            **vars(args), "backbone": backbone, "recipe": recipe,
            "weights": weights_arg or args.weights,
            "freeze_stages": args.freeze_stages if arm == "full" else 0,
        })
        arm_out = out / "compare" / arm
        log.info("compare: arm %d/%d, %s", i, len(ARMS), arm)
        torch.manual_seed(args.seed)  # every arm's new head starts from the same draw
        arm_start = time.perf_counter()
        model, _, weights = build_model(arm_args, [])
        result = train_and_report(arm_args, data, model, backbone, weights, arm_out, notes,
                                  arm_start)
        used[arm] = result["used"]
        rows.append({"arm": arm, "backbone": backbone, "weights": weights, "recipe": recipe,
                     "trains": result["trains"], "epochs": result["used"]["epochs"],
                     "val_acc": result["val_acc"], "test_acc": result["test_acc"],
                     "wall_s": result["wall_s"]})
    # Every arm trains on the same images, so fine_tune chose the same budget for each: the
    # first arm's (scratch, recipe full) is the table's.
    first = used["scratch"]
    budget = {"epochs": first["epochs"], "images": result["images"],
              "image_size": first["image_size"], "batch_size": first["batch_size"],
              "augment": first["augment"], "head_lr": first["lr"], "body_lr": first["body_lr"],
              "probe_lr": used["linear_probe"]["lr"], "weight_decay": first["weight_decay"],
              "warmup": first["warmup"], "seed": args.seed, "device": result["device"]}
    table = {"budget": budget, "notes": notes, "arms": rows}
    markdown = compare_markdown(table)
    (out / "compare.md").write_text(markdown)
    (out / "compare.json").write_text(json.dumps(table, indent=1) + "\n")
    print(markdown.split("\n\n", 1)[1].rstrip())
    print(f"compare: {out / 'compare.md'}")
    print("COMPARE " + json.dumps(table))
    return 0


def compare_markdown(table: dict[str, Any]) -> str:
    """Return ``compare.md``: the shared budget, then one row per arm."""
    b = table["budget"]
    lines = [
        "# FashionMNIST: does transfer help, and which recipe?",
        "",
        f"Shared budget: {b['epochs']} epochs per arm on the same train/val/test images "
        f"({b['images']}), {b['image_size']} px, batch {b['batch_size']}, augmentation "
        f"{b['augment']}, seed {b['seed']}, AdamW with head LR {b['head_lr']:g} and body LR "
        f"{b['body_lr']:g} (linear_probe: head LR {b['probe_lr']:g}; lp_ft's probe phase: "
        f"head LR {PROBE_LR:g}), weight decay {b['weight_decay']:g}, {b['warmup']:.0%} "
        f"warm-up then cosine, on {b['device']}; what was not given, fine_tune chose "
        "(each arm's report.md says why). val acc: the last epoch's; wall s: one arm from "
        "building its model to its report (data loading excluded), one run, not a "
        "benchmark.",
        *(f"Note: {note}" for note in table["notes"]),
        "",
        "| arm | backbone | weights | recipe | trains | epochs | val acc | test acc | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['arm']} | {r['backbone']} | {r['weights']} | {r['recipe']} | "
              f"{r['trains']} | {r['epochs']} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | "
              f"{r['wall_s']:.1f} |" for r in table["arms"]]
    return "\n".join(lines) + "\n"


def setting(settings: list[Choice], name: str, given: Any) -> Any:
    """Return ``given``, or else the value ``fine_tune`` chose for ``name`` (``None``: none)."""
    if given is not None:
        return given
    return next((s.value for s in settings if s.name == name), None)


def train_and_report(args: argparse.Namespace, data: Any, model: torch.nn.Module,
                     backbone: str, weights: str, out: Path, notes: list[str],
                     start: float) -> dict[str, Any]:
    """Train ``model`` with ``args.recipe``, test it, write the run's files to ``out``.

    Returns:
        backbone, weights, test_acc, val_acc (last epoch), wall_s (since ``start``),
        trains (what trained, in words), images (train/val/test counts), device, tta and
        used (the settings the run trained with, given or chosen by ``fine_tune``).
    """
    info = tk.get_info(model)
    device = select_device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    n_train = args.subset or data.train_images.shape[0]
    n_test = max(1, args.subset // 5) if args.subset else data.test_images.shape[0]
    perm = torch.randperm(data.train_images.shape[0], generator=gen)[:n_train]
    n_val = min(args.val_size, n_train // 5)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    test_x, test_y = data.test_images[:n_test], data.test_labels[:n_test]
    images = f"{len(train_idx)}/{n_val}/{n_test}"
    log.info("backbone %s (%s weights), %d train / %d val / %d test images, on %s",
             backbone, weights, len(train_idx), n_val, n_test, device)
    # Everything the user left out (None) fine_tune chooses from the data, and says why.
    k = args.freeze_stages
    watch = None
    if args.eval_every is not None:
        # The slice is evaluated at the size fine_tune trains at: the library's own rule
        # (it depends on the data and the device only), unless --image-size gives it.
        size = args.image_size or default_image_size(
            tuple(data.train_images.shape[-2:]), info.input_size,
            passes=default_passes(len(train_idx)), device=device.type)
        watch = tk.PeriodicEval(TensorLoader(
            data.train_images[val_idx[:EVAL_IMAGES]], data.train_labels[val_idx[:EVAL_IMAGES]],
            batch_size=256, image_size=size, mean=info.mean, std=info.std, num_classes=10,
            device=device), every=args.eval_every)
    result = tk.fine_tune(
        model, (data.train_images[train_idx], data.train_labels[train_idx]),
        (data.train_images[val_idx], data.train_labels[val_idx]), recipe=args.recipe,
        epochs=args.epochs, lr=args.lr, body_lr=args.body_lr, batch_size=args.batch_size,
        image_size=args.image_size, augment=args.augment, freeze_stages=k, out_dir=out,
        device=device, seed=args.seed, resume=args.resume, callbacks=[watch] if watch else [])
    if watch is not None:
        (out / "eval_every.json").write_text(json.dumps({
            "every": args.eval_every, "images": min(EVAL_IMAGES, n_val),
            "image_size": size, "fit_started_at": watch.fit_started_at,
            "first_step_at": watch.first_step_at, "cache_s": result.timings.get("cache_s"),
            "records": watch.records}, indent=1))
    notes.extend(n for n in result.notes if n not in notes)
    trainer, history, settings = result.trainer, result.history, result.settings
    used = {"epochs": len(history), "image_size": result.image_size,
            "batch_size": setting(settings, "batch_size", args.batch_size),
            "augment": setting(settings, "augment", args.augment),
            "lr": setting(settings, "lr", args.lr),
            "body_lr": None if args.recipe == "linear_probe"  # no body trains
            else setting(settings, "body_lr", args.body_lr),
            "weight_decay": trainer.weight_decay, "warmup": trainer.warmup}
    facts = {"backbone": backbone, "weights": weights, "recipe": args.recipe,
             "epochs": used["epochs"], "batch size": used["batch_size"],
             "image size": used["image_size"], "augmentation": used["augment"],
             "head lr": used["lr"], "body lr": used["body_lr"], "device": str(device),
             "train/val/test images": images, "seed": args.seed,
             "test-time augmentation": args.tta}
    if used["body_lr"] is None:
        del facts["body lr"]
    stages = info.stages
    if k:
        facts["frozen and cached"] = f"stem + {k - 1} stages (input of stage {k}: " \
                                     f"{stages[k].name})"
    probe = sum(r["phase"] == "probe" for r in history)
    trains = {"linear_probe": "the head (cached features)",
              "lp_ft": f"the head ({probe} ep), then everything"}.get(args.recipe, "everything")
    if k:
        trains = f"{stages[k].name} onwards + head"
    # The test images go through the training pipeline's resize and normalisation.
    test = TensorLoader(test_x, test_y, batch_size=256, image_size=result.image_size,
                        mean=info.mean, std=info.std, num_classes=10, device=device)
    probs = trainer.predict(test, tta=args.tta)
    test_acc = (probs.argmax(1) == test_y).float().mean().item()
    tk.save_model(model, out / "model.safetensors", backbone=backbone,
                  class_names=data.classes, image_size=result.image_size,
                  extra={"weights": weights, "recipe": args.recipe, "test_acc": test_acc,
                         "tta": args.tta, "settings": [str(s) for s in settings]})
    wall = time.perf_counter() - start  # everything but the imports and this report
    facts["wall time (s)"] = round(wall, 1)
    # The same report as `transferkit train` writes: the facts, then each setting fine_tune
    # chose with its reason ("chose ..."); a None plot (no matplotlib) is named.
    write_run_report(out, title=f"FashionMNIST: {backbone} fine-tuned", facts=facts,
                     history=history, probs=probs, labels=test_y, images=test_x,
                     class_names=data.classes, settings=settings, notes=notes)
    return {"backbone": backbone, "weights": weights, "test_acc": round(test_acc, 4),
            "val_acc": round(history[-1]["val_acc"], 4), "wall_s": round(wall, 1),
            "trains": trains, "images": images, "device": str(device), "tta": args.tta,
            "used": used}


if __name__ == "__main__":
    sys.exit(main())
