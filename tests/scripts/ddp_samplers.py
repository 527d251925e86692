"""The user's samplers under DDP; run with ``torchrun --standalone --nproc_per_node=2``.

Every data set records the indices it serves, epoch by epoch, so the test can check what
each rank trained and validated on. Rank 0 writes ``samplers.json`` into ``out_dir``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    Sampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from transferkit.data import BalancedSampler
from transferkit.errors import ConfigError
from transferkit.train.callbacks import Callback
from transferkit.train.distributed import cleanup
from transferkit.train.trainer import Trainer

FEATURES = torch.randn(100, 1, 2, 2, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(100) % 3


class Recorded(Dataset):
    """100 samples; ``epochs[e]`` lists the indices served during epoch ``e``."""

    def __init__(self) -> None:
        self.epochs: list[list[int]] = []

    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int):
        if self.epochs:
            self.epochs[-1].append(int(i))
        return FEATURES[i], LABELS[i]


class Record(Callback):
    """Start a new list of served indices at every epoch (after the first-batch checks)."""

    def __init__(self, *datasets: Recorded) -> None:
        self.datasets = datasets

    def on_epoch_start(self, trainer) -> None:
        for ds in self.datasets:
            ds.epochs.append([])


class StopAt(Callback):
    """Stop during optimizer step ``step`` on every rank, as Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer) -> None:
        if trainer.step == self.step - 1:
            trainer._sigint = True


class PythonRandom(Sampler[int]):
    """Draws from Python's random, seeded per rank: the ranks disagree."""

    def __init__(self) -> None:
        self.rng = random.Random(int(os.environ["RANK"]))

    def __iter__(self):
        return iter(self.rng.sample(range(100), 10))

    def __len__(self) -> int:
        return 10


def trainer(out_dir: Path | None = None, epochs: int = 2, callbacks=()) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model, epochs=epochs, optimizer=opt, device="cpu", out_dir=out_dir,
                   topk=(1,), progress=False, callbacks=list(callbacks), seed=3)


def fit_and_record(train_sampler=None, val_sampler=None, batch_sampler=None) -> dict:
    train_ds, val_ds = Recorded(), Recorded()
    if batch_sampler is not None:
        train = DataLoader(train_ds, batch_sampler=batch_sampler)
    else:
        train = DataLoader(train_ds, batch_size=2, sampler=train_sampler)
    val = None if val_sampler is None else DataLoader(val_ds, batch_size=2, sampler=val_sampler)
    t = trainer(callbacks=[Record(train_ds, val_ds)])
    t.fit(train, val)
    out = {"train": train_ds.epochs, "val": val_ds.epochs, "steps": t.step}
    if val is not None:
        val_ds.epochs.append([])
        out["evaluate_count"] = t.evaluate(val)["count"]
        out["evaluate"] = val_ds.epochs.pop()
    return out


def params(t: Trainer) -> list[list[float]]:
    return [p.detach().flatten().tolist() for p in t.model.parameters()]


def resume_exactly(out_dir: Path) -> dict:
    """A run stopped mid-epoch and resumed equals a straight run (SubsetRandomSampler)."""

    def loader():
        return DataLoader(Recorded(), batch_size=2, sampler=SubsetRandomSampler(range(40, 60)))

    straight = trainer(out_dir / "straight", epochs=3)
    straight.fit(loader())
    stopped = trainer(out_dir / "resumed", epochs=3, callbacks=[StopAt(8)])  # epoch 2, batch 3
    stopped.fit(loader())
    dist.barrier()  # rank 0 has written last.pt before any rank reads it
    resumed = trainer(out_dir / "resumed", epochs=3)
    resumed.fit(loader(), resume=True)
    return {
        "stopped_at": [stopped.step, stopped.batch_in_epoch],
        "steps": resumed.step,
        "same": params(straight) == params(resumed),
    }


def main() -> None:
    out_dir = Path(sys.argv[1])
    weights = torch.tensor([0.0, 1.0] * 50)  # the even indices must never be drawn
    result = {
        "subset": fit_and_record(
            SubsetRandomSampler(range(10)), SubsetRandomSampler(range(90, 99))
        ),
        "weighted": fit_and_record(WeightedRandomSampler(weights, 16, replacement=True)),
        "batches": fit_and_record(
            batch_sampler=BatchSampler(SubsetRandomSampler(range(20, 30)), 3, drop_last=False)
        ),
        # 90 samples of class 0, 10 of class 1: drawn balanced, 20 per epoch.
        "balanced": fit_and_record(BalancedSampler([0] * 90 + [1] * 10, num_samples=20)),
    }
    try:
        trainer().fit(DataLoader(Recorded(), batch_size=2, sampler=PythonRandom()))
        result["python_random"] = "no error"
    except ConfigError as exc:
        result["python_random"] = str(exc)
    result["resume"] = resume_exactly(out_dir)
    gathered: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    cleanup()
    if int(os.environ["RANK"]) == 0:
        (out_dir / "samplers.json").write_text(json.dumps(gathered))


if __name__ == "__main__":
    main()
