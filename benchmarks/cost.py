"""Cost as the work grows: wall time and peak memory against training-set size and image size.

For each cell (N training images x image size) a fresh process runs the default path on
tensors, one epoch:

    model = transferkit.create("efficientnet_lite0", 10, in_chans=1)
    result = transferkit.fine_tune(model, (images, labels), recipe=R, epochs=1,
                                   image_size=size, freeze_stages=K)
    result.trainer.evaluate(<the first 2,000 test images at that size>)

``R`` and ``K`` are read from ``examples/fashion_resnet18.py``'s defaults on this machine
(``"full"`` and 0, everything trains: the library's own default recipe, ``lp_ft``, needs 2
epochs), so that the cells follow the example; ``--freeze-stages K`` caches K stages. The rest is
``fine_tune``'s own choice for tensors (batch size about N/16, 16..256, on the CPU at most
64 at 224 px; augmentation ``none`` with cached stages, else ``light``; LRs). No validation
data, so ``train_s`` is training only. Each cell reports where the time goes: ``startup_s``
(imports, data, model, measured in the child from its launch), ``cache_s`` and
``train_s`` (``FineTuneResult.timings``), ``other_s`` (the rest of ``fine_tune``: the
loaders, the split), ``eval_s`` (a fixed set of ``--test-images`` test images, default
2,000), the child's CPU time and peak RSS, and the seconds per 1,000 training images of
caching + training, which stay flat when the cost grows linearly.

A cell is not run when its predicted time (linear in N from the largest smaller N measured
at the same size) is over ``--cell-limit`` seconds, or its predicted peak memory over 70%
of the memory available now: the table then shows the prediction, marked as such.

Usage::

    python benchmarks/cost.py                     # 1k/10k/60k x 32/64/224 px, < 10 min a cell
    python benchmarks/cost.py --quick             # 200 and 400 images at 32 px (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    import_example,
    machine,
    markdown_table,
    parse_result,
    peak_rss_mb,
    print_result,
    run_child,
)

BACKBONE = "efficientnet_lite0"
TEST_IMAGES = 2000  # a fixed test set: 10,000 at 224 px would take minutes per cell


def example_path() -> tuple[str, int]:
    """The recipe and ``--freeze-stages`` examples/fashion_resnet18.py uses by default here."""
    args = import_example().parse_args([])
    return args.recipe, args.freeze_stages


def child(cfg: dict[str, Any]) -> int:
    """One cell, in this process: print its timings as a RESULT line."""
    import torch

    import transferkit as tk
    from transferkit.data import TensorLoader, fashion_mnist

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    data = fashion_mnist(offline=True)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train_labels), generator=g)[:cfg["n"]]
    torch.manual_seed(0)
    model = tk.create(BACKBONE, 10, in_chans=1)
    startup = time.time() - cfg["launched"]
    startup_rss = peak_rss_mb()  # imports, the data set and the model: does not grow with N
    result = tk.fine_tune(model, (data.train_images[idx], data.train_labels[idx]),
                          recipe=cfg["recipe"], epochs=1, image_size=cfg["size"],
                          freeze_stages=cfg["freeze_stages"], device="cpu", progress=False)
    info = tk.get_info(model)
    n_test = cfg["test_images"]
    test = TensorLoader(data.test_images[:n_test], data.test_labels[:n_test], batch_size=256,
                        image_size=cfg["size"], mean=info.mean, std=info.std)
    start = time.perf_counter()
    metrics = result.trainer.evaluate(test)
    eval_s = time.perf_counter() - start
    t = result.timings
    print_result({
        "startup_s": round(startup, 2), "startup_rss_mb": round(startup_rss),
        "cache_s": round(t["cache_s"], 2),
        "train_s": round(t["train_s"], 2),
        "other_s": round(result.seconds - t["cache_s"] - t["train_s"], 2),
        "eval_s": round(eval_s, 2), "test_acc": round(metrics["acc"], 4),
        "batch_size": next(c.value for c in result.settings if c.name == "batch_size"),
        "settings": [str(c) for c in result.settings], "notes": result.notes,
        "torch_threads": torch.get_num_threads(),
    })
    return 0


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def run_cell(n: int, size: int, args: argparse.Namespace, recipe: str,
             freeze: int) -> dict[str, Any]:
    launched = time.time()
    cfg = {"n": n, "size": size, "threads": args.threads, "recipe": recipe,
           "freeze_stages": freeze, "launched": launched, "test_images": args.test_images}
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1", PYTHONPATH=str(ROOT))
    load = os.getloadavg()[0]
    timeout = max(3 * args.cell_limit, 600)  # for a first cell, whose time nothing predicts
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "stderr.log"
        ran = run_child([sys.executable, __file__, "--child", json.dumps(cfg)], env=env,
                        timeout=timeout, stderr=log)
        last = (log.read_text().strip().splitlines() or [""])[-1]
    row: dict[str, Any] = {"n": n, "size": size, "peak_rss_mb": round(ran.peak_rss_mb),
                           "load": round(load, 2)}
    if ran.returncode is None:
        return {**row, "status": f"killed after {timeout:.0f} s"}
    if ran.returncode != 0:
        return {**row, "status": f"failed ({ran.returncode}): {last}"}
    r = parse_result(ran.stdout)
    work = r["cache_s"] + r["train_s"]
    return {**row, "status": "measured", "wall_s": round(ran.wall_s, 1),
            "cpu_s": round(ran.cpu_s, 1),
            **{k: r[k] for k in ("startup_s", "startup_rss_mb", "cache_s", "train_s",
                                  "other_s", "eval_s", "batch_size",
                                  "test_acc", "settings", "notes")},
            "s_per_1k": round(work / n * 1000, 2)}


def predict(done: list[dict[str, Any]], n: int) -> tuple[float, float, str, int]:
    """Predict a cell's wall time, peak RSS and batch from the measured cells of its size.

    Time: the last cell's wall time plus its caching and training scaled to ``n`` images
    (start-up and the fixed test set do not grow). Memory: the start-up's peak plus the
    last cell's growth past it, scaled by the batch ``fine_tune`` chooses for ``n`` images
    over the last cell's batch: the training activations, which grow with the batch, not
    with the images (the uint8 images themselves are 784 bytes each).
    """
    from transferkit.recipes import default_batch_size

    last = done[-1]
    est = last["wall_s"] + (last["cache_s"] + last["train_s"]) * (n / last["n"] - 1)
    grown = last["peak_rss_mb"] - last["startup_rss_mb"]
    batch = default_batch_size(n, last["size"])
    rss = last["startup_rss_mb"] + grown * batch / last["batch_size"]
    return est, rss, str(last["n"]), batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 and 400 images at 32 px")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    p.add_argument("--images", type=int, nargs="+", default=[1000, 10000, 60000])
    p.add_argument("--freeze-stages", type=int, default=None,
                   help="default: examples/fashion_resnet18.py's default on this machine")
    p.add_argument("--cell-limit", type=float, default=600.0,
                   help="skip a cell predicted to take longer (seconds)")
    p.add_argument("--test-images", type=int, default=TEST_IMAGES)
    p.add_argument("--threads", type=int, default=1, help="torch threads in every cell")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    if args.quick:
        args.sizes, args.images, args.test_images = [32], [200, 400], 200
    recipe, freeze = example_path()
    freeze = freeze if args.freeze_stages is None else args.freeze_stages
    env = machine()
    print(f"cost: fine_tune(recipe={recipe!r}, epochs=1, freeze_stages={freeze}) of {BACKBONE}, "
          f"{args.threads} thread(s), {args.test_images} test images; {env['cpu']}, "
          f"load {env['load_avg']:.2f}", flush=True)
    rows = []
    for size in args.sizes:
        for n in sorted(args.images):
            done = [r for r in rows if r["size"] == size and r["status"] == "measured"]
            row = None
            if done:
                est, rss, ref, batch = predict(done, n)
                why = None
                if est > args.cell_limit:
                    why = f"over --cell-limit {args.cell_limit:.0f} s"
                elif rss > 0.7 * mem_available_mb():
                    why = f"over 70% of the {mem_available_mb():.0f} MiB available"
                if why:
                    row = {"n": n, "size": size, "batch_size": batch, "wall_s": round(est),
                           "peak_rss_mb": round(rss),
                           "status": f"not run: predicted {est:.0f} s (linear from N={ref}) "
                                     f"and {rss:.0f} MiB (its batch), {why}"}
            if row is None:
                print(f"cost: {n} images at {size} px ...", flush=True)
                row = run_cell(n, size, args, recipe, freeze)
            rows.append(row)
            print(f"cost: {row}", flush=True)
    print(markdown_table(rows, [
        ("n", "images"), ("size", "px"), ("batch_size", "batch"), ("status", "status"),
        ("wall_s", "wall s"),
        ("cpu_s", "CPU s"),
        ("startup_s", "startup s"), ("cache_s", "cache s"), ("train_s", "train s"),
        ("other_s", "other s"), ("eval_s", "eval s (test)"), ("s_per_1k", "s / 1k images"),
        ("peak_rss_mb", "peak RSS MiB"), ("load", "load")]))
    print_result({"machine": env, "recipe": recipe, "freeze_stages": freeze,
                  "threads": args.threads, "test_images": args.test_images, "cells": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
