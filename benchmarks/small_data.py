"""fine_tune's defaults against a sweep of recipe x LR x budget, on small data sets built offline.

    python benchmarks/small_data.py --threads 1 --jobs 2 --seeds 0 1   # the table in docs
    python benchmarks/small_data.py --datasets fm10 digits  # some of them
    python benchmarks/small_data.py --quick                 # seconds: the test suite's run

Data sets (train / val / test per class), each with a held-out test split:

- ``fm10``, ``fm30``, ``fm100``, ``fm1000``: FashionMNIST, 10 / 30 / 100 / 1,000 training
  images per class from its train set, 10 validation images per class from the rest of it
  (100 for ``fm1000``), 100 test images per class from its test set (28 px grey);
- ``photos``: RGB photos (8 of scikit-image's and scikit-learn's sample photos), one class
  per photo: 32 px crops at random places and scales, the training crops from the photo's
  left 60%, the validation and test crops from its right 40% (30 / 10 / 40 per class), so
  that validation, like the test, measures parts of the scene that training never saw
  (with validation crops from the training part, every epoch scored 100% on validation
  and the best epoch was chosen at random);
- ``digits``: scikit-learn's handwritten digits (8 px grey, not FashionMNIST), 30 / 10 /
  the rest per class.

Arms: ``default`` is ``fine_tune(model, (x, y), (vx, vy))`` with nothing else (today
``full`` with label smoothing 0.1 from 20 to 100 training images a class, ``lp_ft`` at
1e-2/1e-3 below and above, the default length and the budget-aware image size). The sweep
(``SWEEP_ARMS``, written as ``--arms`` takes them): ``full`` at 1e-2/1e-3 (the default
less its smoothing) and ``lp_ft`` at 1e-2/1e-3 (the default of the other tiers: it
repeats the default's run there), ``lp_ft`` at its own 1e-3/1e-4, a linear
probe, ``lp_ft`` at twice the length and at 32 px (the images' own size, the default
before the budget); arms without a size train at the default's size. ``--all-arms`` adds the rest of
``SWEEP_ARMS``. Data sets of more than 5,000 images run the lean sweep (``LEAN``). Every
arm starts from the same pretrained EfficientNet-Lite0 and uses the defaults for what it
does not set (batch size, image size, augmentation). Test accuracy is measured once, with
the weights fit ends with; with ``--seeds``, every arm runs once per seed and the table
shows the mean.
The verdict per data set: the default's mean within 1 point of the best swept arm's, and
at most 2x its training time (not asked of a default ahead of every swept arm).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import _common  # noqa: F401  # puts the repository root on sys.path
import torch

import transferkit as tk
from transferkit.recipes import default_epochs

DATASETS = ("fm10", "digits", "fm30", "photos", "fm100", "fm1000")
# The sweep, each arm written as --arms takes it ("RECIPE HEAD/BODY BUDGETx [SIZEpx]": the
# length is BUDGET times the default's; without a size, the default's image size).
SWEEP_ARMS = (
    "full 1e-2/1e-3 1x",  # the default from 20 to 100 a class, less its label smoothing
    "lp_ft 1e-3/1e-4 1x",  # the default below 20 a class until 2026-12-07
    "lp_ft 1e-2/1e-3 1x",  # the default below 20 and from 100 a class (since 2026-12-07)
    "linear_probe 1x",
    "lp_ft 1e-3/1e-4 2x",
    "lp_ft 1e-3/1e-4 1x 32px",  # the images' own size: the default before the budget
    # --all-arms adds these:
    "full 1e-2/1e-3 2x",
    "full 1e-3/1e-4 1x",
    "full 1e-2/1e-3 1x 128px",
    "full 1e-2/1e-3 0.5x",
)
CORE = 6  # the first CORE arms run by default
LEAN = ("full 1e-2/1e-3 1x", "lp_ft 1e-3/1e-4 1x", "lp_ft 1e-2/1e-3 1x",  # > 5,000 images
        "linear_probe 1x")
DEFAULT_ARM = ("default", None, None, None, None, None)  # fine_tune with no settings
Split = tuple[torch.Tensor, torch.Tensor]


def parse_arm(spec: str) -> tuple[str, str, float, float | None, float, int | None]:
    """An arm from its name, ``"RECIPE HEAD/BODY Nx [SIZEpx]"`` or ``"linear_probe [HEAD] Nx"``."""
    parts = spec.split()
    size = None
    if parts and parts[-1].endswith("px"):
        try:
            size = int(parts.pop().removesuffix("px"))
        except ValueError:
            raise SystemExit(f"--arms: cannot read the size of {spec!r}; write '96px'") from None
    try:
        recipe, lrs, budget = parts if len(parts) == 3 else (parts[0], "1e-2", parts[1])
        head, _, body = lrs.partition("/")
        return (spec, recipe, float(head), float(body) if body else None,
                float(budget.removesuffix("x")), size)
    except (ValueError, IndexError):
        raise SystemExit(f"--arms: cannot read {spec!r}; write 'lp_ft 3e-3/3e-4 2x' or "
                         "'full 1e-2/1e-3 1x 96px'") from None


SWEEP = tuple(parse_arm(arm) for arm in SWEEP_ARMS)


def _per_class(images: torch.Tensor, labels: torch.Tensor, counts: list[tuple[int, int]],
               seed: int) -> list[Split]:
    """Pick ``counts`` = [(start, stop), ...] of each class's shuffled members, per split."""
    g = torch.Generator().manual_seed(seed)
    picks: list[list[torch.Tensor]] = [[] for _ in counts]
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        for i, (a, b) in enumerate(counts):
            picks[i].append(members[a:b])
    return [(images[torch.cat(p)], labels[torch.cat(p)]) for p in picks]


def fashion(n: int) -> tuple[Split, Split, Split, list[str]]:
    fm = tk.data.fashion_mnist(offline=True)
    n_val = 100 if n >= 1000 else 10
    train, val = _per_class(fm.train_images.unsqueeze(1), fm.train_labels,
                            [(0, n), (n, n + n_val)], seed=0)
    (test,) = _per_class(fm.test_images.unsqueeze(1), fm.test_labels, [(0, 100)], seed=1)
    return train, val, test, list(fm.classes)


def _photos() -> list[tuple[str, torch.Tensor]]:
    import numpy as np
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    named = [(name, getattr(skdata, name)()) for name in
             ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
              "immunohistochemistry")]
    named += list(zip(("china", "flower"), load_sample_images().images))
    return [(name, torch.from_numpy(np.array(img[..., :3])).permute(2, 0, 1))
            for name, img in named]


def photos(size: int = 32) -> tuple[Split, Split, Split, list[str]]:
    g = torch.Generator().manual_seed(0)
    splits: list[list[tuple[torch.Tensor, int]]] = [[], [], []]
    names = []
    for label, (name, img) in enumerate(_photos()):
        names.append(name)
        _, h, w = img.shape
        cut = int(w * 0.6)
        for split, (n, x0, x1) in enumerate(((30, 0, cut), (10, cut, w), (40, cut, w))):
            for _ in range(n):
                side = int(torch.randint(min(h, x1 - x0) // 4, min(h, x1 - x0) // 2 + 1, (1,),
                                         generator=g))
                top = int(torch.randint(0, h - side + 1, (1,), generator=g))
                left = int(torch.randint(x0, x1 - side + 1, (1,), generator=g))
                crop = img[:, top:top + side, left:left + side].float().unsqueeze(0)
                crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="area")
                splits[split].append((crop[0].round().clamp(0, 255).to(torch.uint8), label))
    out = [(torch.stack([x for x, _ in s]), torch.tensor([y for _, y in s])) for s in splits]
    return out[0], out[1], out[2], names


def digits() -> tuple[Split, Split, Split, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images * (255 / 16)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(d.target).long()
    train, val, test = _per_class(images, labels, [(0, 30), (30, 40), (40, 10_000)], seed=0)
    return train, val, test, [str(i) for i in range(10)]


def build(name: str) -> tuple[Split, Split, Split, list[str]]:
    if name.startswith("fm"):
        return fashion(int(name[2:]))
    return {"photos": photos, "digits": digits}[name]()


def write_folder(data: tuple[Split, Split, Split, list[str]], root: Path) -> Path:
    """Write a data set as split folders of PNGs, ``root/{train,val,test}/<class>/<i>.png``.

    The folder ``transferkit train --data root`` reads is then the very data of the table.
    """
    from PIL import Image

    for split, (images, labels) in zip(("train", "val", "test"), data[:3]):
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            folder = root / split / data[3][label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            array = image.permute(1, 2, 0).numpy()
            Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(
                folder / f"{i:05d}.png")
    return root


def run_arm(data: tuple[Split, Split, Split, list[str]], *, recipe: str | None,
            lr: float | None, body_lr: float | None, budget: float | None,
            backbone: str, seed: int, epochs: int | None = None,
            image_size: int | None = None) -> dict:
    train, val, test, classes = data
    torch.manual_seed(seed)
    model = tk.create(backbone, len(classes), in_chans=int(train[0].shape[1]),
                      pretrained=backbone != "tiny")
    kwargs: dict = {}
    if recipe is not None:
        kwargs.update(recipe=recipe, lr=lr, body_lr=body_lr)
    if budget is not None:
        kwargs["epochs"] = max(2, round(default_epochs(len(train[1])) * budget))
    if epochs is not None:
        kwargs["epochs"] = epochs
    if image_size is not None:
        kwargs["image_size"] = image_size
    start = time.perf_counter()
    result = tk.fine_tune(model, train, val, device="cpu", seed=seed, progress=False,
                          **kwargs)
    seconds = time.perf_counter() - start
    info = tk.get_info(model)
    size = image_size or next(s.value for s in result.settings if s.name == "image_size")
    loader = tk.data.TensorLoader(*test[:2], batch_size=256, image_size=size, mean=info.mean,
                                  std=info.std)
    probs = result.trainer.predict(loader)
    acc = float((probs.argmax(1) == test[1]).float().mean())
    return {"test_acc": round(acc, 4), "seconds": round(seconds, 1),
            "epochs": len(result.history), "image_size": size,
            "restored_epoch": result.trainer.restored_epoch,  # of the last phase (lp_ft)
            "probe_kept": any("keeps the probe's weights" in n for n in result.notes),
            "settings": [str(s) for s in result.settings]}


def _ends_with(row: dict) -> str:
    """Which weights a run ended with: the probe's, its best epoch's, or its last epoch's."""
    if row.get("probe_kept"):
        return "the probe's"
    epoch = row.get("restored_epoch")
    return "the last epoch's" if epoch is None else f"epoch {epoch}"


def mean_rows(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per arm: the mean test accuracy and seconds over its seeds, and each seed's accuracy."""
    return {arm: {"test_acc": round(sum(r["test_acc"] for r in rs) / len(rs), 4),
                  "seconds": round(sum(r["seconds"] for r in rs) / len(rs), 1),
                  "epochs": rs[0]["epochs"], "image_size": rs[0]["image_size"],
                  "per_seed": [r["test_acc"] for r in rs]}
            for arm, rs in runs.items()}


def verdict(rows: dict[str, dict]) -> dict:
    """The default against the best swept arm: within 1 point, and at most 2x its time.

    A default ahead of every swept arm is itself the best setting: its time is then not
    held against a worse arm's.
    """
    default = rows["default"]
    swept = {k: v for k, v in rows.items() if k != "default"}
    best_name = max(swept, key=lambda k: swept[k]["test_acc"])
    best = swept[best_name]
    gap = round(100 * (best["test_acc"] - default["test_acc"]), 1)
    ratio = round(default["seconds"] / max(best["seconds"], 1e-9), 2)
    return {"best": best_name, "best_acc": best["test_acc"], "default_acc": default["test_acc"],
            "gap_points": gap, "time_ratio": ratio,
            "met": gap <= 1.0 and (gap < 0 or ratio <= 2.0)}


def _job(name: str, arm: tuple, seed: int, backbone: str, threads: int | None,
         quick: bool) -> tuple[str, str, int, dict]:
    """One (data set, arm, seed) run; a process of its own when --jobs > 1."""
    if threads:
        torch.set_num_threads(threads)
    data = _data(name, quick)
    label, recipe, lr, body_lr, budget, size = arm
    row = run_arm(data, recipe=recipe, lr=lr, body_lr=body_lr, budget=budget,
                  backbone=backbone, seed=seed, epochs=2 if quick else None, image_size=size)
    return name, label, seed, row


def _job_star(job: tuple) -> tuple[str, str, int, dict]:
    return _job(*job)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _data(name: str, quick: bool) -> tuple[Split, Split, Split, list[str]]:
    data = build(name)
    if quick:  # 5 training and 5 test images a class
        data = (*[_per_class(*split, [(0, 5)], seed=0)[0] for split in data[:3]], data[3])
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=None)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds of every arm; the table shows the mean (default: 0)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each in its own process (use --threads 1)")
    parser.add_argument("--out", default=None, help="also write results as JSON here")
    parser.add_argument("--all-arms", action="store_true", help="the whole sweep")
    parser.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                        help="these arms instead of the sweep, each written like "
                             "'lp_ft 3e-3/3e-4 2x' or 'full 1e-2/1e-3 1x 96px' ('default' "
                             "for the defaults)")
    parser.add_argument("--write-folder", default=None, metavar="DIR",
                        help="write the (one) data set as DIR/{train,val,test}/<class>/*.png "
                             "and stop: the folder `transferkit train --data DIR` reads")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds: digits, the default and one swept arm, 2 epochs")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TRANSFERKIT_OFFLINE", "1")
    names = args.datasets or (["digits"] if args.quick else list(DATASETS))
    if args.write_folder:
        if len(names) != 1:
            parser.error("--write-folder takes exactly one data set (--datasets NAME)")
        print(write_folder(build(names[0]), Path(args.write_folder)))
        return 0
    load = os.getloadavg()[0]
    print(f"small_data: {', '.join(names)}; backbone {args.backbone}; "
          f"{torch.get_num_threads()} thread(s) per run, {args.jobs} run(s) at a time; seeds "
          f"{' '.join(map(str, args.seeds))}; load {load:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    plan: dict[str, list[tuple]] = {}
    for name in names:
        data = _data(name, args.quick)
        n = len(data[0][1])
        print(f"{name}: {n} train / {len(data[1][1])} val / {len(data[2][1])} test, "
              f"{len(data[3])} classes, {data[0][0].shape[-1]} px", flush=True)
        arms = list(SWEEP if args.all_arms else SWEEP[:CORE])
        arms = arms[:1] if args.quick else [a for a in arms if n < 5000 or a[0] in LEAN]
        arms = [DEFAULT_ARM, *arms]
        if args.arms:
            arms = [DEFAULT_ARM if a == "default" else parse_arm(a) for a in args.arms]
        plan[name] = arms
    jobs = [(name, arm, seed) for name, arms in plan.items() for arm in arms
            for seed in args.seeds]
    runs: dict[str, dict[str, list[dict]]] = {name: {arm[0]: [] for arm in arms}
                                              for name, arms in plan.items()}

    def record(name: str, label: str, seed: int, row: dict) -> None:
        runs[name][label].append(row)
        print(f"  {name:7s} {label:28s} seed {seed}: test {row['test_acc']:.4f}  "
              f"{row['epochs']:3d} ep (ends with {_ends_with(row)})  "
              f"{row['image_size']:3d} px  {row['seconds']:7.1f} s",
              flush=True)

    common = (args.backbone, args.threads, args.quick)
    if args.jobs == 1:
        for name, arm, seed in jobs:
            record(*_job(name, arm, seed, *common))
    else:
        # A Pool, not a ProcessPoolExecutor: leaving its block (an error, Ctrl-C, or a
        # SIGTERM turned into SystemExit here) terminates the workers, where an executor
        # waits for them, and a killed parent left its workers training for an hour.
        signal.signal(signal.SIGTERM, _stop)
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.jobs) as pool:
            for row in pool.imap_unordered(_job_star, [(*job, *common) for job in jobs]):
                record(*row)
    results = {}
    for name in names:
        rows = mean_rows({label: sorted(rs, key=lambda r: r["seconds"])
                          for label, rs in runs[name].items()})
        results[name] = {"rows": rows, "runs": runs[name]}
        if "default" in rows and len(rows) >= 2:
            results[name]["verdict"] = verdict(rows)
    seeds = len(args.seeds)
    print(f"\nmean test accuracy over {seeds} seed(s) (seconds: mean wall time per run)")
    for name, r in results.items():
        print(f"\n{name}")
        for label, row in r["rows"].items():
            spread = ", ".join(f"{a:.3f}" for a in row["per_seed"])
            print(f"  {label:28s} {row['test_acc']:.4f} ({spread})  {row['image_size']:3d} px  "
                  f"{row['seconds']:7.1f} s")
        if "verdict" in r:
            v = r["verdict"]
            print(f"  -> best {v['best']} {v['best_acc']:.4f}; default {v['default_acc']:.4f} "
                  f"({v['gap_points']:+.1f} points behind, {v['time_ratio']:.2f}x its time): "
                  f"{'met' if v['met'] else 'NOT met'}", flush=True)
    print("\n| data set | default | best swept (arm) | gap (points) | time ratio | met |")
    print("|---|--:|---|--:|--:|---|")
    for name, r in results.items():
        if "verdict" not in r:
            continue
        v = r["verdict"]
        print(f"| {name} | {v['default_acc']:.4f} | {v['best_acc']:.4f} ({v['best']}) | "
              f"{v['gap_points']:.1f} | {v['time_ratio']:.2f} | {'yes' if v['met'] else 'no'} |")
    judged = [r["verdict"]["met"] for r in results.values() if "verdict" in r]
    print(f"{sum(judged)} of {len(judged)} data sets met; load {os.getloadavg()[0]:.2f} at the "
          "end")
    summary = {"datasets": results, "met": sum(judged), "seeds": args.seeds, "load_start": load}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    print("RESULT " + json.dumps({k: r["verdict"] for k, r in results.items() if "verdict" in r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
