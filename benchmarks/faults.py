"""The fault matrix in one command: every fault the library promises to survive, one line each.

Each check injects one fault into a real run (tiny models on the CPU, temporary folders)
and verifies what docs/trainer.md ("What is guaranteed") promises: the error is the typed
one and names what is wrong, the model, optimizer and files are exactly as they were, a
killed or interrupted run resumes. One line per fault: ``held`` or ``BROKEN`` and what was
checked; the exit code is 1 if any check is broken.

Usage::

    python benchmarks/faults.py            # every check (about a minute on 2 cores)
    python benchmarks/faults.py --kills 3  # fewer SIGKILLs in the kill check

The last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, print_result
from torch import nn

import transferkit as tk  # after _common: it puts the repository root on sys.path
from transferkit.errors import CheckpointError, NonFiniteLossError, WeightsError
from transferkit.train.distributed import DistInfo, shard_for_training
from transferkit.train.state import load_into, read_state

CHECKS: list[tuple[str, Callable[[Path, argparse.Namespace], str]]] = []


def check(name: str) -> Callable[[Callable[[Path, argparse.Namespace], str]], Any]:
    """Register a fault check: it returns what it verified, or raises AssertionError."""
    def register(fn: Callable[[Path, argparse.Namespace], str]) -> Any:
        CHECKS.append((name, fn))
        return fn
    return register


def _model(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return tk.create("resnet18", num_classes, in_chans=1, pretrained=False)


def _batches(n: int = 2, num_classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 1, 16, 16, generator=g), torch.arange(4) % num_classes)
            for _ in range(n)]


def _trainer(model: nn.Module, out: Path | None = None, **kw: Any) -> tk.Trainer:
    return tk.Trainer(model, epochs=kw.pop("epochs", 1), device="cpu", progress=False,
                      out_dir=out, **kw)


def _snapshot(model: nn.Module, optimizer: Any = None) -> tuple[dict, Any]:
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    return tensors, copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None


def _same(model: nn.Module, snap: dict) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def _flip(path: Path, member_hint: str = "data/") -> str:
    """Flip 16 bytes in the middle of the largest tensor entry of a zip; return its name."""
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if member_hint in i.filename]
        target = max(infos, key=lambda i: i.file_size)
        offset = target.header_offset
        with path.open("rb") as f:
            f.seek(offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(
                f.read(2), "little")
        start = offset + 30 + name_len + extra_len + target.file_size // 2
    with path.open("r+b") as f:
        f.seek(start)
        data = f.read(16)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))
    return target.filename


@check("checkpoint with flipped bytes")
def flipped_checkpoint(tmp: Path, args: argparse.Namespace) -> str:
    out = tmp / "run"
    _trainer(_model(), out).fit(_batches())
    entry = _flip(out / "last.pt")
    model = _model()
    trainer = _trainer(model, out, epochs=2)
    snap, _ = _snapshot(model)
    try:
        trainer.fit(_batches(), resume=True)
    except CheckpointError as exc:
        assert entry.split("/")[-1] in str(exc), str(exc)
        assert _same(model, snap), "the model changed"
        return f"CheckpointError names {entry!r}; the model trained nothing"
    raise AssertionError("the damaged checkpoint loaded")


@check("model file with flipped bytes")
def flipped_model_file(tmp: Path, args: argparse.Namespace) -> str:
    path = tk.save_model(_model(), tmp / "m.safetensors", backbone="resnet18",
                         class_names=["a", "b", "c"], image_size=16)
    raw = bytearray(path.read_bytes())
    mid = len(raw) - len(raw) // 3  # inside the tensor data, past the JSON header
    raw[mid:mid + 16] = bytes(b ^ 0xFF for b in raw[mid:mid + 16])
    path.write_bytes(bytes(raw))
    try:
        tk.load_model(path)
    except CheckpointError as exc:
        return f"CheckpointError: {str(exc)[:90]}..."
    raise AssertionError("the damaged model file loaded")


@check("weights file with flipped bytes")
def flipped_weights(tmp: Path, args: argparse.Namespace) -> str:
    path = tmp / "w.pth"
    torch.save(_model(1000).state_dict(), path)
    entry = _flip(path)
    try:
        tk.create("resnet18", 3, pretrained=str(path))
    except WeightsError as exc:
        assert entry.split("/")[-1] in str(exc), str(exc)
        return f"WeightsError names {entry!r}"
    raise AssertionError("the damaged weights loaded")


@check("truncated checkpoint")
def truncated(tmp: Path, args: argparse.Namespace) -> str:
    path = tk.save_checkpoint({"w": torch.randn(1000)}, tmp / "c.pt")
    path.write_bytes(path.read_bytes()[:-200])
    try:
        tk.load_checkpoint(path)
    except CheckpointError:
        return "CheckpointError"
    raise AssertionError("a truncated checkpoint loaded")


@check("resume into another head (5 -> 7 classes)")
def other_head(tmp: Path, args: argparse.Namespace) -> str:
    _trainer(_model(5), tmp / "five").fit(_batches(num_classes=5))
    model = _model(7)
    trainer = _trainer(model, tmp / "seven", epochs=2)
    trainer.fit(_batches(num_classes=7))  # a run in progress: optimizer and schedule state
    snap, opt = _snapshot(model, trainer.optimizer)
    sched = copy.deepcopy(trainer.scheduler.state_dict())
    try:
        load_into(read_state(tmp / "five" / "last.pt"), model=model,
                  optimizer=trainer.optimizer, scheduler=trainer.scheduler, scaler=None,
                  path=tmp / "five" / "last.pt")
    except CheckpointError:
        assert _same(model, snap), "tensors were overwritten"
        after = trainer.optimizer.state_dict()
        assert after["param_groups"] == opt["param_groups"], "the optimizer's groups changed"
        assert all(torch.equal(a, b) for k in opt["state"] for a, b in
                   zip(after["state"][k].values(), opt["state"][k].values())), "its state"
        assert trainer.scheduler.state_dict() == sched, "the scheduler changed"
        return "CheckpointError; model, optimizer and scheduler bitwise as before"
    raise AssertionError("a 5-class checkpoint loaded into a 7-class model")


@check("malicious pickle in a checkpoint")
def malicious(tmp: Path, args: argparse.Namespace) -> str:
    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    torch.save({"x": Evil()}, buffer)
    path = tmp / "evil.pt"
    path.write_bytes(buffer.getvalue())
    for load in (tk.load_checkpoint, lambda p: tk.create("resnet18", 3, pretrained=str(p))):
        try:
            load(path)
        except (CheckpointError, WeightsError):
            pass
        else:
            raise AssertionError("the pickle loaded")
    assert not marker.exists(), "the pickle's code ran"
    return "refused by load_checkpoint and by weights loading; its code never ran"


@check("SIGKILL while saving checkpoints")
def sigkill(tmp: Path, args: argparse.Namespace) -> str:
    path = tmp / "last.pt"
    script = tmp / "save_loop.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        from transferkit.train.checkpoint import save_checkpoint
        i = int(sys.argv[2])
        while True:
            save_checkpoint({"i": i, "w": torch.full((1_000_000,), float(i))}, sys.argv[1])
            print(i, flush=True)
            i += 1
    """))
    rng, start = random.Random(0), 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(args.kills):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(start)],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        state = tk.load_checkpoint(path)
        assert torch.equal(state["w"], torch.full((1_000_000,), float(state["i"])))
        start = state["i"] + 1
    # A killed write cannot delete its own temporary file: hidden (.last.pt.*.tmp), harmless.
    leftovers = [p.name for p in tmp.iterdir() if p.name.endswith(".tmp")]
    return (f"{args.kills} kills, last.pt complete after each; {len(leftovers)} hidden "
            "temporary file(s) of killed writes left")


@check("NaN loss")
def nan_loss(tmp: Path, args: argparse.Namespace) -> str:
    out = tmp / "run"
    model = _model()
    _trainer(model, out).fit(_batches())
    before = (out / "last.pt").read_bytes()
    bad = [(torch.full((4, 1, 16, 16), float("nan")), torch.arange(4) % 3)]
    try:
        _trainer(model, out, epochs=2).fit(bad, resume=True)
    except NonFiniteLossError:
        assert (out / "last.pt").read_bytes() == before, "the last good checkpoint changed"
        return "NonFiniteLossError; the last good checkpoint is byte for byte unchanged"
    raise AssertionError("a NaN loss trained on")


@check("full disk while writing a checkpoint")
def full_disk(tmp: Path, args: argparse.Namespace) -> str:
    path = tk.save_checkpoint({"v": 1}, tmp / "c.pt")
    real = os.replace

    def broken(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    os.replace = broken
    try:
        tk.save_checkpoint({"v": 2}, path)
    except CheckpointError:
        pass
    else:
        raise AssertionError("the failed write raised nothing")
    finally:
        os.replace = real
    assert tk.load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp.iterdir()] == ["c.pt"], "a temporary file was left"
    return "CheckpointError; the previous checkpoint kept, no temporary file left"


@check("DDP with a user's SubsetRandomSampler (2 ranks simulated)")
def sampler(tmp: Path, args: argparse.Namespace) -> str:
    data = torch.utils.data.TensorDataset(torch.arange(100).float(), torch.zeros(100))
    subset = torch.utils.data.SubsetRandomSampler(list(range(10)))
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=subset)
    seen = []
    for rank in (0, 1):
        shard = shard_for_training(loader, DistInfo(rank=rank, world_size=2), seed=0)
        shard.sampler.set_epoch(0) if hasattr(shard.sampler, "set_epoch") else None
        seen.append({int(x) for batch in shard for x in batch[0]})
    assert max(max(s) for s in seen) < 10, seen
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(10)), seen
    return "the ranks' shares are disjoint and stay inside the subset 0..9"


@check("frozen body's BatchNorm under training")
def frozen_bn(tmp: Path, args: argparse.Namespace) -> str:
    model = _model()
    tk.freeze(model, "body")
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    _trainer(model, epochs=1, optimizer=torch.optim.SGD(model.fc.parameters(), lr=0.1)).fit(
        _batches())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    return f"{len(stats)} running statistics bitwise unchanged"


@check("a compiled model saved and loaded")
def compiled(tmp: Path, args: argparse.Namespace) -> str:
    model = _model()
    path = tk.save_model(torch.compile(model, backend="eager"), tmp / "c.safetensors",
                         backbone="resnet18", class_names=["a", "b", "c"], image_size=16)
    loaded, _ = tk.load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values()))
    return "saved under the model's own names, loaded back bitwise"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs in the kill check")
    args = p.parse_args(argv)
    rows, broken = [], 0
    for name, fn in CHECKS:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            try:
                detail, held = fn(Path(tmp), args), True
            except Exception as exc:  # noqa: BLE001  # a broken guarantee, reported
                detail, held = f"{type(exc).__name__}: {exc}"[:200], False
            seconds = time.perf_counter() - start
        broken += not held
        rows.append({"fault": name, "held": held, "detail": detail, "seconds": round(seconds, 2)})
        print(f"{'held  ' if held else 'BROKEN'} {name}: {detail} ({seconds:.1f} s)", flush=True)
    print(f"{len(rows) - broken} of {len(rows)} guarantees held")
    print_result({"checks": rows, "broken": broken})
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
