"""Training steps on the CPU with and without ``Trainer(keep_memory=...)``, side by side.

glibc hands large freed blocks back to the OS (``munmap``, heap trimming), so a training
step that allocates the same activation buffers every step faults their pages in afresh
each time; ``keep_memory`` (``transferkit/train/heap.py``) keeps them in the process while
the Trainer runs. Each arm runs in its own process (the allocator's settings are
per process), the two alternating, ``--repeats`` pairs per image size: the default
backbone (random init) trained channels-last by ``Trainer.fit`` on random batches, as
``fine_tune`` trains it on the CPU. A child times ``--steps`` optimizer steps after
``WARMUP`` steps and reports per step: wall time, page faults (minor, ``ru_minflt``),
user and system CPU time; the parent adds each child's peak RSS. Printed per size: the
medians of each arm, the per-pair ratio ``keep / plain`` of the step time (median and
range), and the same for the peak RSS.

Usage::

    python benchmarks/heap.py                   # 32, 64, 224 px at the default batches
    python benchmarks/heap.py --sizes 224:64 --steps 4 --repeats 3
    python benchmarks/heap.py --quick           # a tiny CNN, seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _common

from _common import (  # after sys.path
    machine,
    markdown_table,
    parse_result,
    print_result,
    run_child,
    tiny_cnn,
)

from transferkit import Trainer, create
from transferkit.recipes import default_batch_size
from transferkit.train.callbacks import Callback
from transferkit.train.heap import heap_supported

WARMUP = 2  # steps before timing: oneDNN's kernels, the first allocation of every buffer
DEFAULT_PX = (32, 64, 224)
LARGE_SET = 60_000  # the default sizes train at fine_tune's CPU batch for this many images
ARMS = ("plain", "keep")


class StepClock(Callback):
    """Trainer callback: CPU usage and time after the warm-up steps and after the last."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.seen, self.marks = warmup, 0, []

    def on_batch_end(self, trainer: Any) -> None:
        self.seen += 1
        if self.seen == self.warmup:
            self.marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)))

    def on_fit_end(self, trainer: Any) -> None:
        self.marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)))


def child(cfg: dict[str, Any]) -> int:
    """Train ``WARMUP + steps`` batches in one arm; print the per-step figures."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = (tiny_cnn() if cfg["quick"] else
             create(cfg["backbone"], 10, in_chans=1, pretrained=False))
    gen = torch.Generator().manual_seed(0)
    size, batch = cfg["size"], cfg["batch"]
    x = torch.randn(batch, 1, size, size, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    data = [(x, y)] * (WARMUP + cfg["steps"])
    clock = StepClock(WARMUP)
    trainer = Trainer(model, epochs=1, lr=1e-3, device="cpu", channels_last=True,
                      keep_memory=cfg["arm"] == "keep", callbacks=[clock], progress=False)
    trainer.fit(data)
    (t0, r0), (t1, r1) = clock.marks
    n = cfg["steps"]
    print_result({
        "arm": cfg["arm"], "size": size, "batch": batch, "steps": n,
        "step_s": (t1 - t0) / n, "faults": (r1.ru_minflt - r0.ru_minflt) / n,
        "user_s": (r1.ru_utime - r0.ru_utime) / n, "sys_s": (r1.ru_stime - r0.ru_stime) / n,
        "kept": trainer.keep_memory and heap_supported(),
        "train_loss": trainer.history[-1]["train_loss"],
    })
    return 0


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parse ``"32:256,224:64"`` into ``[(32, 256), (224, 64)]`` (size, batch)."""
    pairs = []
    for item in text.split(","):
        size, _, batch = item.partition(":")
        if not (size.isdigit() and batch.isdigit() and int(size) > 0 and int(batch) > 0):
            raise ValueError(f"--sizes wants SIZE:BATCH pairs such as 32:256, got {item!r}")
        pairs.append((int(size), int(batch)))
    return pairs


def default_sizes() -> list[tuple[int, int]]:
    """Return ``(size, batch)`` for ``DEFAULT_PX`` at ``fine_tune``'s CPU batch for a large set."""
    return [(px, default_batch_size(LARGE_SET, px, "cpu")) for px in DEFAULT_PX]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None,
                   help="SIZE:BATCH pairs (default: 32, 64 and 224 px at fine_tune's CPU batch "
                        f"for {LARGE_SET:,} images)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per process (default 10; 4 at 224 px and up)")
    p.add_argument("--repeats", type=int, default=3, help="pairs of processes per size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--quick", action="store_true", help="a tiny CNN at 32 px, 1 pair (tests)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    try:
        sizes = (parse_sizes(args.sizes) if args.sizes else
                 [(32, 8)] if args.quick else default_sizes())
    except ValueError as exc:
        p.error(str(exc))
    repeats = 1 if args.quick else args.repeats
    if repeats < 1 or (args.steps is not None and args.steps < 1):
        p.error("--repeats and --steps must be >= 1")
    info = machine()
    load_before = os.getloadavg()[0]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    rows, runs = [], []
    for size, batch in sizes:
        steps = args.steps or (2 if args.quick else 4 if size >= 224 else 10)
        got: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
        for r in range(repeats):
            for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                cfg = {"arm": arm, "size": size, "batch": batch, "steps": steps,
                       "threads": args.threads, "backbone": args.backbone, "quick": args.quick}
                ran = run_child([sys.executable, __file__, "--child", json.dumps(cfg)], env=env)
                if ran.returncode != 0:
                    sys.exit(f"heap.py: the {arm} arm at {size} px failed "
                             f"(exit {ran.returncode})")
                rec = {**parse_result(ran.stdout), "peak_rss_mb": ran.peak_rss_mb}
                got[arm].append(rec)
                runs.append(rec)
                print(f"{size} px, batch {batch}, {arm}: {1e3 * rec['step_s']:.0f} ms a step, "
                      f"{rec['faults']:,.0f} page faults, system {rec['sys_s']:.3f} s, "
                      f"peak {rec['peak_rss_mb']:,.0f} MiB", flush=True)
        ratios = [k["step_s"] / q["step_s"] for k, q in zip(got["keep"], got["plain"])]
        rss = [k["peak_rss_mb"] / q["peak_rss_mb"] for k, q in zip(got["keep"], got["plain"])]
        row: dict[str, Any] = {"size": size, "batch": batch, "steps": steps}
        for arm in ARMS:
            for key in ("step_s", "faults", "sys_s", "user_s", "peak_rss_mb"):
                row[f"{arm}_{key}"] = statistics.median(rec[key] for rec in got[arm])
        row.update(ratio=statistics.median(ratios), ratio_min=min(ratios),
                   ratio_max=max(ratios), rss_ratio=statistics.median(rss),
                   kept=all(rec["kept"] for rec in got["keep"]))
        rows.append(row)
    cols = [("size", "px"), ("batch", "batch"), ("plain_step_s", "plain s/step"),
            ("keep_step_s", "keep s/step"), ("ratio", "keep / plain"),
            ("ratio_min", "min"), ("ratio_max", "max"), ("plain_faults", "plain faults"),
            ("keep_faults", "keep faults"), ("plain_sys_s", "plain system s"),
            ("keep_sys_s", "keep system s"), ("plain_peak_rss_mb", "plain peak MiB"),
            ("keep_peak_rss_mb", "keep peak MiB"), ("rss_ratio", "peak keep / plain")]
    print(f"{info['date']}; {info['cpu']}, {info['cpus']} CPUs; torch threads "
          f"{args.threads or 'default'}; {'tiny CNN' if args.quick else args.backbone}; "
          f"{repeats} pair(s) of processes per size; load average {load_before:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; glibc settings applied: "
          f"{all(row['kept'] for row in rows)}")
    print(markdown_table(rows, cols))
    print_result({**info, "rows": rows, "runs": runs, "repeats": repeats,
                  "threads": args.threads, "backbone": args.backbone,
                  "load_before": load_before, "load_after": os.getloadavg()[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
