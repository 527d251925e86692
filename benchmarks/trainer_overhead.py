"""Measure the Trainer's overhead against a hand-written training loop.

Both train the same model (ResNet-18 adapted to 1-channel 28x28 inputs, random init) from
the same initial weights on the same pre-built batches with the same optimizer (AdamW) for
the same number of steps, under the same thread setting (``--threads``, default 1: on a
shared 2-core machine, multi-threaded operations stall while other processes hold a core).
One full run of each is a warm-up and is not measured. Then each repeat is a pair of runs,
interleaved (hand, trainer, trainer, hand, ...) so that load from other processes hits both
alike; the ratio ``trainer_time / hand_time`` is computed per pair and its median,
quartiles, minimum and maximum are printed, with the ratio of the fastest runs and the
median per-pair ratio of CPU times (steadier when other processes share the cores).
Target: at most 1.03.

Usage::

    python benchmarks/trainer_overhead.py            # full: ResNet-18, 20 steps x 9 repeats
    python benchmarks/trainer_overhead.py --quick    # seconds: tiny CNN (used by a test)
    python benchmarks/trainer_overhead.py --micro    # linear model: fixed cost per step
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _common

from _common import tiny_cnn  # after sys.path; it also puts the repository root there

from transferkit.train import Trainer


def build_model(quick: bool, micro: bool = False) -> nn.Module:
    if micro:  # almost free compute: what remains is the loops' own per-step cost
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    if quick:
        return tiny_cnn()
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def hand_loop(model: nn.Module, batches: list, lr: float) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def trainer_loop(model: nn.Module, batches: list, lr: float) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    trainer = Trainer(model, epochs=1, optimizer=opt, device="cpu", progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(batches)
    return time.perf_counter() - wall, time.process_time() - cpu


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark from the command line; return the result record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both loops (default 1)")
    parser.add_argument(
        "--micro",
        action="store_true",
        help="a linear model, 200 steps x 15 repeats: per-step overhead in us",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    steps = args.steps or (200 if args.micro else 5 if args.quick else 20)
    repeats = args.repeats or (15 if args.micro else 2 if args.quick else 9)

    torch.manual_seed(0)
    base = build_model(args.quick, args.micro)
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(args.batch_size, 1, 28, 28, generator=g),
            torch.randint(0, 10, (args.batch_size,), generator=g),
        )
        for _ in range(steps)
    ]
    # Warm-up: a full pass of each (allocator, oneDNN kernel caches); not measured.
    hand_loop(copy.deepcopy(base), batches, 1e-3)
    trainer_loop(copy.deepcopy(base), batches, 1e-3)

    wall: dict[str, list[float]] = {"hand_loop": [], "trainer_loop": []}
    cpu: dict[str, list[float]] = {"hand_loop": [], "trainer_loop": []}
    ratios, cpu_ratios = [], []
    for r in range(repeats):
        order = (hand_loop, trainer_loop) if r % 2 == 0 else (trainer_loop, hand_loop)
        for fn in order:
            w, c = fn(copy.deepcopy(base), batches, 1e-3)
            wall[fn.__name__].append(w)
            cpu[fn.__name__].append(c)
        ratios.append(wall["trainer_loop"][-1] / wall["hand_loop"][-1])
        cpu_ratios.append(cpu["trainer_loop"][-1] / cpu["hand_loop"][-1])
        print(
            f"repeat {r + 1}/{repeats}: wall hand {wall['hand_loop'][-1]:.3f}s trainer "
            f"{wall['trainer_loop'][-1]:.3f}s ratio {ratios[-1]:.4f} | cpu ratio "
            f"{cpu_ratios[-1]:.4f}",
            flush=True,
        )
    result = {
        "model": "linear" if args.micro else "tiny-cnn" if args.quick else "resnet18-1ch-28px",
        "steps": steps,
        "batch_size": args.batch_size,
        "repeats": repeats,
        "median_hand_s": statistics.median(wall["hand_loop"]),
        "median_trainer_s": statistics.median(wall["trainer_loop"]),
        "median_ratio": statistics.median(ratios),
        "q1_ratio": _quartiles(ratios)[0],
        "q3_ratio": _quartiles(ratios)[1],
        "min_pair_ratio": min(ratios),
        "max_pair_ratio": max(ratios),
        "ratios": ratios,
        # On a shared machine: the least-disturbed runs, and CPU time (which waiting for a
        # core does not count), are steadier estimates than wall-clock time.
        "min_ratio": min(wall["trainer_loop"]) / min(wall["hand_loop"]),
        "median_cpu_ratio": statistics.median(cpu_ratios),
        # Fixed cost per step (fastest runs), whatever the model: divide by a real step time.
        "overhead_us_per_step": 1e6 * (min(wall["trainer_loop"]) - min(wall["hand_loop"])) / steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    print(
        f"median ratio trainer/hand: {result['median_ratio']:.4f} "
        f"(overhead {100 * (result['median_ratio'] - 1):+.2f}%, target <= +3%), "
        f"quartiles {result['q1_ratio']:.4f}-{result['q3_ratio']:.4f}, "
        f"range {result['min_pair_ratio']:.4f}-{result['max_pair_ratio']:.4f}; "
        f"fastest runs: {result['min_ratio']:.4f}; "
        f"CPU time: {result['median_cpu_ratio']:.4f}; "
        f"{result['overhead_us_per_step']:.0f} us per step (fastest runs)"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
