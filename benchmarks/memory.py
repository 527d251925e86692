"""Peak memory of full fine-tuning vs ``bitfit`` vs ``body``-frozen training (ResNet-18).

Each configuration runs in a fresh subprocess, so peaks do not mix: ResNet-18 (1 input
channel, random init; memory does not depend on the weights' values) at 64 px, batch 64,
a few steps of the Trainer's default optimizer (AdamW over ``param_groups(...,
include_frozen=True)``, so frozen parameters *are* in the optimizer). Reported per
configuration:

- peak RSS (``ru_maxrss``) before training and after it, and the difference;
- optimizer state bytes (the sum of the AdamW state tensors) and how many parameters hold
  state, against how many are in the optimizer and how many are trainable (AdamW creates
  no state for a parameter whose ``.grad`` is None);
- activation bytes: the tensors autograd saves for backward during one training forward
  pass (counted with ``torch.autograd.graph.saved_tensors_hooks``, parameters excluded,
  each storage once).

Usage::

    python benchmarks/memory.py            # ResNet-18, 64 px, batch 64, 3 steps
    python benchmarks/memory.py --quick    # 32 px, batch 8, 1 step (tests)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from _common import machine, markdown_table, parse_result, peak_rss_mb, print_result

POLICIES = ("full", "bitfit", "body")
MiB = 2**20


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Return the bytes autograd saves for backward in one forward pass (params excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    if loss.requires_grad:
        loss.backward()  # frees the graph; the grads are dropped below
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def child(policy: str, size: int, batch_size: int, steps: int) -> dict:
    """Train one configuration in this process and return its measurements."""
    from transferkit.backbones import create
    from transferkit.train import Trainer

    torch.manual_seed(0)
    model = create("resnet18", 10, in_chans=1, pretrained=False)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(batch_size, 1, size, size, generator=g),
         torch.randint(0, 10, (batch_size,), generator=g))
        for _ in range(steps)
    ]
    trainer = Trainer(model, epochs=1, device="cpu", freeze=None if policy == "full" else policy,
                      progress=False)
    before = peak_rss_mb()
    trainer.fit(batches)
    peak = peak_rss_mb()
    opt = trainer.optimizer
    in_opt = [p for group in opt.param_groups for p in group["params"]]
    state_tensors = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "policy": policy,
        "peak_rss_before_mb": before,
        "peak_rss_mb": peak,
        "train_rss_mb": peak - before,
        "optimizer_state_mb": sum(t.numel() * t.element_size() for t in state_tensors) / MiB,
        "params_in_optimizer": sum(p.numel() for p in in_opt),
        "params_with_state": sum(p.numel() for p in opt.state if opt.state[p]),
        "trainable_params": sum(p.numel() for p in trainable),
        "activation_mb": saved_activation_bytes(model, *batches[0]) / MiB,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=None, help="default 64")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64")
    parser.add_argument("--steps", type=int, default=None, help="default 3")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--quick", action="store_true", help="32 px, batch 8, 1 step (tests)")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = args.image_size or (32 if args.quick else 64)
    batch_size = args.batch_size or (8 if args.quick else 64)
    steps = args.steps or (1 if args.quick else 3)
    if args.child:
        torch.set_num_threads(1)  # memory does not need speed; one thread keeps it steady
        print_result(child(args.child, size, batch_size, steps))
        return {}

    rows = []
    for policy in args.policies.split(","):
        cmd = [sys.executable, __file__, "--child", policy, "--image-size", str(size),
               "--batch-size", str(batch_size), "--steps", str(steps)]
        cmd += ["--quick"] if args.quick else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"child {policy!r} failed with exit code {proc.returncode}")
        rows.append(parse_result(proc.stdout))
        print(json.dumps(rows[-1]), flush=True)
    full = rows[0]
    for row in rows:
        for key in ("train_rss_mb", "optimizer_state_mb", "activation_mb"):
            row[f"{key}_vs_full"] = row[key] / full[key] if full[key] else None
    columns = [("policy", "policy"), ("trainable_params", "trainable params"),
               ("params_in_optimizer", "params in optimizer"),
               ("params_with_state", "params with AdamW state"),
               ("optimizer_state_mb", "optimizer state MiB"),
               ("activation_mb", "saved activations MiB"),
               ("peak_rss_before_mb", "RSS before fit MiB"), ("peak_rss_mb", "peak RSS MiB"),
               ("train_rss_mb", "peak - before MiB")]
    print(markdown_table(rows, columns))
    result = {"benchmark": "memory", "backbone": "resnet18", "image_size": size,
              "batch_size": batch_size, "steps": steps, "rows": rows, **machine()}
    print_result(result)
    return result


if __name__ == "__main__":
    main()
