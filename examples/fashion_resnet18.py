"""Fine-tune an ImageNet backbone on FashionMNIST: the seed notebook's workflow, done right.

The four steps of transfer learning, with the seed's mistakes fixed:

1. take a network pretrained on ImageNet (ResNet18; when its weights are in no cache and
   cannot be downloaded, EfficientNet-Lite0, whose weights install from the package index;
   said in one line, with the reason, and in the report);
2. + 3. copy everything but the output layer and add a new 10-class head, with the input
   layer adapted to 1 grey channel (the RGB filters summed, instead of tripling every
   image with ``torch.cat((X, X, X), 1)``, which the seed then forgot at evaluation);
4. train: the new head with a 10x larger learning rate than the body; evaluation in
   ``eval()`` mode under ``no_grad``; images resized to 32 px, not 7.

Everything trains through ``transferkit.fine_tune``, the engine the command line uses too.
On a CPU the default trains the stages after the first ``--freeze-stages`` ones
(``fine_tune(freeze_stages=...)``): the frozen stages never change and no augmentation is
used, so what they compute is cached once and each epoch only runs the trained stages.
That is what makes ``make demo`` fit in 10 minutes on 2 cores.

Run ``python examples/fashion_resnet18.py --help`` for the options. Outputs in ``--out``:
``model.safetensors``, ``history.json``/``.csv``, ``report.md`` and PNG plots.

``--compare`` answers "does transfer help, and which recipe?" with one measurement: four
arms on the same split, image size, batch size, seed and ``--epochs`` -- ``scratch`` (the
same backbone, ``--weights none``, every stage trains), ``linear_probe``, ``full`` (the
default path above) and ``lp_ft`` -- each written to ``OUT/compare/<arm>/``, then one table
printed and written to ``OUT/compare.md`` and ``OUT/compare.json``.

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
from transferkit.data import TensorLoader, fashion_mnist
from transferkit.errors import TransferKitError, WeightsNotFoundError
from transferkit.recipes import PROBE_LR
from transferkit.report import write_run_report
from transferkit.train import select_device

log = logging.getLogger("fashion_resnet18")
DEFAULT_BACKBONE, FALLBACK_BACKBONE = "resnet18", "efficientnet_lite0"
WEIGHT_DECAY, WARMUP = 0.01, 0.1  # AdamW's weight decay; warm-up fraction of the steps
EVAL_IMAGES = 1000  # --eval-every: the validation images evaluated every STEPS steps
# --compare: arm -> (weights override, recipe, --freeze-stages override), in table order.
ARMS: dict[str, tuple[str | None, str, int | None]] = {
    "scratch": ("none", "full", 0),  # random frozen stages would handicap it: all train
    "linear_probe": (None, "linear_probe", None),
    "full": (None, "full", None),
    "lp_ft": (None, "lp_ft", None),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default=None,
                   help=f"any registry name (default {DEFAULT_BACKBONE}; when its weights can be "
                        f"neither found nor downloaded: {FALLBACK_BACKBONE})")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet', 'none' (train from scratch) or a weights file")
    p.add_argument("--recipe", default=None,
                   help="'full' (default: discriminative LRs, frozen stages cached) or any "
                        f"recipe of transferkit.fine_tune: {', '.join(tk.list_recipes())}; "
                        "not with --compare, which runs its own")
    p.add_argument("--compare", action="store_true",
                   help="train four arms with the same budget (--epochs, >= 2, and the "
                        "other options): scratch (--weights none, every stage trains), "
                        "linear_probe, full, lp_ft; into OUT/compare/<arm>/, with one table "
                        "in OUT/compare.md and .json. Not with --recipe, --resume or "
                        "--weights none")
    p.add_argument("--epochs", type=int, default=8 if gpu else 3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64 if gpu else 32)
    p.add_argument("--lr", type=float, default=1e-2, help="head LR (body: lr / 10)")
    p.add_argument("--freeze-stages", type=int, default=0 if gpu else 3,
                   help="recipe 'full' (and the full arm of --compare; its scratch arm "
                        "freezes none): stages (stem first) kept frozen and cached")
    p.add_argument("--val-size", type=int, default=5000,
                   help="training images held out for validation (model selection)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--subset", type=int, default=None,
                   help="use only N training and N // 5 test images (quick runs)")
    p.add_argument("--out", default="runs/fashion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="recipe 'full': continue from OUT/finetune/last.pt, with the same options "
                        "(a larger --epochs stretches the schedule to the new end)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--eval-every", type=int, default=None, metavar="STEPS",
                   help=f"also evaluate the first {EVAL_IMAGES} validation images every STEPS "
                        "optimizer steps, into OUT/eval_every.json (time to accuracy)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "image_size", "eval_every"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.freeze_stages < 0:
        p.error(f"--freeze-stages must be >= 0, got {args.freeze_stages}")
    if args.compare:
        if args.recipe is not None:
            p.error("--compare runs its own recipes (scratch, linear_probe, full, lp_ft); "
                    "drop --recipe")
        if args.resume:
            p.error("--compare cannot --resume: every arm trains afresh in OUT/compare/<arm>/")
        if args.epochs < 2:
            p.error(f"--compare needs --epochs >= 2 (lp_ft probes, then fine-tunes), "
                    f"got {args.epochs}")
        if args.weights == "none":
            p.error("--compare compares pretrained weights with none (its scratch arm); "
                    "drop --weights none")
    args.recipe = args.recipe or "full"
    if args.recipe != "full" and args.recipe not in tk.list_recipes():
        known = ["full", *tk.list_recipes()]
        p.error(f"unknown recipe {args.recipe!r}.{tk.errors.closest(args.recipe, known)}")
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
    summary = {k: result[k] for k in ("backbone", "weights", "test_acc", "wall_s")}
    print(f"test accuracy {result['test_acc']:.4f} ({backbone}, {weights} weights) in "
          f"{result['wall_s']:.0f} s; report: {out / 'report.md'}")
    print("RESULT " + json.dumps(summary))
    return 0


def compare(args: argparse.Namespace, out: Path, notes: list[str]) -> int:
    """Train every arm of ``ARMS`` with the same budget; print and write one table."""
    data = fashion_mnist(args.data_root)
    # Resolve the backbone once (the fallback is said here, once): every arm uses it.
    _, backbone, _ = build_model(args, notes)
    rows = []
    for i, (arm, (weights_arg, recipe, freeze_stages)) in enumerate(ARMS.items(), 1):
        arm_args = argparse.Namespace(**{
            **vars(args), "backbone": backbone, "recipe": recipe,
            "weights": weights_arg or args.weights,
            "freeze_stages": args.freeze_stages if freeze_stages is None else freeze_stages,
        })
        arm_out = out / "compare" / arm
        log.info("compare: arm %d/%d, %s", i, len(ARMS), arm)
        torch.manual_seed(args.seed)  # every arm's new head starts from the same draw
        arm_start = time.perf_counter()
        model, _, weights = build_model(arm_args, [])
        result = train_and_report(arm_args, data, model, backbone, weights, arm_out, notes,
                                  arm_start)
        rows.append({"arm": arm, "backbone": backbone, "weights": weights, "recipe": recipe,
                     "trains": result["trains"], "epochs": args.epochs,
                     "val_acc": result["val_acc"], "test_acc": result["test_acc"],
                     "wall_s": result["wall_s"]})
    budget = {"epochs": args.epochs, "images": result["images"],
              "image_size": args.image_size, "batch_size": args.batch_size,
              "head_lr": args.lr, "body_lr": args.lr / 10, "weight_decay": WEIGHT_DECAY,
              "warmup": WARMUP, "seed": args.seed, "device": result["device"]}
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
        f"({b['images']}), {b['image_size']} px, batch {b['batch_size']}, seed {b['seed']}, "
        f"AdamW with head LR {b['head_lr']:g} and body LR {b['body_lr']:g} (lp_ft's probe "
        f"phase: head LR {PROBE_LR:g}), weight decay {b['weight_decay']:g}, "
        f"{b['warmup']:.0%} warm-up then cosine, on {b['device']}. val acc: the last epoch's; "
        "wall s: one "
        "arm from building its model to its report (data loading excluded), one run, not a "
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


def train_and_report(args: argparse.Namespace, data: Any, model: torch.nn.Module,
                     backbone: str, weights: str, out: Path, notes: list[str],
                     start: float) -> dict[str, Any]:
    """Train ``model`` with ``args.recipe``, test it, write the run's files to ``out``.

    Returns:
        backbone, weights, test_acc, val_acc (last epoch), wall_s (since ``start``),
        trains (what trained, in words), images (train/val/test counts) and device.
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
    log.info("backbone %s (%s weights), %d train / %d val / %d test images at %d px, on %s",
             backbone, weights, len(train_idx), n_val, n_test, args.image_size, device)

    def loader(images, labels, *, shuffle):
        return TensorLoader(images, labels, batch_size=args.batch_size, shuffle=shuffle,
                            image_size=args.image_size, mean=info.mean, std=info.std,
                            num_classes=10, device=device, seed=args.seed)

    train = loader(data.train_images[train_idx], data.train_labels[train_idx], shuffle=True)
    val = loader(data.train_images[val_idx], data.train_labels[val_idx], shuffle=False)
    test = loader(test_x, test_y, shuffle=False)
    images = f"{len(train_idx)}/{n_val}/{n_test}"
    # Recipe 'full' keeps the first --freeze-stages stages frozen and cached (at least one
    # stage trains); the other recipes train as transferkit.fine_tune defines them.
    stages = info.stages
    k = min(args.freeze_stages, len(stages) - 1) if args.recipe == "full" else 0
    facts = {"backbone": backbone, "weights": weights, "recipe": args.recipe,
             "epochs": args.epochs, "batch size": args.batch_size,
             "image size": args.image_size, "head lr": args.lr, "body lr": args.lr / 10,
             "device": str(device), "train/val/test images": images, "seed": args.seed}
    if k:
        facts["frozen and cached"] = f"stem + {k - 1} stages (input of stage {k}: " \
                                     f"{stages[k].name})"
    cpu = device.type == "cpu"  # channels-last: several times faster convs on a CPU
    watch = None if args.eval_every is None else tk.PeriodicEval(
        loader(data.train_images[val_idx[:EVAL_IMAGES]],
               data.train_labels[val_idx[:EVAL_IMAGES]], shuffle=False), every=args.eval_every)
    result = tk.fine_tune(model, train, val, recipe=args.recipe, epochs=args.epochs,
                          lr=args.lr, body_lr=args.lr / 10, weight_decay=WEIGHT_DECAY,
                          warmup=WARMUP, freeze_stages=k, channels_last=cpu,
                          monitor="val_acc", out_dir=out, device=device, seed=args.seed,
                          resume=args.resume, callbacks=[watch] if watch else [])
    if watch is not None:
        (out / "eval_every.json").write_text(json.dumps({
            "every": args.eval_every, "images": min(EVAL_IMAGES, n_val),
            "fit_started_at": watch.fit_started_at, "first_step_at": watch.first_step_at,
            "cache_s": result.timings.get("cache_s"), "records": watch.records}, indent=1))
    notes.extend(n for n in result.notes if n not in notes)
    trainer, history = result.trainer, result.history
    probe = sum(r["phase"] == "probe" for r in history)
    trains = {"linear_probe": "the head (cached features)",
              "lp_ft": f"the head ({probe} ep), then everything"}.get(args.recipe, "everything")
    if k:
        trains = f"{stages[k].name} onwards + head"
    probs = trainer.predict(test)
    test_acc = (probs.argmax(1).cpu() == test_y).float().mean().item()
    tk.save_model(model, out / "model.safetensors", backbone=backbone,
                  class_names=data.classes, image_size=args.image_size,
                  extra={"weights": weights, "recipe": args.recipe, "test_acc": test_acc})
    wall = time.perf_counter() - start  # everything but the imports and this report
    facts["wall time (s)"] = round(wall, 1)
    # The same report as `transferkit train` writes; a None plot (no matplotlib) is named.
    write_run_report(out, title=f"FashionMNIST: {backbone} fine-tuned", facts=facts,
                     history=history, probs=probs, labels=test_y, images=test_x,
                     class_names=data.classes, settings=result.settings, notes=notes)
    return {"backbone": backbone, "weights": weights, "test_acc": round(test_acc, 4),
            "val_acc": round(history[-1]["val_acc"], 4), "wall_s": round(wall, 1),
            "trains": trains, "images": images, "device": str(device)}


if __name__ == "__main__":
    sys.exit(main())
