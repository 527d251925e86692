"""Every ``fine_tune`` recipe on one budget: test accuracy, best val accuracy and wall time.

For each recipe of ``transferkit.list_recipes()`` (or ``--recipes a,b,c``), in that order,
``fine_tune(model, train, val, recipe=name, epochs=E)`` trains a fresh copy of the same
pretrained ``efficientnet_lite0`` (ImageNet weights from the pip package, 1 input channel,
a new 10-class head drawn once from ``--seed``) on the same FashionMNIST subset:

- train and val: disjoint random images of the official train split (``--seed``); test:
  random images of the official test split, evaluated once after training (the model as
  the last epoch left it, not the best epoch's: ``restore_best=False``);
- the same epoch budget ``E`` for every recipe, ``lp_ft`` splitting it as ``fine_tune``
  does (``epochs // 2`` probe epochs, then the rest fine-tuning);
- the same loaders (batch ``--batch-size``, the same shuffling seed), each recipe's own
  default LRs (docs/recipes.md), channels-last model and inputs on the CPU.

Reported per recipe: test accuracy, best and last val accuracy, the wall time of the
``fine_tune`` call (``FineTuneResult.seconds``: feature extraction included, the test
evaluation not), and what trains: the trainable parameters when ``fine_tune`` returns
(``gradual`` opens every stage within the first quarter of the run) and the recipe's
summary.

``--variants`` runs each recipe once per variant of the Trainer's batch and target options
(``mixup``, ``cutmix``, ``label_smoothing``; ``baseline`` for none), on the same model,
data and seed, so a regulariser is measured against the run without it.

Usage::

    python benchmarks/recipes.py            # 4000 train / 1000 val / 2000 test, 32 px, 3 epochs
    python benchmarks/recipes.py --quick    # 64 / 32 / 32 images at 16 px, 2 epochs (tests)
    python benchmarks/recipes.py --recipes full,lp_ft,l2sp --epochs 5
    python benchmarks/recipes.py --recipes lp_ft --variants "baseline;mixup=0.2;cutmix=1.0"

All runs use ``torch.set_num_threads(1)`` unless ``--threads N`` (see docs/benchmarks.md).
One run per recipe, not repeated: times on a shared CPU vary by up to 2x. The last line
printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
from _common import load_data, machine, print_result, subset

import transferkit as tk  # after _common: it puts the repository root on sys.path
from transferkit.data import TensorLoader
from transferkit.errors import WeightsError, closest

MODEL = "efficientnet_lite0"
VARIANT_OPTIONS = ("mixup", "cutmix", "label_smoothing")  # fine_tune Trainer kwargs, floats
MEAN, STD = (0.2860,), (0.3530,)  # FashionMNIST's, as benchmarks/linear_probe.py
EVAL_BATCH = 256

log = logging.getLogger("recipes")


def _model(pretrained: bool, seed: int) -> tuple[torch.nn.Module, bool]:
    torch.manual_seed(seed)  # the new head's draw: the same for every recipe
    try:
        return tk.create(MODEL, 10, in_chans=1, pretrained=pretrained), pretrained
    except WeightsError as exc:
        print(f"no {MODEL} ImageNet weights ({exc}): random init", file=sys.stderr)
        torch.manual_seed(seed)
        return tk.create(MODEL, 10, in_chans=1, pretrained=False), False


def _loaders(*, n_train: int, n_val: int, n_test: int, size: int, batch_size: int, seed: int,
             synthetic_ok: bool) -> tuple[list[TensorLoader], str, tuple[int, int, int]]:
    data = load_data(synthetic_ok=synthetic_ok)
    if data.source == "synthetic":
        print("FashionMNIST not found: synthetic images (the accuracies mean nothing)",
              file=sys.stderr)
    x, y = subset(data.train_images, data.train_labels, n_train + n_val, seed=seed)
    tx, ty = subset(data.test_images, data.test_labels, n_test, seed=seed)

    def loader(images: torch.Tensor, labels: torch.Tensor, *, train: bool) -> TensorLoader:
        return TensorLoader(images, labels, batch_size=batch_size if train else EVAL_BATCH,
                            shuffle=train, image_size=size, mean=MEAN, std=STD, seed=seed)

    loaders = [loader(x[n_val:], y[n_val:], train=True), loader(x[:n_val], y[:n_val], train=False),
               loader(tx, ty, train=False)]
    return loaders, data.source, (len(y) - n_val, n_val, len(ty))


def parse_variants(text: str | None) -> list[dict[str, float]]:
    """``"baseline;mixup=0.2,cutmix=1.0"`` -> ``[{}, {"mixup": 0.2, "cutmix": 1.0}]``.

    Raises:
        ValueError: An unknown option, a value that is not a number, or a repeated variant.
    """
    if text is None:
        return [{}]
    variants: list[dict[str, float]] = []
    for part in (p.strip() for p in text.split(";")):
        options: dict[str, float] = {}
        for item in ([] if part == "baseline" else part.split(",")):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in VARIANT_OPTIONS:
                raise ValueError(f"unknown variant option {key!r} in {part!r}; valid: "
                                 f"{', '.join(VARIANT_OPTIONS)} (or 'baseline')."
                                 + closest(key, VARIANT_OPTIONS))
            try:
                options[key] = float(value)
            except ValueError:
                raise ValueError(f"{key}={value!r} in {part!r} is not a number") from None
        if options in variants:
            raise ValueError(f"--variants names {part!r} twice")
        variants.append(options)
    return variants


def variant_name(options: dict[str, float]) -> str:
    """``{}`` -> ``"baseline"``, ``{"mixup": 0.2}`` -> ``"mixup=0.2"``."""
    return ",".join(f"{k}={v:g}" for k, v in options.items()) or "baseline"


def _recipe_run(base: torch.nn.Module, name: str, loaders: list[TensorLoader], *, epochs: int,
                seed: int, device: str, options: dict[str, float] | None = None) -> dict[str, Any]:
    """Fine-tune a copy of ``base`` with recipe ``name``; return its accuracies and time."""
    train, val, test = loaders
    model = copy.deepcopy(base)
    fast = torch.device(device).type == "cpu"  # channels-last: faster convs on a CPU
    if fast:
        model.to(memory_format=torch.channels_last)
    torch.manual_seed(seed)
    # restore_best=False: test the last epoch's model, as the tables were measured.
    result = tk.fine_tune(model, train, val, recipe=name, epochs=epochs, device=device,
                          seed=seed, progress=False, channels_last=fast, restore_best=False,
                          **(options or {}))
    assert result.trainer is not None  # fine_tune always returns its last Trainer
    test_acc = result.trainer.evaluate(test)["acc"]
    phases = [r["phase"] for r in result.history]
    return {
        "recipe": name,
        "variant": variant_name(options or {}),
        "summary": tk.RECIPES[name].summary,
        "epochs": len(phases),
        "probe_epochs": phases.count("probe"),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "test_acc": test_acc,
        "best_val_acc": max(r["val_acc"] for r in result.history),
        "last_val_acc": result.history[-1]["val_acc"],
        "seconds": result.seconds,
    }


def run(recipes: Sequence[str], *, n_train: int, n_val: int, n_test: int, size: int,
        epochs: int, batch_size: int, seed: int, pretrained: bool, device: str,
        synthetic_ok: bool, variants: Sequence[dict[str, float]] = ({},)) -> dict[str, Any]:
    """Run every recipe of ``recipes`` on the same model, data and budget; return the record."""
    loaders, source, counts = _loaders(n_train=n_train, n_val=n_val, n_test=n_test, size=size,
                                       batch_size=batch_size, seed=seed,
                                       synthetic_ok=synthetic_ok)
    base, pretrained = _model(pretrained, seed)
    rows = []
    runs = [(name, options) for name in recipes for options in variants]
    for i, (name, options) in enumerate(runs, 1):
        log.info("run %d/%d: %s %s", i, len(runs), name, variant_name(options))
        rows.append(_recipe_run(base, name, loaders, epochs=epochs, seed=seed, device=device,
                                options=options))
        log.info("%s %s: test acc %.4f in %.1f s", name, rows[-1]["variant"],
                 rows[-1]["test_acc"], rows[-1]["seconds"])
    return {"model": MODEL, "pretrained": pretrained, "data": source, "n_train": counts[0],
            "n_val": counts[1], "n_test": counts[2], "size": size, "epochs": epochs,
            "batch_size": batch_size, "seed": seed, "device": device,
            "channels_last": torch.device(device).type == "cpu",
            "variants": [variant_name(v) for v in variants], "rows": rows, **machine()}


def print_table(r: dict[str, Any]) -> None:
    """Print the budget, then one row per recipe in the order they ran."""
    weights = "ImageNet weights" if r["pretrained"] else "random init"
    load = f"{r['load_avg']:.1f}" if r["load_avg"] is not None else "n/a"
    print(f"Budget per recipe: {r['epochs']} epoch(s) (lp_ft: epochs // 2 probe, then "
          f"fine-tune), {r['n_train']} train / {r['n_val']} val / {r['n_test']} test images "
          f"({r['data']}), {r['size']} px, batch {r['batch_size']}, seed {r['seed']}, each "
          f"recipe's default LRs; {r['model']} ({weights}), a fresh copy per recipe; "
          f"{r['device']}{', channels-last' if r['channels_last'] else ''}.")
    print(f"Machine: {r['cpu']}, {r['cpus']} CPUs, torch threads {r['torch_threads']}, "
          f"load average {load}; {r['date']}. One run per recipe. test acc: the last "
          "epoch's model; fine_tune s: the whole call, feature extraction included.")
    varied = any(row["variant"] != "baseline" for row in r["rows"])
    width = max([len("variant")] + [len(row["variant"]) for row in r["rows"]])
    head = f" | {'variant':<{width}}" if varied else ""
    print(f"{'recipe':<13}{head} | {'epochs':>6} | {'trainable':>18} | {'test acc':>8} | "
          f"{'best val':>8} | {'last val':>8} | {'fine_tune s':>11}")
    for row in r["rows"]:
        epochs = (f"{row['probe_epochs']}+{row['epochs'] - row['probe_epochs']}"
                  if row["recipe"] == "lp_ft" else str(row["epochs"]))
        share = 100 * row["trainable_params"] / row["total_params"]
        trainable = f"{row['trainable_params']:,} ({share:.1f}%)"
        variant = f" | {row['variant']:<{width}}" if varied else ""
        print(f"{row['recipe']:<13}{variant} | {epochs:>6} | {trainable:>18} | "
              f"{row['test_acc']:>8.4f} | "
              f"{row['best_val_acc']:>8.4f} | {row['last_val_acc']:>8.4f} | "
              f"{row['seconds']:>11.1f}")
    print("trainable: parameters with requires_grad when fine_tune returns, of "
          f"{r['rows'][0]['total_params']:,}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; return the result record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="64 train / 32 val / 32 test at 16 px, 2 epochs: seconds (tests)")
    parser.add_argument("--recipes", default=None,
                        help="comma-separated recipe names (default: all, in list_recipes() "
                             "order)")
    parser.add_argument("--n-train", type=int, default=None, help="default 4000")
    parser.add_argument("--n-val", type=int, default=None, help="default 1000")
    parser.add_argument("--n-test", type=int, default=None, help="default 2000")
    parser.add_argument("--size", type=int, default=None, help="image size (px), default 32")
    parser.add_argument("--epochs", type=int, default=None, help="default 3")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-pretrained", action="store_true", help="random init")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--variants", default=None,
                        help="';'-separated Trainer options run for each recipe, e.g. "
                             "'baseline;mixup=0.2;cutmix=1.0;label_smoothing=0.1'")
    args = parser.parse_args(argv)
    try:
        variants = parse_variants(args.variants)
    except ValueError as exc:
        parser.error(str(exc))
    known = tk.list_recipes()
    recipes = known if args.recipes is None else [s.strip() for s in args.recipes.split(",")]
    for name in recipes:
        if name not in known:
            parser.error(f"unknown recipe {name!r}; valid: {', '.join(known)}."
                         + closest(name, known))
    if len(set(recipes)) != len(recipes):
        parser.error(f"--recipes names a recipe twice: {args.recipes!r}")
    defaults = {"n_train": (64, 4000), "n_val": (32, 1000), "n_test": (32, 2000),
                "size": (16, 32), "epochs": (2, 3)}  # name -> (--quick, full run)
    settings = {key: quick if args.quick else full for key, (quick, full) in defaults.items()}
    settings.update({key: getattr(args, key) for key in defaults
                     if getattr(args, key) is not None})
    for key in (*settings, "batch_size", "threads"):
        value = settings[key] if key in settings else getattr(args, key)
        if value < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if "lp_ft" in recipes and settings["epochs"] < 2:
        parser.error("recipe lp_ft needs --epochs >= 2 (probe, then fine-tune); "
                     "raise --epochs or leave lp_ft out of --recipes")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    result = run(recipes, **settings, batch_size=args.batch_size, seed=args.seed,
                 pretrained=not args.no_pretrained, device=args.device, synthetic_ok=args.quick,
                 variants=variants)
    print_table(result)
    print_result(result)
    return result


if __name__ == "__main__":
    main()
