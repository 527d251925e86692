"""Mixup and CutMix on a batch: torchvision ``transforms.v2`` against timm's ``Mixup``.

Times one call on a batch already on the device (the Trainer mixes after moving a batch
there): torchvision's ``MixUp``, ``CutMix`` and ``RandomChoice([MixUp, CutMix])`` (what
``Trainer(mixup=..., cutmix=...)`` runs) against timm's ``Mixup`` in ``mode="batch"`` with
the same alphas and no label smoothing. Each call gets a fresh copy of the batch, made
outside the timed region (timm mixes in place). Also checks what each takes: an odd batch
size (the last batch of an epoch) and ``(N, C)`` multi-hot targets (timm's object built
for class indices, as here, returns targets of the wrong shape for them: it needs its own
``multi_label=True`` object).

Usage::

    python benchmarks/mixing.py                 # batches 64x3x224x224 and 256x1x32x32, CPU
    python benchmarks/mixing.py --device cuda
    python benchmarks/mixing.py --quick         # tiny batches, 3 repeats (tests)

The median of ``--repeats`` calls after 2 warm-up calls; the last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from _common import machine, print_result


def _methods(num_classes: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]:
    from timm.data import Mixup
    from torchvision.transforms import v2

    mixup = v2.MixUp(alpha=0.2, num_classes=num_classes)
    cutmix = v2.CutMix(alpha=1.0, num_classes=num_classes)

    def timm(mixup_alpha: float, cutmix_alpha: float) -> Any:
        return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=0.0,
                     num_classes=num_classes, mode="batch")

    return {
        "torchvision MixUp": mixup,
        "torchvision CutMix": cutmix,
        "torchvision RandomChoice": v2.RandomChoice([mixup, cutmix]),
        "timm Mixup (mixup)": timm(0.2, 0.0),
        "timm Mixup (cutmix)": timm(0.0, 1.0),
        "timm Mixup (both)": timm(0.2, 1.0),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[..., Any], x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``fn(copy of x, y)`` over ``repeats`` calls (2 warm-up calls)."""
    times = []
    for i in range(repeats + 2):
        xb = x.clone()
        _sync(x.device)
        start = time.perf_counter()
        fn(xb, y)
        _sync(x.device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def accepts(fn: Callable[..., Any], x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``fn`` mixes this batch into images and ``(N, C)`` targets of the right shape."""
    try:
        mixed, targets = fn(x.clone(), y)
    except (AssertionError, ValueError, RuntimeError):
        return False
    return mixed.shape == x.shape and tuple(targets.shape) == (x.shape[0], 10)


def run(shapes: Sequence[tuple[int, int, int, int]], *, repeats: int, device: str,
        num_classes: int = 10) -> dict[str, Any]:
    """Time every method on a batch of each shape; return the record."""
    dev = torch.device(device)
    torch.manual_seed(0)
    methods = _methods(num_classes)
    rows = []
    for shape in shapes:
        x = torch.randn(*shape, device=dev)
        y = torch.randint(0, num_classes, (shape[0],), device=dev)
        odd = (x[:-1], y[:-1])
        hot = (x, (torch.rand(shape[0], num_classes, device=dev) < 0.3).float())
        for name, fn in methods.items():
            rows.append({"shape": list(shape), "method": name,
                         "ms": 1000 * time_call(fn, x, y, repeats),
                         "odd_batch": accepts(fn, *odd), "multi_hot": accepts(fn, *hot)})
    return {"device": str(dev), "repeats": repeats, "rows": rows, **machine()}


def print_table(r: dict[str, Any]) -> None:
    """One line per (batch shape, method)."""
    load = f"{r['load_avg']:.1f}" if r["load_avg"] is not None else "n/a"
    print(f"Machine: {r['cpu']}, {r['cpus']} CPUs, torch threads {r['torch_threads']}, load "
          f"average {load}; {r['date']}; device {r['device']}; median of {r['repeats']} calls.")
    print(f"{'batch':<16} | {'method':<24} | {'ms/call':>8} | odd batch | (N, C) targets")
    for row in r["rows"]:
        shape = "x".join(map(str, row["shape"]))
        print(f"{shape:<16} | {row['method']:<24} | {row['ms']:>8.2f} | "
              f"{'yes' if row['odd_batch'] else 'NO':<9} | {'yes' if row['multi_hot'] else 'NO'}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; return the result record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny batches, 3 repeats (tests)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    shapes = [(8, 3, 16, 16)] if args.quick else [(64, 3, 224, 224), (256, 1, 32, 32)]
    result = run(shapes, repeats=3 if args.quick else args.repeats, device=args.device)
    print_table(result)
    print_result(result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
