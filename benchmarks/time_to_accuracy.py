"""Time to accuracy on this CPU: the seed notebook's recipe vs transferkit's reference example.

Runs, one after the other in one session, ``benchmarks/seed_recipe.py`` (ResNet18 from
scratch, SGD lr 0.1, batch 64, per-sample PIL loader, 1 epoch at 28 px) and
``examples/fashion_resnet18.py`` with its CPU defaults, each in a fresh process, and
prints one table: backbone, process wall time, test accuracy, and when transferkit's run
first reached the seed's accuracy (its validation accuracy after an epoch, counting the
set-up and caching time before the first epoch, so the figure errs on the slow side).

Usage::

    python benchmarks/time_to_accuracy.py            # about 10 minutes on 2 cores
    python benchmarks/time_to_accuracy.py --quick    # small subsets, 1 epoch (tests)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str]) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT ")), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="subsets, 1 epoch: seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both runs")
    args = parser.parse_args(argv)
    threads = ["--threads", str(args.threads)] if args.threads else []
    seed_cmd = [sys.executable, "benchmarks/seed_recipe.py", *threads]
    example_cmd = [sys.executable, "examples/fashion_resnet18.py", *threads]
    if args.quick:
        seed_cmd += ["--quick"]
        # 32 px: for one epoch of 400 images fine_tune would choose 224 px (a 10x longer run).
        example_cmd += ["--subset", "500", "--epochs", "1", "--image-size", "32"]
    with tempfile.TemporaryDirectory() as out:
        seed, seed_wall = _run(seed_cmd)
        example, example_wall = _run([*example_cmd, "--out", out])
        history = json.loads((Path(out) / "history.json").read_text())
    target = seed["test_acc"]
    setup = example["wall_s"] - sum(r["time"] for r in history)
    reached = None
    elapsed = setup
    for record in history:
        elapsed += record["time"]
        if record["val_acc"] >= target:
            reached = (record["epoch"], elapsed)
            break
    rows = [
        ("seed recipe", "resnet18 (from scratch)", seed_wall, seed["test_acc"], "-"),
        ("transferkit example", f"{example['backbone']} ({example['weights']})",
         example_wall, example["test_acc"],
         f"epoch {reached[0]}, {reached[1]:.0f} s" if reached else "not reached"),
    ]
    print(f"{'run':<20} {'backbone':<36} {'wall s':>8} {'test acc':>9}  seed's acc reached")
    for name, backbone, wall, acc, when in rows:
        print(f"{name:<20} {backbone:<36} {wall:>8.1f} {acc:>9.4f}  {when}")
    ratio = reached[1] / seed_wall if reached else None
    summary = {"seed_wall_s": round(seed_wall, 1), "seed_train_s": seed.get("seconds"),
               "seed_test_acc": target, "example_wall_s": round(example_wall, 1),
               "example_test_acc": example["test_acc"], "backbone": example["backbone"],
               "time_to_seed_acc_s": round(reached[1], 1) if reached else None,
               "ratio_to_seed_wall": round(ratio, 3) if ratio else None}
    shown = f"{ratio:.2f}" if ratio else "n/a"
    print(f"time to the seed's accuracy / seed's wall time: {shown} (target <= 0.33)")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
