"""Linear probe: features cached once vs the frozen body run every epoch, side by side.

Three runs of ``fine_tune(model, train, val, recipe="linear_probe")`` on the same
pretrained ``efficientnet_lite0`` (ImageNet weights from the pip package), the same
FashionMNIST subset, the same batch order, optimizer and schedule:

- **(a)** ``cache_features=False``: the frozen body runs every epoch (in eval mode) over
  the train and val images, as the Trainer runs it by default (channels-first);
- **(b)** the same with ``channels_last=True``, the speed option that feature extraction
  uses on the CPU (the training batch is the optimization's, so it stays as it is);
- **(c)** ``cache_features=True`` (the default): extract the head's inputs once
  (``transferkit.recipes.cache_inputs``, channels-last and batches of
  ``extraction_batch_size`` on the CPU), then train the head on them.

Reported: each run's wall time, (c) split into extraction and head epochs, the time per
epoch, the ratios (a)/(c) and (b)/(c) per repeat (median and range over ``--repeats``,
run in alternating order), the upper bounds of those ratios (the cached probe can never
take less than its extraction, so (x)/(c) <= (x)/t_extract), and every val accuracy.

``--extraction`` times feature extraction alone under each option (channels-last on or
off, the loader's batch or the automatic one), interleaved, and checks the features agree.

Usage::

    python benchmarks/linear_probe.py             # 4000 train / 1000 val, 32 px, 5 epochs
    python benchmarks/linear_probe.py --quick     # a tiny subset, 1 epoch (tests)
    python benchmarks/linear_probe.py --extraction --size 32    # extraction options alone
    python benchmarks/linear_probe.py --sweep-lr 1e-3 1e-2 1e-1   # probe LR, cached only

All runs use ``torch.set_num_threads(1)`` unless ``--threads N`` (see docs/benchmarks.md).
The last line printed is a JSON record of the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _common

from _common import machine

import transferkit.recipes as recipes  # after sys.path: a script
from transferkit.backbones import create
from transferkit.data import TensorLoader
from transferkit.errors import DataNotFoundError, WeightsError
from transferkit.recipes import FeatureLoader, HeadOnFeatures, extract_features
from transferkit.train import Trainer

MODEL = "efficientnet_lite0"
MEAN, STD = (0.2860,), (0.3530,)
PROBES = {  # name -> (label, fine_tune keyword arguments)
    "a": ("(a) frozen body, Trainer default", {"cache_features": False}),
    "b": ("(b) frozen body, channels-last", {"cache_features": False, "channels_last": True}),
    "c": ("(c) cached features", {"cache_features": True}),
}


def _data(n_train: int, n_val: int) -> tuple[Any, ...]:
    try:
        from transferkit.data import fashion_mnist

        d = fashion_mnist(offline=True)
        return (d.train_images[:n_train], d.train_labels[:n_train], d.test_images[:n_val],
                d.test_labels[:n_val], "FashionMNIST")
    except DataNotFoundError:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n_train + n_val, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n_train + n_val,), generator=g)
        return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], "synthetic"


def _model(pretrained: bool) -> tuple[torch.nn.Module, bool]:
    torch.manual_seed(0)
    try:
        return create(MODEL, 10, in_chans=1, pretrained=pretrained), pretrained
    except WeightsError:  # no weights installed: still compare the three ways
        print(f"no {MODEL} weights installed: random init", file=sys.stderr)
        return create(MODEL, 10, in_chans=1, pretrained=False), False


def _probe(name: str, model: torch.nn.Module, loaders: list[TensorLoader],
           epochs: int) -> dict[str, Any]:
    """Run probe ``name`` on a copy of ``model``; return its times and accuracy."""
    result = recipes.fine_tune(copy.deepcopy(model), *loaders, recipe="linear_probe",
                               epochs=epochs, device="cpu", progress=False, **PROBES[name][1])
    if name == "c" and not result.timings["cache_s"] > 0:
        raise RuntimeError("the cached probe cached nothing: has transferkit.recipes changed?")
    epoch_times = [r["time"] for r in result.history]
    return {"seconds": result.seconds, "extract_s": result.timings["cache_s"],
            "epochs_s": sum(epoch_times), "epoch_s": sum(epoch_times) / len(epoch_times),
            "val_acc": result.history[-1]["val_acc"]}


def run(*, n_train: int, n_val: int, size: int, epochs: int, batch_size: int,
        pretrained: bool, repeats: int) -> dict[str, Any]:
    """Probe the same model the three ways, ``repeats`` times; return times and ratios."""
    x, y, vx, vy, source = _data(n_train, n_val)
    model, pretrained = _model(pretrained)
    loaders = [
        TensorLoader(x, y, batch_size=batch_size, shuffle=True, image_size=size, mean=MEAN,
                     std=STD, seed=0),
        TensorLoader(vx, vy, batch_size=256, image_size=size, mean=MEAN, std=STD),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PROBES}
    for r in range(repeats):
        for name in (list(PROBES) if r % 2 == 0 else list(PROBES)[::-1]):
            runs[name].append(_probe(name, model, loaders, epochs))
            logging.info("repeat %d, %s: %.1f s", r + 1, PROBES[name][0], runs[name][-1]["seconds"])

    def med(name: str, key: str) -> float:
        return statistics.median(row[key] for row in runs[name])

    record: dict[str, Any] = {
        "model": MODEL, "pretrained": pretrained, "data": source, "n_train": len(y),
        "n_val": len(vy), "size": size, "epochs": epochs, "batch_size": batch_size,
        "repeats": repeats,
    }
    for name in PROBES:
        record[f"{name}_s"] = med(name, "seconds")
        record[f"{name}_epoch_s"] = med(name, "epoch_s")
        record[f"{name}_acc"] = runs[name][0]["val_acc"]
        record[f"{name}_accs"] = [row["val_acc"] for row in runs[name]]
    record["c_extract_s"] = med("c", "extract_s")
    record["c_epochs_s"] = med("c", "epochs_s")
    record["c_other_s"] = record["c_s"] - record["c_extract_s"] - record["c_epochs_s"]
    for slow in ("a", "b"):
        # Ratios per repeat (runs made at about the same time), then their median.
        ratios = [s["seconds"] / c["seconds"] for s, c in zip(runs[slow], runs["c"], strict=True)]
        bounds = [s["seconds"] / c["extract_s"] for s, c in zip(runs[slow], runs["c"],
                                                                 strict=True)]
        record[f"ratio_{slow}_c"] = statistics.median(ratios)
        record[f"ratios_{slow}_c"] = ratios
        record[f"bound_{slow}_c"] = statistics.median(bounds)
        record[f"extract_in_{slow}_epochs"] = record["c_extract_s"] / record[f"{slow}_epoch_s"]
        record[f"acc_diff_c_{slow}"] = record["c_acc"] - record[f"{slow}_acc"]
    record.update(machine())
    return record


def extraction(*, n_train: int, size: int, batch_size: int, pretrained: bool,
               repeats: int) -> dict[str, Any]:
    """Time extraction alone under each option, interleaved; compare the features."""
    x, y, _, _, source = _data(n_train, 0)
    model, pretrained = _model(pretrained)
    loader = TensorLoader(x, y, batch_size=batch_size, image_size=size, mean=MEAN, std=STD)
    variants = {  # name -> extract_features keyword arguments
        "channels-first, loader batch": {"channels_last": False, "batch_size": batch_size},
        "channels-last, loader batch": {"channels_last": True, "batch_size": batch_size},
        "channels-first, auto batch": {"channels_last": False},
        "default (channels-last, auto batch)": {},
    }
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    reference, _ = extract_features(model, loader, **variants[names[0]])
    max_diff: dict[str, float] = {}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            feats, _ = extract_features(model, loader, **variants[name])
            times[name].append(time.perf_counter() - start)
            max_diff[name] = float((feats - reference).abs().max())
    base = times[names[0]]
    rows = [{"variant": name, "seconds": statistics.median(times[name]),
             "img_s": len(y) / statistics.median(times[name]),
             "speedup": statistics.median(b / t for b, t in zip(base, times[name], strict=True)),
             "max_abs_diff": max_diff[name], **variants[name]} for name in names]
    return {"model": MODEL, "pretrained": pretrained, "data": source, "n_train": len(y),
            "size": size, "loader_batch_size": batch_size, "repeats": repeats,
            "feature_scale": float(reference.abs().max()), "rows": rows, **machine()}


def sweep(lrs: Sequence[float], *, n_train: int, n_val: int, size: int, epochs: int,
          batch_size: int, pretrained: bool) -> dict[str, Any]:
    """Extract features once, then probe at every LR (the recipe's optimizer and schedule)."""
    x, y, vx, vy, source = _data(n_train, n_val)
    model, pretrained = _model(pretrained)
    feats, labels = extract_features(model, TensorLoader(x, y, batch_size=256, image_size=size,
                                                         mean=MEAN, std=STD))
    vfeats, vlabels = extract_features(model, TensorLoader(vx, vy, batch_size=256,
                                                           image_size=size, mean=MEAN, std=STD))
    rows = []
    for lr in lrs:
        probe = HeadOnFeatures(copy.deepcopy(model), (feats.shape[1],))
        history = Trainer(probe, epochs=epochs, lr=lr, device="cpu", progress=False).fit(
            FeatureLoader(feats, labels, batch_size=batch_size, seed=0),
            FeatureLoader(vfeats, vlabels, batch_size=256, shuffle=False),
        )
        rows.append({"lr": lr, "val_acc": history[-1]["val_acc"],
                     "best_val_acc": max(r["val_acc"] for r in history)})
    return {"model": MODEL, "pretrained": pretrained, "data": source, "n_train": len(y),
            "n_val": len(vy), "size": size, "epochs": epochs, "batch_size": batch_size,
            "sweep": rows}


def _header(r: dict[str, Any]) -> str:
    weights = "ImageNet weights" if r["pretrained"] else "random init"
    return (f"{r['model']} ({weights}), {r['data']}, {r['n_train']} train"
            + (f" / {r['n_val']} val" if "n_val" in r else "")
            + f" at {r['size']} px; CPU {r['cpu']}, {r['cpus']} CPUs, torch threads "
            f"{r['torch_threads']}, load average {r['load_avg']:.1f}; {r['date']}; "
            f"{r['repeats']} repeat(s), medians")


def _print_table(r: dict[str, Any]) -> None:
    print(_header(r) + f"; {r['epochs']} epoch(s), batch {r['batch_size']}")
    print(f"{'probe':<33} | {'total s':>8} | {'extract s':>9} | {'epochs s':>8} | "
          f"{'s/epoch':>8} | {'val acc':>7}")
    for name, (label, _) in PROBES.items():
        extract = f"{r['c_extract_s']:>9.1f}" if name == "c" else f"{'-':>9}"
        epochs = f"{r['c_epochs_s']:>8.1f}" if name == "c" else f"{'-':>8}"
        print(f"{label:<33} | {r[name + '_s']:>8.1f} | {extract} | {epochs} | "
              f"{r[name + '_epoch_s']:>8.3f} | {r[name + '_acc']:>7.4f}")
    for slow in ("a", "b"):
        ratios = r[f"ratios_{slow}_c"]
        print(f"({slow})/(c): {r[f'ratio_{slow}_c']:.2f}x total (range {min(ratios):.2f}-"
              f"{max(ratios):.2f}); bound ({slow})/t_extract = {r[f'bound_{slow}_c']:.2f}x "
              f"(extraction = {r[f'extract_in_{slow}_epochs']:.2f} epochs of ({slow})); "
              f"accuracy (c)-({slow}) {100 * r[f'acc_diff_c_{slow}']:+.2f} points")
    print(f"(c) split: extraction {r['c_extract_s']:.1f} s, head epochs {r['c_epochs_s']:.1f} s, "
          f"other {r['c_other_s']:.1f} s")


def _print_extraction(r: dict[str, Any]) -> None:
    print(_header(r) + f"; loader batch {r['loader_batch_size']}")
    print(f"{'extraction':<36} | {'s':>7} | {'img/s':>7} | {'speed-up':>8} | "
          f"{'max |diff|':>10}")
    for row in r["rows"]:
        print(f"{row['variant']:<36} | {row['seconds']:>7.2f} | {row['img_s']:>7.0f} | "
              f"{row['speedup']:>7.2f}x | {row['max_abs_diff']:>10.2e}")
    print(f"(features up to {r['feature_scale']:.2f} in absolute value; speed-up: median of "
          "the per-repeat ratios to the first row)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; return the result record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 train / 32 val, 1 epoch")
    parser.add_argument("--n-train", type=int, default=None,
                        help="default 4000 (--extraction: 1024)")
    parser.add_argument("--n-val", type=int, default=None, help="default 1000")
    parser.add_argument("--size", type=int, default=32, help="image size (px)")
    parser.add_argument("--epochs", type=int, default=None, help="default 5")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each probe, alternating order (default 1; "
                             "--extraction: 3)")
    parser.add_argument("--no-pretrained", action="store_true", help="random init")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--extraction", action="store_true",
                        help="only time feature extraction under each option")
    parser.add_argument("--sweep-lr", type=float, nargs="+", default=None,
                        help="only probe on cached features at each of these LRs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    pretrained = not args.no_pretrained
    if args.extraction:
        result = extraction(n_train=args.n_train or (64 if args.quick else 1024),
                            size=args.size, batch_size=args.batch_size, pretrained=pretrained,
                            repeats=args.repeats or (1 if args.quick else 3))
        _print_extraction(result)
        print(json.dumps(result))
        return result
    kwargs = {
        "n_train": args.n_train or (64 if args.quick else 4000),
        "n_val": args.n_val or (32 if args.quick else 1000),
        "size": args.size, "epochs": args.epochs or (1 if args.quick else 5),
        "batch_size": args.batch_size, "pretrained": pretrained,
    }
    if args.sweep_lr:
        result = sweep(args.sweep_lr, **kwargs)
        print(f"{'lr':>8} | {'val acc':>7} | {'best':>7}")
        for row in result["sweep"]:
            print(f"{row['lr']:>8.0e} | {row['val_acc']:>7.4f} | {row['best_val_acc']:>7.4f}")
    else:
        result = run(**kwargs, repeats=args.repeats or 1)
        _print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
