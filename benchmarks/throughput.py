"""Images/s of training steps: the seed's loop vs transferkit's Trainer, and what speeds it up.

For each backbone (ResNet-18, EfficientNet-Lite0) and image size, every variant trains the
same model (same initial weights, AdamW lr 1e-3, batch 64) for a fixed number of steps on
FashionMNIST; warm-up steps are not timed. Variants (``--variants``, joined with ``+``):

- ``seed``: a hand-written loop over the seed notebook's DataLoader (a PIL image per sample,
  ``Resize`` + ``ToTensor``), 3-channel model fed ``torch.cat((X, X, X), 1)``, fp32;
- ``tk``: ``Trainer`` + ``TensorLoader`` (batched uint8 -> float, resize, normalise), fp32,
  1-channel model; flags: ``cl`` channels_last, ``bf16`` autocast (``precision="bf16"``),
  ``compile`` (``Trainer(compile=True)``; the first step's extra time is reported as
  compile time), ``full`` the grouped convolutions' full kernels (``crop_kernels=False``;
  by default the Trainer crops them to the taps that reach the input on the CPU), ``t1`` /
  ``t2`` one / two intra-op threads (default: ``--threads``), ``body`` /
  ``bitfit`` a freezing policy (frozen layers before the trainable ones get no backward);
- ``cache``: the head trained on cached outputs of the frozen body (valid when no
  augmentation touches the images): epoch 1 costs one no-grad forward pass per image
  (``img_s``), later epochs only the head (``later_img_s``).

Runs are interleaved (variant order reversed on every other repeat) and the fastest repeat
is kept, since the machine may be shared. Besides wall-clock images/s, images per second
of process CPU time are reported: with ``--threads 1`` they leave out the time spent
waiting for a core, the steadier comparison on a shared machine. The table gives each
variant's rates and their ratios to ``seed`` and to ``tk`` (fp32); the last line is
``RESULT {json}``.

Usage::

    python benchmarks/throughput.py --threads 1 --sizes 28,64    # about 5 min (shared CPU)
    python benchmarks/throughput.py --threads 1 --sizes 224      # about 5 min
    python benchmarks/throughput.py --sizes 28 --variants seed,tk,tk+compile
    python benchmarks/throughput.py --threads 1 --backbones efficientnet_lite0 --sizes 32 \
        --variants tk+cl,tk+cl+compile --steps 300 --repeats 1    # compile=True vs False
    python benchmarks/throughput.py --threads 1 --backbones efficientnet_lite0 --sizes 32,64 \
        --variants tk+cl+full,tk+cl --steps 40        # cropped kernels vs full ones
    python benchmarks/throughput.py --quick             # seconds (tests)
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from _common import (
    BATCH_SIZE,
    load_data,
    machine,
    markdown_table,
    print_result,
    seed_loader,
    subset,
)
from torch import nn

from transferkit.adaptation import get_info
from transferkit.adaptation.heads import set_module
from transferkit.backbones import create
from transferkit.data import TensorLoader
from transferkit.train import Callback, Trainer

FLAGS = {"cl", "bf16", "compile", "full", "t1", "t2", "body", "bitfit"}
DEFAULT_VARIANTS = "seed,tk,tk+cl,tk+bf16,tk+cl+bf16,tk+cl+body,cache+cl"
# 224 px steps take tens of seconds on 2 cores: only the main comparison there.
DEFAULT_VARIANTS_224 = "seed,tk,tk+cl+bf16,tk+cl+body,cache+cl"


@dataclass(frozen=True)
class Variant:
    """One way of running training steps, parsed from e.g. ``"tk+cl+bf16"``."""

    name: str
    loop: str
    flags: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, name: str) -> Variant:
        loop, *flags = name.split("+")
        if loop not in ("seed", "tk", "cache"):
            raise SystemExit(f"unknown loop {loop!r} in variant {name!r}; use seed, tk or cache")
        bad = set(flags) - FLAGS
        if bad or (loop == "seed" and flags):
            raise SystemExit(f"unknown flags {sorted(bad or flags)} in {name!r}; use {FLAGS}")
        return cls(name, loop, frozenset(flags))

    @property
    def freeze(self) -> str | None:
        return next((f for f in ("body", "bitfit") if f in self.flags), None)


class StepTimer(Callback):
    """Record the time at the start of the epoch and after every optimizer step."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.times = [now()]

    def on_batch_end(self, trainer: Trainer) -> None:
        self.times.append(now())


def now() -> tuple[float, float]:
    """Return (wall-clock, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


def rates(times: list[tuple[float, float]], warmup: int, batch_size: int) -> dict[str, float]:
    """Return images/s after ``warmup`` steps, the first step's and a steady step's time.

    ``cpu_img_s`` divides by the process's CPU time instead. With one intra-op thread
    it leaves out the time spent waiting for a core, so it is the steadier measure on a
    shared machine; with several threads it adds their times up (and spin-waits), so
    compare it only between single-threaded runs.
    """
    timed = len(times) - 1 - warmup
    seconds = times[-1][0] - times[warmup][0]
    cpu = times[-1][1] - times[warmup][1]
    return {
        "img_s": timed * batch_size / seconds,
        "cpu_img_s": timed * batch_size / cpu if cpu > 0 else float("nan"),
        "step_s": seconds / timed,
        "first_step_s": times[1][0] - times[0][0],
    }


def seed_loop(
    model: nn.Module, images, labels, size: int, warmup: int, batch_size: int
) -> dict[str, float]:
    """Train with the seed's loader and loop (3-channel input by channel tripling)."""
    loader = seed_loader(images, labels, image_size=size, batch_size=batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = [now()]
    for X, y in loader:
        X = torch.cat((X, X, X), 1)
        loss = F.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the seed reads the loss every step
        times.append(now())
    return rates(times, warmup, batch_size)


def tk_loop(
    model: nn.Module, loader: TensorLoader, v: Variant, warmup: int
) -> dict[str, float]:
    """Train with ``Trainer`` + ``TensorLoader`` under the variant's settings."""
    timer = StepTimer()
    trainer = Trainer(
        model,
        epochs=1,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        device="cpu",
        precision="bf16" if "bf16" in v.flags else "fp32",
        channels_last="cl" in v.flags,
        compile="compile" in v.flags,
        crop_kernels="full" not in v.flags,
        freeze=v.freeze,
        callbacks=[timer],
        progress=False,
    )
    trainer.fit(loader)
    out = rates(timer.times, warmup, loader.batch_size)
    if "compile" in v.flags:  # the first step compiles forward and backward
        out["compile_s"] = out["first_step_s"] - out["step_s"]
    return out


def cache_loop(model: nn.Module, loader: TensorLoader, v: Variant, warmup: int) -> dict:
    """Compute the frozen body's outputs once (no grad), then train the head on them."""
    head_name = get_info(model).heads[0]
    head = model.get_submodule(head_name)
    set_module(model, head_name, nn.Identity())
    body = model.eval()
    if "cl" in v.flags:
        body = body.to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if "bf16" in v.flags else None
    feats, targets, times = [], [], [now()]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        for x, y in loader:
            if "cl" in v.flags:
                x = x.contiguous(memory_format=torch.channels_last)
            feats.append(body(x).float())
            targets.append(y)
            times.append(now())
    out = rates(times, warmup, loader.batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    times = [now()]
    for f, y in zip(feats, targets):
        loss = F.cross_entropy(head(f), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        times.append(now())
    out["later_img_s"] = rates(times, warmup, loader.batch_size)["img_s"]
    return out


def run_variant(
    v: Variant, bases: dict[int, nn.Module], data, size: int, warmup: int, batch_size: int
) -> dict:
    images, labels = data
    if v.loop == "seed":
        return seed_loop(copy.deepcopy(bases[3]), images, labels, size, warmup, batch_size)
    model = copy.deepcopy(bases[1])
    info = get_info(model)
    loader = TensorLoader(
        images, labels, batch_size=batch_size, shuffle=True, image_size=size,
        mean=info.mean, std=info.std, num_classes=10,
    )
    previous = torch.get_num_threads()
    for n in (1, 2):
        if f"t{n}" in v.flags:
            torch.set_num_threads(n)
    try:
        if v.loop == "cache":
            return cache_loop(model, loader, v, warmup)
        return tk_loop(model, loader, v, warmup)
    finally:
        torch.set_num_threads(previous)
        torch.compiler.reset()


def bench_row(backbone: str, size: int, variants: list[Variant], args, data) -> list[dict]:
    """Measure every variant on one backbone and size; return one record per variant."""
    torch.manual_seed(0)
    pretrained = backbone == "efficientnet_lite0" and not args.quick
    bases = {c: create(backbone, 10, in_chans=c, pretrained=pretrained) for c in (1, 3)}
    steps, warmup, repeats = args.plan[size]
    sub = subset(*data, (steps + warmup) * args.batch_size)
    best: dict[str, dict] = {}
    for r in range(repeats):
        for v in variants if r % 2 == 0 else variants[::-1]:
            m = run_variant(v, bases, sub, size, warmup, args.batch_size)
            if v.name not in best or m["img_s"] > best[v.name]["img_s"]:
                cpu = max(m["cpu_img_s"], best.get(v.name, m)["cpu_img_s"])
                best[v.name] = {**m, "cpu_img_s": cpu}
            else:
                best[v.name]["cpu_img_s"] = max(m["cpu_img_s"], best[v.name]["cpu_img_s"])
            print(f"  {backbone} {size}px {v.name}: {m['img_s']:.1f} img/s "
                  f"(repeat {r + 1}/{repeats})", flush=True)
    rows = []
    for v in variants:
        row = {"backbone": backbone, "size": size, "variant": v.name, **best[v.name]}
        row.update(steps=steps, warmup=warmup, repeats=repeats)
        for ref in ("seed", "tk"):
            if ref in best:
                row[f"vs_{ref}"] = best[v.name]["img_s"] / best[ref]["img_s"]
                row[f"cpu_vs_{ref}"] = best[v.name]["cpu_img_s"] / best[ref]["cpu_img_s"]
        if "compile" in v.flags:
            plain = "+".join(n for n in v.name.split("+") if n != "compile")
            if plain in best and row["img_s"] > best[plain]["img_s"]:
                saved = 1 / best[plain]["img_s"] - 1 / row["img_s"]  # seconds per image
                row["break_even_images"] = row["compile_s"] / saved
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="resnet18,efficientnet_lite0")
    parser.add_argument("--sizes", default=None, help="comma-separated; default 28,64,224")
    parser.add_argument("--variants", default=None, help=f"default {DEFAULT_VARIANTS}")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (all sizes)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {BATCH_SIZE}")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="2 steps of batch 16 at 32 px, 1 thread (tests)")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (16 if args.quick else BATCH_SIZE)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    sizes = [int(s) for s in (args.sizes or ("32" if args.quick else "28,64,224")).split(",")]
    # size -> (timed steps, warm-up steps, repeats)
    defaults = {28: (6, 2, 2), 64: (4, 1, 1), 224: (1, 1, 1)}
    args.plan = {}
    for s in sizes:
        steps, warmup, repeats = (2, 1, 1) if args.quick else defaults.get(s, (5, 1, 1))
        args.plan[s] = (args.steps or steps, warmup, args.repeats or repeats)
    if args.quick and args.variants is None:
        args.variants = "seed,tk,tk+cl+bf16,tk+body,cache"

    data = load_data(args.data_root, synthetic_ok=args.quick)
    env = machine()
    print(f"throughput: data {data.source}; {env['cpu']}, {env['cpus']} CPUs, torch "
          f"{env['torch']}, {env['torch_threads']} threads; load {env['load_avg']}", flush=True)
    rows: list[dict] = []
    for backbone in args.backbones.split(","):
        for size in sizes:
            names = args.variants or (DEFAULT_VARIANTS_224 if size >= 224 else DEFAULT_VARIANTS)
            variants = [Variant.parse(n) for n in names.split(",")]
            rows += bench_row(backbone, size, variants, args, (data.train_images,
                                                               data.train_labels))
    columns = [("backbone", "backbone"), ("size", "px"), ("variant", "variant"),
               ("img_s", "img/s"), ("vs_seed", "x seed"), ("vs_tk", "x tk fp32"),
               ("cpu_img_s", "img per CPU-s"), ("cpu_vs_seed", "CPU: x seed"),
               ("cpu_vs_tk", "CPU: x tk fp32"),
               ("later_img_s", "cached: later epochs img/s"), ("compile_s", "compile s"),
               ("break_even_images", "compile pays off after (images)")]
    print(markdown_table(rows, columns))
    result = {"benchmark": "throughput", "batch_size": args.batch_size, "data": data.source,
              "rows": rows, **env, "load_avg_end": machine()["load_avg"]}
    print_result(result)
    return result


if __name__ == "__main__":
    main()
