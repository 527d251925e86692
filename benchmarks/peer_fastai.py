"""transferkit against fastai on the same job: FashionMNIST, the same starting model.

Three arms, each in its own process, one after the other:

- ``fastai``: fastai 2.8 used as its documentation teaches: a ``Learner`` with a body/head
  splitter, the ``ChannelsLast`` callback and ``fit_one_cycle(E, slice(body_lr, head_lr))``;
  everything trains. ``--arms fastai_fine_tune`` adds ``Learner.fine_tune(E - 1)`` (one
  frozen epoch, then E - 1 unfrozen; fastai's default LRs).
- ``tk_default``: transferkit's default path, i.e. ``python examples/fashion_resnet18.py``
  with its own defaults (only the backbone is pinned, and ``--out``/``--threads``/explicit
  overrides are passed): when the example's defaults change, this arm follows.
- ``tk_full``: like for like, ``transferkit.fine_tune(recipe="full", channels_last=True)``
  with everything training, the example's loaders and settings (AdamW, warm-up + cosine).
  ``--tk-betas``, ``--tk-eps``, ``--tk-warmup`` and ``--tk-weight-decay`` change this arm
  alone, one fastai default at a time (AdamW's betas and eps are set in its own process):
  which of fastai's defaults makes a difference.

Every arm starts from ``transferkit.create("efficientnet_lite0", num_classes=10,
in_chans=1)`` (after ``torch.manual_seed(seed)``), trains on the example's split of the
FashionMNIST training set (55,000 train / 5,000 val), at the image size, batch size, number
of epochs and LRs the example trained with (``tk_default`` runs first; what the example
leaves to ``fine_tune`` is read from its run), saves its weights with
``transferkit.save_model``, and the parent evaluates every file with ONE function on the
same 10,000 test images (resized and normalised by ``TensorLoader`` with the model's
mean/std). Peak memory is each
child's own ``ru_maxrss`` (``os.wait4``). The differences in defaults are listed in
``docs/benchmarks.md``.

fastai is a benchmark-only dependency: the ``fastai`` arms run under ``--fastai-python``
(default: this interpreter if it can import fastai, else ``.venv-bench/bin/python``, which
``make bench-venv`` creates).

Usage::

    python benchmarks/peer_fastai.py            # about 15-20 minutes on 2 cores
    python benchmarks/peer_fastai.py --quick    # 1,000 images, 1 epoch, 32 px (tests)
    python benchmarks/peer_fastai.py --arms tk_full --epochs 4 --batch-size 256 \
        --image-size 32 --lr 1e-2 --tk-betas 0.9,0.99 --tk-eps 1e-5   # fastai's Adam
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    EXAMPLE,
    ROOT,
    import_example,
    machine,
    markdown_table,
    parse_result,
    print_result,
    run_child,
)

BACKBONE = "efficientnet_lite0"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
ARMS = ("fastai", "tk_default", "tk_full")
EXTRA_ARMS = ("fastai_fine_tune",)
QUICK_SUBSET = 1000
TK_KNOBS = ("tk_betas", "tk_eps", "tk_warmup", "tk_weight_decay")  # tk_full arm only


# ----------------------------------------------------------------------------- shared
def example_defaults() -> argparse.Namespace:
    """Return the options ``examples/fashion_resnet18.py`` runs with when given none."""
    return import_example().parse_args([])


def split(n_train_total: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (train, val) indices exactly as ``examples/fashion_resnet18.py`` draws them."""
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(seed))[:n_train_total]
    n_val = min(val_size, n_train_total // 5)
    return perm[n_val:], perm[:n_val]


def test_count(subset: int | None) -> int:
    """The example's number of test images: all 10,000, or ``subset // 5``."""
    return max(1, subset // 5) if subset else 10000


def evaluate(path: Path, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The one evaluation of every arm: load the model file, test accuracy on ``images``."""
    import transferkit as tk
    from transferkit.data import TensorLoader

    model, meta = tk.load_model(path)  # eval mode, contiguous fp32
    loader = TensorLoader(images, labels, batch_size=256, image_size=meta.image_size,
                          mean=meta.mean, std=meta.std)
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
    return {"test_acc": round(correct / len(labels), 4), "test_images": len(labels),
            "image_size": meta.image_size[0]}


# ----------------------------------------------------------------------------- children
def _child_data(cfg: dict[str, Any]):
    import transferkit as tk
    from transferkit.data import TensorLoader, fashion_mnist

    data = fashion_mnist(offline=True)
    torch.manual_seed(cfg["seed"])  # the example seeds before building its model
    model = tk.create(BACKBONE, 10, in_chans=1)
    info = tk.get_info(model)
    train_idx, val_idx = split(cfg["n_train_total"], cfg["val_size"], cfg["seed"])

    def loader(idx: torch.Tensor, *, shuffle: bool) -> TensorLoader:
        return TensorLoader(data.train_images[idx], data.train_labels[idx],
                            batch_size=cfg["batch_size"], shuffle=shuffle,
                            image_size=cfg["image_size"], mean=info.mean, std=info.std,
                            num_classes=10, device="cpu", seed=cfg["seed"])

    return data, model, loader, train_idx, val_idx


def _tensors(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Return every (resized, normalised) image of an unshuffled loader, in one tensor."""
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def child_fastai(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """fastai's arm: Learner + splitter + ChannelsLast + fit_one_cycle (or fine_tune)."""
    # fastai.vision.all, as its tutorials import it: it also attaches fit_one_cycle and
    # fine_tune to Learner (fastcore's @patch in fastai.callback.schedule).
    import fastai
    from fastai.vision.all import (
        ChannelsLast,
        CrossEntropyLossFlat,
        DataLoaders,
        Learner,
        accuracy,
        set_seed,
    )
    from torch.utils.data import TensorDataset

    import transferkit as tk

    start = time.perf_counter()
    data, model, loader, train_idx, val_idx = _child_data(cfg)
    # The same pixels as transferkit's arms: TensorLoader's resize and normalisation, done
    # once; fastai's own DataLoader then batches and shuffles them (its default drop_last).
    # fastai's DataLoader shuffles with Python's `random` (seeded from it at creation), which
    # torch.manual_seed does not reach: seeded here the fastai way, after the model is built.
    set_seed(cfg["seed"])
    train_ds = TensorDataset(*_tensors(loader(train_idx, shuffle=False)))
    val_ds = TensorDataset(*_tensors(loader(val_idx, shuffle=False)))
    dls = DataLoaders.from_dsets(train_ds, val_ds, bs=cfg["batch_size"], num_workers=0,
                                 device="cpu")
    heads = tk.get_info(model).heads

    def splitter(m: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
        head = [p for n, p in m.named_parameters() if n.split(".")[0] in heads]
        ids = {id(p) for p in head}
        return [[p for p in m.parameters() if id(p) not in ids], head]

    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=splitter,
                    metrics=accuracy, cbs=ChannelsLast())
    fit_start = time.perf_counter()
    with learn.no_bar():
        if cfg["arm"] == "fastai_fine_tune":
            learn.fine_tune(cfg["epochs"] - 1, freeze_epochs=1)
        else:
            learn.fit_one_cycle(cfg["epochs"], slice(cfg["body_lr"], cfg["head_lr"]))
    fit_s = time.perf_counter() - fit_start
    tk.save_model(learn.model, out / "model.safetensors", backbone=BACKBONE,
                  class_names=data.classes, image_size=cfg["image_size"])
    values = [list(map(float, v)) for v in learn.recorder.values]  # train, val loss, acc
    return {"work_s": round(time.perf_counter() - start, 1), "fit_s": round(fit_s, 1),
            "epochs": len(values), "val_acc": round(values[-1][2], 4),
            "train_batches": len(dls.train), "library": f"fastai {fastai.__version__}"}


def _set_adamw(betas: list[float] | None, eps: float | None) -> None:
    """Make every ``torch.optim.AdamW`` of this process use ``betas``/``eps`` (if given)."""
    given = {k: v for k, v in (("betas", betas and tuple(betas)), ("eps", eps)) if v is not None}
    if not given:
        return
    base = torch.optim.AdamW

    class AdamW(base):  # type: ignore[misc, valid-type]
        def __init__(self, params: Any, **kwargs: Any) -> None:
            super().__init__(params, **{**kwargs, **given})

    torch.optim.AdamW = AdamW  # type: ignore[misc]


def child_tk_full(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """transferkit like for like: the example's fine_tune call with nothing frozen."""
    import transferkit as tk

    _set_adamw(cfg.get("tk_betas"), cfg.get("tk_eps"))
    start = time.perf_counter()
    data, model, loader, train_idx, val_idx = _child_data(cfg)
    train, val = loader(train_idx, shuffle=True), loader(val_idx, shuffle=False)
    fit_start = time.perf_counter()
    given = {k: cfg[k] for k in ("weight_decay", "warmup") if cfg[k] is not None}
    given.update({k: cfg[f"tk_{k}"] for k in ("weight_decay", "warmup")
                  if cfg.get(f"tk_{k}") is not None})
    result = tk.fine_tune(model, train, val, recipe="full", epochs=cfg["epochs"],
                          lr=cfg["head_lr"], body_lr=cfg["body_lr"], channels_last=True,
                          monitor="val_acc", device="cpu", seed=cfg["seed"], progress=False,
                          **given)
    fit_s = time.perf_counter() - fit_start
    tk.save_model(model, out / "model.safetensors", backbone=BACKBONE,
                  class_names=data.classes, image_size=cfg["image_size"])
    adamw = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults  # as patched
    return {"work_s": round(time.perf_counter() - start, 1), "fit_s": round(fit_s, 1),
            "epochs": len(result.history), "val_acc": round(result.history[-1]["val_acc"], 4),
            "train_batches": len(train), "library": f"transferkit {tk.__version__}",
            "variant": variant(cfg), "betas": list(adamw["betas"]),
            "eps": adamw["eps"], **given}


def variant(cfg: dict[str, Any]) -> str:
    """The tk_full arm's changes from the Trainer's defaults, as the table shows them."""
    parts = [f"{k.removeprefix('tk_')} {tuple(v) if isinstance(v, list) else v}"
             for k in TK_KNOBS if (v := cfg.get(k)) is not None]
    return ", ".join(parts) or "-"


def child_main(arm: str, config: Path) -> int:
    cfg = json.loads(config.read_text())
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    out = config.parent
    fn = child_fastai if arm.startswith("fastai") else child_tk_full
    result = fn({**cfg, "arm": arm}, out)
    print_result({**result, "torch_threads": torch.get_num_threads()})
    return 0


# ----------------------------------------------------------------------------- parent
def fastai_python(given: str | None) -> str:
    """Return an interpreter that can import fastai, or exit naming how to get one."""
    if given:
        candidates = [given]
    else:
        candidates = [sys.executable] + ([str(BENCH_PYTHON)] if BENCH_PYTHON.exists() else [])
    for python in candidates:
        try:
            ok = subprocess.run([python, "-c", "import fastai"], capture_output=True)
        except OSError:  # no such file, not executable
            continue
        if ok.returncode == 0:
            return python
    where = f"--fastai-python {given!r} cannot import fastai" if given else (
        f"neither this python ({sys.executable}) nor {BENCH_PYTHON} can import fastai")
    sys.exit(f"peer_fastai: error: {where}. Run `make bench-venv` (creates .venv-bench with "
             "fastai==2.8.12 beside the pinned torch), or pass --fastai-python PATH, or "
             "leave the fastai arms out with --arms tk_default,tk_full.")


def launch(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` to the end; return its stdout, process wall time and own peak RSS."""
    env = dict(os.environ, TRANSFERKIT_OFFLINE="1", PYTHONPATH=str(ROOT))
    load = os.getloadavg()[0]
    ran = run_child(cmd, env=env, stderr=log)
    if ran.returncode != 0:
        sys.exit(f"peer_fastai: {' '.join(cmd)} failed ({ran.returncode}):\n"
                 f"{log.read_text()[-3000:]}")
    return {"stdout": ran.stdout, "process_s": round(ran.wall_s, 1),
            "cpu_s": round(ran.cpu_s, 1),
            "peak_rss_mb": round(ran.peak_rss_mb), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def run_arm(arm: str, args: argparse.Namespace, budget: dict[str, Any], out: Path,
            overrides: list[str], test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    arm_out = out / arm
    arm_out.mkdir(parents=True, exist_ok=True)
    threads = ["--threads", str(args.threads)] if args.threads else []
    if arm == "tk_default":
        cmd = [sys.executable, str(EXAMPLE), "--backbone", BACKBONE, "--out", str(arm_out),
               *threads, *overrides]
    else:
        config = arm_out / "config.json"
        knobs = {n: getattr(args, n) for n in TK_KNOBS}
        config.write_text(json.dumps({**budget, **knobs, "threads": args.threads}))
        python = args.fastai_python if arm.startswith("fastai") else sys.executable
        cmd = [python, __file__, "--child", arm, "--config", str(config)]
    ran = launch(cmd, arm_out / "stderr.log")
    child = parse_result(ran.pop("stdout"))
    if arm == "tk_default":  # the example's own summary: RESULT {backbone, test_acc, wall_s}
        history = json.loads((arm_out / "history.json").read_text())
        child = {"work_s": child["wall_s"], "own_test_acc": child["test_acc"],
                 "used": child["used"],
                 "epochs": len(history), "val_acc": round(history[-1]["val_acc"], 4),
                 "library": "transferkit (examples/fashion_resnet18.py)"}
    shared = evaluate(arm_out / "model.safetensors", *test)
    return {"arm": arm, **child, **ran, **shared}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_SUBSET} training images, 1 epoch: a smoke test")
    p.add_argument("--arms", default=",".join(ARMS),
                   help=f"comma-separated, from {', '.join(ARMS + EXTRA_ARMS)}")
    p.add_argument("--epochs", type=int, default=None, help="default: the example's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the example's")
    p.add_argument("--image-size", type=int, default=None, help="default: the example's")
    p.add_argument("--lr", type=float, default=None,
                   help="head LR (the body's follows the recipe's ratio); default: the example's")
    p.add_argument("--subset", type=int, default=None,
                   help="N training images and N // 5 test images, as the example's --subset")
    p.add_argument("--seed", type=int, default=None, help="default: the example's")
    p.add_argument("--tk-betas", default=None, metavar="B1,B2",
                   help="AdamW's betas in the tk_full arm (fastai's: 0.9,0.99); default: "
                        "the Trainer's")
    p.add_argument("--tk-eps", type=float, default=None,
                   help="AdamW's eps in the tk_full arm (fastai's: 1e-5)")
    p.add_argument("--tk-warmup", type=float, default=None,
                   help="warm-up fraction in the tk_full arm (fastai's one cycle: 0.25)")
    p.add_argument("--tk-weight-decay", type=float, default=None,
                   help="weight decay in the tk_full arm (fastai's: 0.01)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every arm")
    p.add_argument("--fastai-python", default=None,
                   help="python that imports fastai (default: this one, else .venv-bench)")
    p.add_argument("--out", default=None, help="keep each arm's files here (default: temp)")
    p.add_argument("--child", choices=ARMS + EXTRA_ARMS, help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child, args.config)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS + EXTRA_ARMS]
    if unknown or not arms:
        p.error(f"--arms: unknown {unknown or arms}; choose from {', '.join(ARMS + EXTRA_ARMS)}")
    tk_given = [n for n in TK_KNOBS if getattr(args, n) is not None]
    if tk_given and "tk_full" not in arms:
        p.error(f"--{tk_given[0].replace('_', '-')} changes the tk_full arm; add it to --arms")
    if args.tk_betas is not None:
        try:
            args.tk_betas = [float(b) for b in args.tk_betas.split(",")]
        except ValueError:
            args.tk_betas = []
        if len(args.tk_betas) != 2 or not all(0 <= b < 1 for b in args.tk_betas):
            p.error("--tk-betas: two numbers in [0, 1), e.g. 0.9,0.99")
    for name, ok, rule in (("tk_eps", lambda v: v > 0, "> 0"),
                           ("tk_warmup", lambda v: 0 <= v < 1, "in [0, 1)"),
                           ("tk_weight_decay", lambda v: v >= 0, ">= 0")):
        value = getattr(args, name)
        if value is not None and not ok(value):
            p.error(f"--{name.replace('_', '-')} must be {rule} (got {value:g})")
    if args.quick:
        args.subset = args.subset or QUICK_SUBSET
        args.epochs = args.epochs or 1
        args.image_size = args.image_size or 32
    if any(a.startswith("fastai") for a in arms):
        args.fastai_python = fastai_python(args.fastai_python)

    ex = example_defaults()
    overrides: list[str] = []
    for name in ("epochs", "batch_size", "image_size", "lr", "subset", "seed"):
        value = getattr(args, name)
        if value is not None:
            overrides += [f"--{name.replace('_', '-')}", str(value)]
            setattr(ex, name, value)
    # What the example leaves to fine_tune (None) is read from the tk_default arm's run,
    # so it goes first and the other arms train with the settings it was given or chose.
    arms.sort(key=lambda a: a != "tk_default")
    open_settings = [n for n in ("epochs", "batch_size", "image_size", "lr")
                     if getattr(ex, n) is None]
    if open_settings and arms[0] != "tk_default":
        p.error("without the tk_default arm, give "
                + ", ".join(f"--{n.replace('_', '-')}" for n in open_settings)
                + ": the other arms train with the settings the example's run chose")
    from transferkit.data import fashion_mnist

    data = fashion_mnist(offline=True)
    n_test = test_count(ex.subset)
    budget = {"epochs": ex.epochs, "batch_size": ex.batch_size, "image_size": ex.image_size,
              "head_lr": ex.lr, "body_lr": ex.body_lr or (ex.lr and ex.lr / 10),
              "weight_decay": None, "warmup": None, "seed": ex.seed,  # None: the Trainer's
              "n_train_total": ex.subset or 60000, "val_size": ex.val_size}
    train_idx, val_idx = split(budget["n_train_total"], ex.val_size, ex.seed)
    images = f"{len(train_idx)}/{len(val_idx)}/{n_test}"
    env = machine()
    print(f"peer_fastai: {images} train/val/test images, {args.threads} thread(s); "
          f"{env['cpu']}, load {env['load_avg']:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        test = data.test_images[:n_test], data.test_labels[:n_test]
        for arm in arms:
            print(f"peer_fastai: arm {arm} ...", flush=True)
            rows.append(run_arm(arm, args, budget, out, overrides, test))
            r = rows[-1]
            if arm == "tk_default":
                used = r.pop("used")
                budget.update(epochs=used["epochs"], batch_size=used["batch_size"],
                              image_size=used["image_size"], head_lr=used["lr"],
                              body_lr=used["body_lr"], weight_decay=used["weight_decay"],
                              warmup=used["warmup"])
                print(f"peer_fastai: the other arms train as the example did: "
                      f"{budget['image_size']} px, batch {budget['batch_size']}, "
                      f"{budget['epochs']} epoch(s), head LR {budget['head_lr']:g}, body LR "
                      f"{budget['body_lr']:g}", flush=True)
            print(f"peer_fastai: {arm}: test acc {r['test_acc']:.4f}, process {r['process_s']} "
                  f"s, work {r['work_s']} s, peak RSS {r['peak_rss_mb']} MiB", flush=True)
    base = next((r for r in rows if r["arm"] == "fastai"), None)
    for r in rows:
        if base is not None:
            r["process_vs_fastai"] = round(r["process_s"] / base["process_s"], 3)
            r["work_vs_fastai"] = round(r["work_s"] / base["work_s"], 3)
            r["cpu_vs_fastai"] = round(r["cpu_s"] / base["cpu_s"], 3)
    print(markdown_table(rows, [
        ("arm", "arm"), ("library", "library"), ("variant", "tk_full changes"),
        ("epochs", "epochs"),
        ("val_acc", "val acc"), ("test_acc", "test acc (shared eval)"),
        ("process_s", "process s"), ("work_s", "work s"), ("cpu_s", "CPU s"),
        ("peak_rss_mb", "peak RSS MiB"), ("process_vs_fastai", "process / fastai"),
        ("work_vs_fastai", "work / fastai"), ("cpu_vs_fastai", "CPU / fastai"),
        ("load_before", "load before"), ("load_after", "load after")]))
    print_result({"machine": env, "images": images, "threads": args.threads,
                  "budget": budget, "arms": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
