"""EMA of the weights and test-time augmentation on one budget: test accuracy and time.

For each seed of ``--seeds``, two arms train a fresh copy of the same pretrained
``efficientnet_lite0`` (ImageNet weights from the pip package, 1 input channel, the new
head drawn from the seed) with ``fine_tune(recipe="full")`` on the same FashionMNIST
subset, as ``transferkit train`` does (tensors in: ``fine_tune`` chooses the batch size and
the ``light`` augmentation, shifts by pad-and-crop):

- ``plain``: ``ema=None``; ``ema``: ``ema=--ema`` (warmed-up decay). Both end with the
  best epoch's weights by ``val_loss`` (the average's for ``ema``): "final" below.
- The test split is evaluated once per arm with each test-time augmentation of
  ``TTA_MODES`` (none, flip, crops, flip+crops), timed.
- From ``last.pt``, the last step's weights two ways: the live weights and their average
  (``ModelEma``: parameters averaged, BatchNorm statistics copied from the live model).
  Until commit c609541 ``ModelEma`` averaged the statistics too and this benchmark
  evaluated both; that run is quoted in docs/trainer.md.
- Per class, the change of test accuracy that flips bring (FashionMNIST's shoes all
  face one way).

Usage::

    python benchmarks/ema_tta.py                       # 4000/1000/2000 images, 32 px, 5 epochs
    python benchmarks/ema_tta.py --seeds 0,1,2
    python benchmarks/ema_tta.py --quick               # seconds (tests)

One intra-op thread unless ``--threads``. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import load_data, machine, markdown_table, print_result, subset

import transferkit as tk  # after _common: it puts the repository root on sys.path
from transferkit.data import TensorLoader, stratified_val_mask
from transferkit.train import TTA_MODES, Trainer
from transferkit.train.checkpoint import load_checkpoint

MODEL = "efficientnet_lite0"
CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Boot")


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return (probs.argmax(-1) == labels).float().mean().item()


def per_class(probs: torch.Tensor, labels: torch.Tensor) -> list[float]:
    hit = probs.argmax(-1) == labels
    return [hit[labels == c].float().mean().item() for c in range(10)]


def test_probs(model: torch.nn.Module, loader: TensorLoader, tta: str) -> torch.Tensor:
    return Trainer(model, device="cpu", progress=False, channels_last=True).predict(
        loader, tta=tta)


def last_step(model: torch.nn.Module, folder: Path, loader: TensorLoader,
              labels: torch.Tensor) -> dict[str, float]:
    """Test accuracy of the last step's live weights and of their average."""
    state = load_checkpoint(folder / "finetune" / "last.pt")
    net = copy.deepcopy(model)
    out = {}
    net.load_state_dict(state["model"])
    out["last_live_acc"] = accuracy(test_probs(net, loader, "none"), labels)
    if state.get("ema") is not None:
        net.load_state_dict(state["ema"]["model"])
        out["last_ema_acc"] = accuracy(test_probs(net, loader, "none"), labels)
    return out


def run_arm(arm: str, seed: int, args: argparse.Namespace, splits: dict[str, Any]) -> dict:
    torch.manual_seed(seed)  # the new head's draw: the same in both arms
    model = tk.create(MODEL, 10, in_chans=1, pretrained=not args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = tk.fine_tune(model, splits["train"], splits["val"], recipe="full",
                              epochs=args.epochs, image_size=args.size, device="cpu",
                              seed=seed, out_dir=tmp, progress=False,
                              ema=args.ema if arm == "ema" else None)
        row: dict[str, Any] = {"seed": seed, "arm": arm, "fit_s": time.perf_counter() - start}
        history = result.history
        best = min(history, key=lambda r: r["val_loss"])
        row.update(best_epoch=best["epoch"], best_val_acc=best["val_acc"],
                   steps=result.trainer.step)
        info = tk.get_info(model)
        images, labels = splits["test"]
        loader = TensorLoader(images, labels, batch_size=256, image_size=args.size,
                              mean=info.mean, std=info.std, num_classes=10)
        for mode in TTA_MODES:
            start = time.perf_counter()
            probs = test_probs(model, loader, mode)
            row[f"test_{mode}"] = accuracy(probs, labels)
            row[f"test_{mode}_s"] = time.perf_counter() - start
            row[f"class_{mode}"] = per_class(probs, labels)
        row.update(last_step(model, Path(tmp), loader, labels))
    print(f"  seed {seed} {arm}: test {row['test_none']:.4f} (flip {row['test_flip']:.4f}, "
          f"flip+crops {row['test_flip+crops']:.4f}) in {row['fit_s']:.0f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="64/32/32 images at 16 px, 2 epochs, no pretrained weights (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_val, args.n_test, args.size, args.epochs = 64, 32, 32, 16, 2
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    data = load_data(args.data_root, synthetic_ok=args.quick)
    env = machine()
    print(f"ema_tta: data {data.source}; {env['cpu']}, {env['cpus']} CPUs, torch "
          f"{env['torch']}, {env['torch_threads']} threads; load {env['load_avg']}", flush=True)
    images, labels = subset(data.train_images, data.train_labels, args.n_train + args.n_val)
    mask = stratified_val_mask(labels, 10, args.n_val / (args.n_train + args.n_val), 0)
    splits = {"train": (images[~mask].unsqueeze(1), labels[~mask]),
              "val": (images[mask].unsqueeze(1), labels[mask]),
              "test": subset(data.test_images.unsqueeze(1), data.test_labels, args.n_test)}
    rows = [run_arm(arm, int(seed), args, splits)
            for seed in args.seeds.split(",") for arm in ("plain", "ema")]
    columns = [("seed", "seed"), ("arm", "arm"), ("fit_s", "fit s"),
               ("best_epoch", "best epoch"), ("best_val_acc", "val acc"),
               *[(f"test_{m}", f"test {m}") for m in TTA_MODES],
               ("test_flip+crops_s", "flip+crops s"), ("test_none_s", "none s"),
               ("last_live_acc", "last: live"), ("last_ema_acc", "last: EMA")]
    print(markdown_table(rows, columns))
    flip = [sum(r["class_flip"][c] - r["class_none"][c] for r in rows) / len(rows)
            for c in range(10)]
    print("flip - none, test accuracy per class (mean over rows): " + ", ".join(
        f"{name} {d:+.3f}" for name, d in zip(CLASSES, flip)))
    result = {"benchmark": "ema_tta", "model": MODEL, "n_train": int((~mask).sum()),
              "n_val": int(mask.sum()), "n_test": len(splits["test"][1]), "size": args.size,
              "epochs": args.epochs, "ema": args.ema, "data": data.source, "rows": rows,
              "flip_minus_none_per_class": dict(zip(CLASSES, flip)), **env,
              "load_avg_end": machine()["load_avg"]}
    print_result(result)
    return result


if __name__ == "__main__":
    main()
