"""Images/s of the seed notebook's FashionMNIST loader vs transferkit's TensorLoader.

The seed loader is torchvision's ``FashionMNIST.__getitem__`` (a PIL image per sample,
``Resize`` when a size is asked for, then ``ToTensor``) behind a
``torch.utils.data.DataLoader(batch_size=64, shuffle=True)`` with the default
``num_workers=0``, exactly as in the seed notebook. transferkit's loader serves the same
uint8 images, resized per batch with antialiasing.

Both run under the same thread setting: ``torch.set_num_threads(threads)`` for the whole
process (default 1) and ``TensorLoader(num_threads=threads)``. Each repeat times every
loader over the same number of batches, after three warm-up batches each, one after the
other, in an order that alternates between repeats (the machine may be shared, so load
from other processes hits all loaders alike). The ratio is computed per repeat
(``ours / seed`` of the same repeat) and its median, quartiles, minimum and maximum are
reported. Each turn also records the process's CPU time: both loaders run in this process
(``num_workers=0``) on one thread, so the CPU-time ratio is the same comparison with the
time the process spent waiting for a core (other processes on a shared machine) removed.

Usage::

    python benchmarks/data_pipeline.py              # 28 and 224 px, 15 repeats x 40 batches
    python benchmarks/data_pipeline.py --threads 2  # both loaders with 2 torch threads
    python benchmarks/data_pipeline.py --breakdown  # also: where one batch's time goes
    python benchmarks/data_pipeline.py --quick      # a few batches, synthetic data (tests)

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
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transferkit.data import Augment, TensorLoader  # after sys.path: run as a script

BATCH_SIZE = 64  # the seed notebook's
WARMUP = 3  # batches drawn before timing starts, for every loader alike


def _images(synthetic: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    if not synthetic:
        from transferkit.data import fashion_mnist
        from transferkit.errors import DataNotFoundError

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


def _rate(loader: Iterable, batches: int, device: torch.device) -> tuple[float, float]:
    """Return images/s of wall time and images/s of this process's CPU time."""
    iterator = iter(loader)
    for _ in range(WARMUP):  # first batches pay one-off costs (allocator, kernels, threads)
        next(iterator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    count = 0
    for _ in range(batches):
        x, _ = next(iterator)
        count += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return count / wall, count / max(cpu, 1e-9)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(
    sizes: Sequence[int],
    batches: int,
    repeats: int,
    device: torch.device,
    synthetic: bool,
    threads: int = 1,
) -> dict:
    """Time the loaders at every size, interleaved; return images/s and per-repeat ratios."""
    images, labels, source = _images(synthetic)
    load_before = _load()
    rows = []
    for size in sizes:
        common = {"batch_size": BATCH_SIZE, "shuffle": True, "image_size": size,
                  "device": device, "num_threads": threads}
        loaders = {
            "seed": (seed_loader(images, labels, size), torch.device("cpu")),
            "ours": (TensorLoader(images, labels, **common), device),
            # The full training transform: also normalisation, crop, flip and erasing.
            "ours_aug": (TensorLoader(images, labels, mean=(0.2860,), std=(0.3530,),
                                      augment=Augment(crop_padding=4, hflip=0.5, erase=0.25),
                                      **common), device),
        }
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        cpu_rates: dict[str, list[float]] = {name: [] for name in loaders}
        names = list(loaders)
        for r in range(repeats):  # interleaved, order alternating, so load hits all alike
            for name in names if r % 2 == 0 else names[::-1]:
                loader, dev = loaders[name]
                wall_rate, cpu_rate = _rate(loader, batches, dev)
                rates[name].append(wall_rate)
                cpu_rates[name].append(cpu_rate)
        ratios = [o / s for o, s in zip(rates["ours"], rates["seed"], strict=True)]
        cpu_ratios = [o / s for o, s in zip(cpu_rates["ours"], cpu_rates["seed"], strict=True)]
        ratios_aug = [o / s for o, s in zip(rates["ours_aug"], rates["seed"], strict=True)]
        med = {name: statistics.median(values) for name, values in rates.items()}
        rows.append({
            "size": size, "seed_img_s": med["seed"], "ours_img_s": med["ours"],
            "ours_aug_img_s": med["ours_aug"],
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "ratio_quartiles": _quartiles(ratios), "ratios": ratios,
            "cpu_ratio": statistics.median(cpu_ratios), "cpu_ratios": cpu_ratios,
            "ratio_aug": statistics.median(ratios_aug), "ratios_aug": ratios_aug,
        })
    return {
        "rows": rows, "batches": batches, "repeats": repeats, "batch_size": BATCH_SIZE,
        "data": source, "device": str(device), "threads": threads,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
        "load_before": load_before, "load_after": _load(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(), "torch": torch.__version__,
    }


def _quartiles(values: Sequence[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def breakdown(size: int, *, batches: int = 50, channels: int = 1, stored: int = 28) -> dict:
    """Time the stages of one TensorLoader batch at ``size`` px (median ms over ``batches``).

    The stages of a plain batch (no normalisation, no augmentation): gather the uint8
    images, convert to float, the first (height) and second (width) matrix product of the
    resize (skipped, as by the loader, when ``size`` is the stored size), and, as the floor
    that any float32 output must pay, filling a freshly allocated tensor of the output's size.
    """
    from transferkit.data.pipeline import resize_matrix

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4096, channels, stored, stored), generator=g,
                           dtype=torch.uint8)
    idx = torch.randperm(4096, generator=g)[:BATCH_SIZE]
    wh = resize_matrix(stored, size) / 255.0
    ww_t = resize_matrix(stored, size).T.contiguous()
    x8 = images.index_select(0, idx)
    xf = x8.float()
    a = torch.matmul(wh, xf)
    stages = {
        "gather_uint8": lambda: images.index_select(0, idx),
        "to_float": lambda: x8.float(),
        "resize_height": lambda: torch.matmul(wh, xf),
        "resize_width": lambda: torch.matmul(a, ww_t),
        "fill_output": lambda: torch.empty(BATCH_SIZE, channels, size, size).fill_(0.0),
    }
    if size == stored:  # the loader does not resize then
        del stages["resize_height"], stages["resize_width"]
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(3):
        for fn in stages.values():
            fn()
    for _ in range(batches):  # interleaved, like the loaders
        for name, fn in stages.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def _print_table(result: dict) -> None:
    print(f"{result['date']}; data: {result['data']}; {result['repeats']} repeats of "
          f"{result['batches']} batches of {result['batch_size']}; device {result['device']}; "
          f"{result['cpus']} CPUs ({result['cpu']}); torch threads {result['torch_threads']} "
          f"for both loaders; load average {result['load_before']} -> {result['load_after']}")
    print(f"{'size':>5} | {'seed loader':>12} | {'TensorLoader':>12} | "
          f"{'ratio (quartiles; min-max)':>32} | {'CPU-time ratio':>14} | "
          f"{'+norm+aug':>10} | {'ratio':>6}")
    for r in result["rows"]:
        q1, q3 = r["ratio_quartiles"]
        spread = (f"{r['ratio']:.1f}x ({q1:.1f}-{q3:.1f}; "
                  f"{r['ratio_min']:.1f}-{r['ratio_max']:.1f})")
        print(f"{r['size']:>5} | {r['seed_img_s']:>12,.0f} | {r['ours_img_s']:>12,.0f} | "
              f"{spread:>32} | {r['cpu_ratio']:>13.1f}x | {r['ours_aug_img_s']:>10,.0f} | "
              f"{r['ratio_aug']:>5.1f}x")


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from the command line; return the result record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 batches per measurement on synthetic data (for tests)")
    parser.add_argument("--batches", type=int, default=None, help="batches per run (default 40)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per loader (default 15)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--device", default="cpu", help="device of TensorLoader's batches")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both loaders (default 1)")
    parser.add_argument("--synthetic", action="store_true",
                        help="random images instead of FashionMNIST")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the stages of one TensorLoader batch at each size")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    batches = args.batches or (3 if args.quick else 40)
    repeats = args.repeats or (1 if args.quick else 15)
    try:
        result = run(args.sizes, batches, repeats, torch.device(args.device),
                     args.synthetic or args.quick, threads=args.threads)
        if args.breakdown:
            result["breakdown_ms"] = {size: breakdown(size, batches=max(batches, 5))
                                      for size in args.sizes}
    finally:
        torch.set_num_threads(previous)
    _print_table(result)
    for size, stages in result.get("breakdown_ms", {}).items():
        print(f"{size:>5} px, one batch of {BATCH_SIZE}, median ms: "
              + ", ".join(f"{name} {ms:.3f}" for name, ms in stages.items()))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
