"""Train a tiny model with DDP on CPU; run with ``torchrun --standalone --nproc_per_node=2``.

Rank 0 writes ``result.json`` into ``out_dir``: whether the parameters are identical on
every rank, and the sample counts evaluation saw (the data set sizes are odd on purpose).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.errors import DataError
from transferkit.train.distributed import cleanup
from transferkit.train.trainer import Trainer


def main() -> None:
    out_dir = Path(sys.argv[1])
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    train = TensorDataset(
        torch.randn(37, 2, 4, 4, generator=g), torch.randint(0, 3, (37,), generator=g)
    )
    val = TensorDataset(
        torch.randn(23, 2, 4, 4, generator=g), torch.randint(0, 3, (23,), generator=g)
    )
    # Different initial weights per rank: DDP must broadcast rank 0's.
    torch.manual_seed(100 + int(os.environ["RANK"]))
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(
        model, epochs=3, optimizer=opt, device="cpu", out_dir=out_dir, topk=(1,), progress=False
    )
    assert trainer.dist.world_size == 2
    history = trainer.fit(
        DataLoader(train, batch_size=4, shuffle=True), DataLoader(val, batch_size=4)
    )
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    ev_loader = trainer.evaluate(DataLoader(val, batch_size=4))
    batches = [(val.tensors[0][i : i + 5], val.tensors[1][i : i + 5]) for i in range(0, 23, 5)]
    ev_list = trainer.evaluate(batches)
    try:  # transferkit's own loader, built after the Trainer: it takes the rank itself
        from transferkit.data.pipeline import TensorLoader

        loader = TensorLoader(torch.rand(23, 2, 4, 4, generator=g), val.tensors[1], batch_size=4)
        tensor_loader_count = trainer.evaluate(loader)["count"]
    except ImportError:
        tensor_loader_count = None
    # Bad labels in rank 1's first batch only: both ranks must raise, neither may hang.
    # (A list is split batch by batch: rank 0 gets the first batch, rank 1 the second.)
    bad = [
        (torch.randn(4, 2, 4, 4), torch.tensor([0, 1, 2, 0])),
        (torch.randn(4, 2, 4, 4), torch.tensor([0, 1, 2, 9])),
    ]
    try:
        trainer.fit(bad, epochs=5)
        bad_data = "no error"
    except DataError as exc:
        bad_data = str(exc)
    messages = [None, None]
    dist.all_gather_object(messages, bad_data)
    steps = torch.tensor([trainer.step])
    all_steps = [torch.zeros_like(steps) for _ in range(2)]
    dist.all_gather(all_steps, steps)
    restored = trainer.restored_epoch or len(history)
    if trainer.dist.is_main:
        result = {
            "identical": all(torch.equal(gathered[0], t) for t in gathered[1:]),
            "loader_count": ev_loader["count"],
            "list_count": ev_list["count"],
            "tensor_loader_count": tensor_loader_count,
            "bad_data": messages,
            "history_len": len(history),
            "steps": [int(s) for s in all_steps],
            # The model ends with the best epoch's weights (restore_best), on every rank.
            "restored_epoch": trainer.restored_epoch,
            "best_epoch": trainer.best["epoch"],
            "eval_matches_history": ev_loader["acc"] == history[restored - 1]["val_acc"],
        }
    cleanup()
    if trainer.dist.is_main:
        # The Trainer dropped its DDP wrapper, so cleanup() destroyed the group and joined
        # Gloo's threads; threads left to interpreter shutdown can abort the process.
        result["gloo_threads_after_cleanup"] = gloo_threads()
        (out_dir / "result.json").write_text(json.dumps(result))


def gloo_threads() -> list[str] | None:
    """Names of this process's Gloo threads (Linux only; ``None`` elsewhere)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    names = [(task / "comm").read_text().strip() for task in tasks.iterdir()]
    return [name for name in names if "gloo" in name]


if __name__ == "__main__":
    main()
