"""Train a tiny multi-label model with DDP on CPU, mixing batches; run with torchrun (2 CPUs).

Rank 0 writes ``multilabel.json`` into ``out_dir``: the validation mAP and F1 the Trainer
reported (each rank evaluates its own share of an odd-sized split; the logits are
gathered) and the same metrics computed in this one process over the whole split, and
the Gloo threads left after ``cleanup()`` (none: the group is gone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from ddp_train import gloo_threads  # this script's folder is first on sys.path
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transferkit.train.distributed import cleanup
from transferkit.train.multilabel_metrics import average_precision, per_class_scores
from transferkit.train.trainer import Trainer


def main() -> None:
    out_dir = Path(sys.argv[1])
    g = torch.Generator().manual_seed(1)
    targets = (torch.rand(60, 3, generator=g) < 0.4).float()
    targets[::5] = torch.tensor([1.0, 1.0, 0.0])  # no all one-hot first batch
    images = torch.randn(60, 2, 4, 4, generator=g) + targets[:, :2, None, None]
    train, val = TensorDataset(images[:37], targets[:37]), TensorDataset(images[37:], targets[37:])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 3))
    trainer = Trainer(model, epochs=2, lr=1e-2, device="cpu", out_dir=out_dir, mixup=0.2,
                      class_weights="balanced", monitor="val_map", progress=False)
    history = trainer.fit(DataLoader(train, batch_size=4, shuffle=True),
                          DataLoader(val, batch_size=4))
    found = trainer.evaluate(DataLoader(val, batch_size=4))
    with torch.no_grad():
        logits = model.eval()(val.tensors[0])
    expected_map = average_precision(logits, val.tensors[1] >= 0.5).nanmean().item()
    f1 = per_class_scores(logits, val.tensors[1])["f1"]
    weights = [torch.zeros(3) for _ in range(dist.get_world_size())]
    dist.all_gather(weights, trainer.class_weights)
    rank = dist.get_rank()
    cleanup()
    if rank == 0:
        (out_dir / "multilabel.json").write_text(json.dumps({
            "gloo_threads_after_cleanup": gloo_threads(),
            "map": found["map"], "f1": found["f1"], "count": found["count"],
            "expected_map": expected_map, "expected_f1": f1[~f1.isnan()].mean().item(),
            "history_keys": sorted(history[-1]), "same_weights": bool(
                torch.equal(weights[0], weights[1])),
            "weights": trainer.class_weights.tolist(),
            "expected_weights": ((37 - train.tensors[1].sum(0)) / train.tensors[1].sum(0))
            .tolist()}))


if __name__ == "__main__":
    main()
