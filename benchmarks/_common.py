"""Shared helpers of the speed benchmarks (seed_recipe, throughput, memory, gpu_bench).

Not part of the library: benchmark scripts only. Importing this module puts the
repository root on ``sys.path`` so the scripts run as ``python benchmarks/<name>.py``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH_SIZE = 64  # the seed notebook's
RESULT_PREFIX = "RESULT "


@dataclass
class Data:
    """FashionMNIST as uint8 tensors (or a synthetic stand-in of the same shapes)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str


def tiny_cnn() -> torch.nn.Module:
    """Return the small CNN of the ``--quick`` modes (1-channel input, 10 classes)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def load_data(root: str | None = None, *, synthetic_ok: bool = True) -> Data:
    """Return FashionMNIST from ``transferkit.data.fashion_mnist`` (offline), else synthetic data.

    Args:
        root: A folder holding the four idx files (default: transferkit's search paths,
            which include the Debian package ``dataset-fashion-mnist``).
        synthetic_ok: Fall back to random images when the files are missing (``--quick``
            runs in the test suite); ``False`` re-raises the ``DataNotFoundError``.
    """
    from transferkit.data import fashion_mnist
    from transferkit.errors import DataNotFoundError

    try:
        d = fashion_mnist(root, offline=True)
        return Data(d.train_images, d.train_labels, d.test_images, d.test_labels, str(d.source))
    except DataNotFoundError:
        if not synthetic_ok:
            raise
    g = torch.Generator().manual_seed(0)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        return images, torch.randint(0, 10, (n,), generator=g)

    (xtr, ytr), (xte, yte) = part(60000), part(10000)
    return Data(xtr, ytr, xte, yte, "synthetic")


class PILFashionMNIST(torch.utils.data.Dataset):
    """Yield ``(transform(PIL image), int label)`` like torchvision's ``FashionMNIST``.

    Same ``__getitem__`` as torchvision (``Image.fromarray(img.numpy(), mode="L")``), over
    in-memory tensors, so nothing is downloaded or checksummed.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any) -> None:
        self.data, self.targets, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.fromarray(self.data[index].numpy(), mode="L")
        return self.transform(img), int(self.targets[index])


def seed_loader(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    image_size: int | None,
    batch_size: int = BATCH_SIZE,
    shuffle: bool = True,
) -> torch.utils.data.DataLoader:
    """Build the seed notebook's loader: per-sample PIL ``Resize`` + ``ToTensor``."""
    import torchvision

    trans: list[Any] = []
    if image_size:
        trans.append(torchvision.transforms.Resize(size=image_size))
    trans.append(torchvision.transforms.ToTensor())
    dataset = PILFashionMNIST(images, labels, torchvision.transforms.Compose(trans))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def subset(images: torch.Tensor, labels: torch.Tensor, n: int | None, *, seed: int = 0):
    """Return ``n`` random samples (all when ``n`` is None or too large), same for any run."""
    if n is None or n >= len(images):
        return images, labels
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx], labels[idx]


def machine() -> dict[str, Any]:
    """Describe the machine and software the numbers were measured on."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    for key, probe in (("cpu_avx512_bf16", "_is_avx512_bf16_supported"),
                       ("cpu_amx", "_is_amx_tile_supported")):
        if hasattr(torch.cpu, probe):  # private probes: absent in some torch versions
            info[key] = bool(getattr(torch.cpu, probe)())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MiB (Linux: ru_maxrss is KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


@dataclass
class ChildRun:
    """What :func:`run_child` saw of one child process."""

    returncode: int | None  # None: killed at the timeout
    stdout: str
    wall_s: float
    peak_rss_mb: float | None  # the child's own ru_maxrss; None when it was killed
    cpu_s: float | None = None  # the child's user + system CPU time; None when killed


# A tiny Python process that forks, runs the command and writes the child's exit code,
# ru_maxrss (KiB) and CPU seconds. Needed because Linux carries a process's peak RSS across
# exec, and a child forked (or vforked) straight from a benchmark's parent starts at the
# parent's peak.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(f"{code} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(code if 0 <= code < 256 else 1)
"""


def run_child(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT,
              stderr: Path | None = None, timeout: float | None = None) -> ChildRun:
    """Run ``cmd`` and return its stdout, wall time, its own peak RSS and its CPU time.

    On a shared machine the CPU time (user + system, of the child and the processes it
    waited for) moves much less with the load than the wall time: a single-threaded child
    that waits for a core is not charged for the wait.

    The command runs under a small launcher process that reads the child's ``ru_maxrss``
    with ``os.wait4``: ``RUSAGE_CHILDREN`` would be the maximum over every child so far,
    and a child forked from this (large) process would inherit its peak. stdout goes
    through a temporary file (no pipe to fill); stderr to ``stderr`` (default: discarded).
    A child still running after ``timeout`` seconds is killed with its process group
    (``returncode`` None).
    """
    start = time.perf_counter()
    with open(stderr or os.devnull, "w") as err, tempfile.TemporaryFile("w+") as out, \
            tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage"
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(report), *cmd],
                                stdout=out, stderr=err, cwd=cwd, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        stdout = out.read()
        if not report.exists():  # killed before the child ended
            return ChildRun(None, stdout, wall, None)
        code, maxrss, cpu = report.read_text().split()
    return ChildRun(int(code), stdout, wall, int(maxrss) / 1024, float(cpu))


EXAMPLE = ROOT / "examples" / "fashion_resnet18.py"


def import_example() -> Any:
    """Import ``examples/fashion_resnet18.py`` as a module (its ``parse_args``, defaults)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fashion_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def print_result(result: dict[str, Any]) -> None:
    """Print the machine-readable last line: ``RESULT {json}``."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict[str, Any]:
    """Return the JSON of the last ``RESULT`` line of a benchmark's output."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        raise ValueError("no 'RESULT {...}' line in the output")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """Render ``rows`` as a Markdown table; ``columns`` are ``(key, header)`` pairs."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(h for _, h in columns) + " |"]
    out.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        out.append("| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(out)
