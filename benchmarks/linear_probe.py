"""Linear probe: features cached once vs the frozen body run every epoch.

Both runs are ``fine_tune(model, train, val, recipe="linear_probe")`` on the same
pretrained ``efficientnet_lite0`` (ImageNet weights from the pip package), the same
FashionMNIST subset, the same batch order and optimizer; one with ``cache_features=True``
(extract the head's inputs once, train the head on them), one with
``cache_features=False`` (every epoch runs the frozen body, in eval mode, over the train
and val images). Reported: wall time of each (extraction included), the time of one
epoch after extraction, the speed-up, the final val accuracy of each and the difference.

Usage::

    python benchmarks/linear_probe.py             # 4000 train / 1000 val, 32 px, 5 epochs
    python benchmarks/linear_probe.py --quick     # a tiny subset, 1 epoch (tests)
    python benchmarks/linear_probe.py --sweep-lr 1e-3 1e-2 1e-1   # probe LR, cached only

The last line printed is a JSON record of the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transferkit.errors import DataNotFoundError, WeightsError  # after sys.path: a script
from transferkit.features import FeatureLoader, HeadOnFeatures, extract_features
from transferkit.pipeline import TensorLoader
from transferkit.recipes import fine_tune
from transferkit.registry import create
from transferkit.trainer import Trainer

MODEL = "efficientnet_lite0"


def _data(n_train: int, n_val: int) -> tuple[torch.Tensor, ...]:
    try:
        from transferkit.fashion_mnist import fashion_mnist

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
    except WeightsError:  # no weights installed: still compare the two ways
        return create(MODEL, 10, in_chans=1, pretrained=False), False


def run(*, n_train: int, n_val: int, size: int, epochs: int, batch_size: int,
        pretrained: bool) -> dict:
    """Probe the same model both ways; return times, accuracies and ratios."""
    x, y, vx, vy, source = _data(n_train, n_val)
    model, pretrained = _model(pretrained)
    mean, std = (0.2860,), (0.3530,)
    loaders = [
        TensorLoader(x, y, batch_size=batch_size, shuffle=True, image_size=size, mean=mean,
                     std=std, seed=0),
        TensorLoader(vx, vy, batch_size=256, image_size=size, mean=mean, std=std),
    ]
    runs = {}
    for name, cache in (("cached", True), ("slow", False)):
        result = fine_tune(copy.deepcopy(model), *loaders, recipe="linear_probe", epochs=epochs,
                           device="cpu", cache_features=cache, progress=False)
        epoch_times = [r["time"] for r in result.history]
        runs[name] = {"seconds": result.seconds, "val_acc": result.history[-1]["val_acc"],
                      "epoch_s": sum(epoch_times) / len(epoch_times)}
    cached, slow = runs["cached"], runs["slow"]
    return {
        "model": MODEL, "pretrained": pretrained, "data": source, "n_train": len(y),
        "n_val": len(vy), "size": size, "epochs": epochs, "batch_size": batch_size,
        "cached_s": cached["seconds"], "slow_s": slow["seconds"],
        "speedup": slow["seconds"] / cached["seconds"],
        "cached_epoch_s": cached["epoch_s"], "slow_epoch_s": slow["epoch_s"],
        "epoch_speedup": slow["epoch_s"] / cached["epoch_s"],
        "cached_acc": cached["val_acc"], "slow_acc": slow["val_acc"],
        "acc_diff": cached["val_acc"] - slow["val_acc"],
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
    }


def sweep(lrs: Sequence[float], *, n_train: int, n_val: int, size: int, epochs: int,
          batch_size: int, pretrained: bool) -> dict:
    """Extract features once, then probe at every LR (the recipe's optimizer and schedule)."""
    x, y, vx, vy, source = _data(n_train, n_val)
    model, pretrained = _model(pretrained)
    mean, std = (0.2860,), (0.3530,)
    feats, labels = extract_features(model, TensorLoader(x, y, batch_size=256, image_size=size,
                                                         mean=mean, std=std))
    vfeats, vlabels = extract_features(model, TensorLoader(vx, vy, batch_size=256,
                                                           image_size=size, mean=mean, std=std))
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


def _print_table(r: dict) -> None:
    weights = "ImageNet weights" if r["pretrained"] else "random init"
    print(f"{r['model']} ({weights}), {r['data']} {r['n_train']} train / {r['n_val']} val at "
          f"{r['size']} px, {r['epochs']} epoch(s), batch {r['batch_size']}; CPU, "
          f"{r['cpus']} CPUs, torch threads {r['torch_threads']}")
    print(f"{'probe':<22} | {'total s':>8} | {'s/epoch':>8} | {'val acc':>7}")
    print(f"{'cached features':<22} | {r['cached_s']:>8.1f} | {r['cached_epoch_s']:>8.3f} | "
          f"{r['cached_acc']:>7.4f}")
    print(f"{'frozen body each epoch':<22} | {r['slow_s']:>8.1f} | {r['slow_epoch_s']:>8.3f} | "
          f"{r['slow_acc']:>7.4f}")
    print(f"speed-up: {r['speedup']:.1f}x total (extraction included), "
          f"{r['epoch_speedup']:.0f}x per epoch after extraction; "
          f"accuracy difference {100 * r['acc_diff']:+.2f} points")


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from the command line; return the result record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 train / 32 val, 1 epoch")
    parser.add_argument("--n-train", type=int, default=None, help="default 4000")
    parser.add_argument("--n-val", type=int, default=None, help="default 1000")
    parser.add_argument("--size", type=int, default=32, help="image size (px)")
    parser.add_argument("--epochs", type=int, default=None, help="default 5")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-pretrained", action="store_true", help="random init")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--sweep-lr", type=float, nargs="+", default=None,
                        help="only probe on cached features at each of these LRs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {
        "n_train": args.n_train or (64 if args.quick else 4000),
        "n_val": args.n_val or (32 if args.quick else 1000),
        "size": args.size, "epochs": args.epochs or (1 if args.quick else 5),
        "batch_size": args.batch_size, "pretrained": not args.no_pretrained,
    }
    if args.sweep_lr:
        result = sweep(args.sweep_lr, **kwargs)
        print(f"{'lr':>8} | {'val acc':>7} | {'best':>7}")
        for row in result["sweep"]:
            print(f"{row['lr']:>8.0e} | {row['val_acc']:>7.4f} | {row['best_val_acc']:>7.4f}")
    else:
        result = run(**kwargs)
        _print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
