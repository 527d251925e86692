"""Where the seconds before the first optimizer step go, on the reference example's path.

Runs ``examples/fashion_resnet18.py`` (its ``main``, with its defaults) in a fresh process
and stops it right after its first optimizer step (a callback passed to its
``transferkit.fine_tune`` call raises), with a time stamp at each step of the way, all
counted from the launch of the process:

- interpreter: the process is running this script's first line;
- ``import torch``, ``import transferkit``, then the example's other imports;
- the data (``fashion_mnist``), the model (``build_model``: ``transferkit.create`` with
  the ImageNet weights);
- ``fine_tune`` until training starts (the loaders, the split of the model and the cache
  of its frozen stages: ``cache_s``), then the first optimizer step.

A second process runs the same imports under ``python -X importtime`` and lists the
modules whose import takes longest (cumulative, top-level, and by their own time).

Usage::

    python benchmarks/startup.py            # about a minute with the full data set
    python benchmarks/startup.py --quick    # --subset 500 (tests)
"""

from __future__ import annotations

import time

_T0 = time.time()  # this script's first line: the interpreter and site are up

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fashion_resnet18.py"
RESULT = "RESULT "


class FirstStep(BaseException):
    """Raised after the first optimizer step (not an Exception: nothing on the way catches it)."""


def _import_example() -> Any:
    spec = importlib.util.spec_from_file_location("fashion_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(launched: float, argv: list[str]) -> int:
    """Run the example to its first step, printing the time stamps since ``launched``."""
    marks = {"interpreter": _T0}
    import torch  # noqa: F401

    marks["import torch"] = time.time()
    import transferkit as tk

    marks["import transferkit"] = time.time()
    example = _import_example()
    marks["the example's other imports"] = time.time()

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            marks[name] = time.time()
            return out
        return wrapper

    class Stop(tk.Callback):
        def on_fit_start(self, trainer: Any) -> None:
            marks["fine_tune until training starts"] = time.time()

        def on_batch_end(self, trainer: Any) -> None:
            marks["the first optimizer step"] = time.time()
            raise FirstStep

    timings: dict[str, float] = {}

    def fine_tune(*args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), Stop()]
        start = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            timings["fine_tune_called"] = start

    example.fashion_mnist = timed("data (fashion_mnist)", example.fashion_mnist)
    example.build_model = timed("model (build_model)", example.build_model)
    original, example.tk.fine_tune = example.tk.fine_tune, fine_tune
    try:
        example.main(argv)
        sys.exit("startup: the example ended without training a step")
    except FirstStep:
        pass
    finally:
        example.tk.fine_tune = original
    # The loaders are built between the model and the fine_tune call.
    marks = dict(sorted(marks.items(), key=lambda kv: kv[1]))
    rows, last = [], launched
    for name, at in marks.items():
        if name == "fine_tune until training starts":
            rows.append({"step": "loaders (TensorLoader)",
                         "s": round(timings["fine_tune_called"] - last, 2),
                         "at": round(timings["fine_tune_called"] - launched, 2)})
            last = timings["fine_tune_called"]
        rows.append({"step": name, "s": round(at - last, 2), "at": round(at - launched, 2)})
        last = at
    print(RESULT + json.dumps({"steps": rows, "torch_threads": torch.get_num_threads()}))
    return 0


def importtime(python: str) -> dict[str, list[dict[str, Any]]]:
    """Return the slowest imports of the example's modules under ``-X importtime``."""
    code = (f"import importlib.util as u; s = u.spec_from_file_location('ex', {str(EXAMPLE)!r});"
            " s.loader.exec_module(u.module_from_spec(s))")
    proc = subprocess.run([python, "-X", "importtime", "-c", code], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append({"module": name.strip(), "depth": depth, "self_ms": int(own) / 1000,
                     "cumulative_ms": int(cumulative) / 1000})
    top = sorted((r for r in rows if r["depth"] == 0), key=lambda r: -r["cumulative_ms"])
    own = sorted(rows, key=lambda r: -r["self_ms"])
    tk_rows = sorted((r for r in rows if r["module"].startswith("transferkit")),
                     key=lambda r: -r["self_ms"])
    return {"top_level": top[:10], "self": own[:10], "transferkit_self": tk_rows[:8],
            "total_ms": round(sum(r["self_ms"] for r in rows), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="--subset 500: seconds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (the example's)")
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.child is not None:
        return child(args.child, rest)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        ex_args = ["--backbone", "efficientnet_lite0", "--out", out]
        ex_args += ["--threads", str(args.threads)] if args.threads else []
        ex_args += ["--subset", "500"] if args.quick else []
        launched = time.time()
        proc = subprocess.run([sys.executable, __file__, "--child", repr(launched), *ex_args],
                              capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, TRANSFERKIT_OFFLINE="1",
                                       PYTHONPATH=str(ROOT)))
    if proc.returncode != 0:
        sys.exit(f"startup: the example's run failed ({proc.returncode}):\n"
                 f"{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)][-1]
    result = json.loads(line.removeprefix(RESULT))
    imports = importtime(sys.executable)
    print(f"{'step (example, ' + ('--subset 500' if args.quick else 'defaults') + ')':<40}"
          f" {'s':>7} {'at s':>7}")
    for r in result["steps"]:
        print(f"{r['step']:<40} {r['s']:>7.2f} {r['at']:>7.2f}")
    print(f"imports under -X importtime: {imports['total_ms'] / 1000:.2f} s in all; slowest "
          "top-level: " + ", ".join(f"{r['module']} {r['cumulative_ms'] / 1000:.2f} s"
                                    for r in imports["top_level"][:6]))
    print("slowest transferkit modules (own time): " + ", ".join(
        f"{r['module']} {r['self_ms']:.0f} ms" for r in imports["transferkit_self"][:5]))
    print(RESULT + json.dumps({**result, "imports": imports, "quick": args.quick,
                               "load_before": round(load, 2),
                               "load_after": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
