"""Images/s of the seed notebook's FashionMNIST loader vs transferkit's TensorLoader.

The seed loader is torchvision's ``FashionMNIST.__getitem__`` (a PIL image per sample,
``Resize`` when a size is asked for, then ``ToTensor``) behind a
``torch.utils.data.DataLoader(batch_size=64, shuffle=True)`` with the default
``num_workers=0``, exactly as in the seed notebook. transferkit's loader serves the same
uint8 images, resized per batch with antialiasing. Both are timed side by side in one run
over the same number of batches, after three warm-up batches each, several times, interleaved
(the machine may be shared), and the median images/s is reported.

Usage::

    python benchmarks/data_pipeline.py            # 28 and 224 px, median of 5 x 100 batches
    python benchmarks/data_pipeline.py --quick    # a few batches, synthetic data (tests)

The last line printed is a JSON record of the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transferkit.pipeline import Augment, TensorLoader  # after sys.path: run as a script

BATCH_SIZE = 64  # the seed notebook's
WARMUP = 3  # batches drawn before timing starts, for every loader alike


def _images(synthetic: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    if not synthetic:
        from transferkit.errors import DataNotFoundError
        from transferkit.fashion_mnist import fashion_mnist

        try:
            data = fashion_mnist(offline=True)
            return data.train_images, data.train_labels, data.source
        except DataNotFoundError:
            pass
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60000, 28, 28), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (60000,), generator=g), "synthetic"


def seed_loader(images: torch.Tensor, labels: torch.Tensor, size: int) -> Iterable:
    """Build the seed notebook's loader on in-memory images (torchvision's own __getitem__)."""
    import torchvision
    from torchvision.datasets import FashionMNIST

    class InMemoryFashionMNIST(FashionMNIST):
        def __init__(self, data: torch.Tensor, targets: torch.Tensor, transform) -> None:
            # Skip the file handling; __getitem__ is torchvision's, unchanged.
            self.data, self.targets = data, targets
            self.transform, self.target_transform = transform, None

    trans = []
    if size != images.shape[-1]:
        trans.append(torchvision.transforms.Resize(size=size))
    trans.append(torchvision.transforms.ToTensor())
    dataset = InMemoryFashionMNIST(images, labels, torchvision.transforms.Compose(trans))
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)


def _rate(loader: Iterable, batches: int, device: torch.device) -> float:
    iterator = iter(loader)
    for _ in range(WARMUP):  # first batches pay one-off costs (allocator, kernels, threads)
        next(iterator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        x, _ = next(iterator)
        count += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def run(
    sizes: Sequence[int], batches: int, repeats: int, device: torch.device, synthetic: bool
) -> dict:
    """Time the loaders at every size, interleaved; return median images/s and ratios."""
    images, labels, source = _images(synthetic)
    rows = []
    for size in sizes:
        loaders = {
            "seed": (seed_loader(images, labels, size), torch.device("cpu")),
            "ours": (TensorLoader(images, labels, batch_size=BATCH_SIZE, shuffle=True,
                                  image_size=size, device=device), device),
            # The full training transform: also normalisation, crop, flip and erasing.
            "ours_aug": (TensorLoader(images, labels, batch_size=BATCH_SIZE, shuffle=True,
                                      image_size=size, mean=(0.2860,), std=(0.3530,),
                                      augment=Augment(crop_padding=4, hflip=0.5, erase=0.25),
                                      device=device), device),
        }
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(repeats):  # interleaved, so load from other work hits all alike
            for name, (loader, dev) in loaders.items():
                rates[name].append(_rate(loader, batches, dev))
        med = {name: statistics.median(values) for name, values in rates.items()}
        rows.append({"size": size, "seed_img_s": med["seed"], "ours_img_s": med["ours"],
                     "ours_aug_img_s": med["ours_aug"], "ratio": med["ours"] / med["seed"],
                     "ratio_aug": med["ours_aug"] / med["seed"]})
    return {
        "rows": rows, "batches": batches, "repeats": repeats, "batch_size": BATCH_SIZE,
        "data": source, "device": str(device), "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
    }


def _print_table(result: dict) -> None:
    print(f"data: {result['data']}; median of {result['repeats']} runs of {result['batches']} "
          f"batches of {result['batch_size']}; device {result['device']}; "
          f"{result['cpus']} CPUs, torch threads {result['torch_threads']}")
    print(f"{'size':>5} | {'seed loader':>12} | {'TensorLoader':>12} | {'ratio':>6} | "
          f"{'+norm+aug':>10} | {'ratio':>6}")
    for r in result["rows"]:
        print(f"{r['size']:>5} | {r['seed_img_s']:>12,.0f} | {r['ours_img_s']:>12,.0f} | "
              f"{r['ratio']:>5.1f}x | {r['ours_aug_img_s']:>10,.0f} | {r['ratio_aug']:>5.1f}x")


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from the command line; return the result record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 batches per measurement on synthetic data (for tests)")
    parser.add_argument("--batches", type=int, default=None, help="batches per run (default 100)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per loader (default 5)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--device", default="cpu", help="device of TensorLoader's batches")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for both loaders (default: torch's)")
    parser.add_argument("--synthetic", action="store_true",
                        help="random images instead of FashionMNIST")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = args.batches or (3 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 5)
    result = run(args.sizes, batches, repeats, torch.device(args.device),
                 args.synthetic or args.quick)
    _print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
