"""Train a tiny CNN on random data with shuffling, dropout and random augmentation.

Used by tests/test_trainer.py in subprocesses (exact resume, SIGINT). Writes
``final.pt`` (weights) into ``out_dir`` when fit returns, and prints progress lines
(``STEP <n>``) that the tests wait for.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferkit.train import Trainer, WarmupCosine
from transferkit.train.callbacks import Callback


class NoisyData(Dataset):
    """Random images whose label is the sign pattern of two pixels, with random augmentation."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 1, 6, 6, generator=g)
        self.y = (self.x[:, 0, 0, 0] > 0).long() * 2 + (self.x[:, 0, 5, 5] > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i] + 0.05 * torch.randn(1, 6, 6)  # draws from the global torch RNG
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.y[i]


class StopAfter(Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.epoch >= self.epochs:
            trainer.should_stop = True


class Report(Callback):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_batch_end(self, trainer: Trainer) -> None:
        print(f"STEP {trainer.step}", flush=True)
        time.sleep(self.delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 4)
    )
    loader = DataLoader(NoisyData(40), batch_size=6, shuffle=True)  # 7 batches, last short
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = args.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup_steps=3, total_steps=steps))
    callbacks: list[Callback] = [Report(args.delay)]
    if args.stop_after is not None:
        callbacks.append(StopAfter(args.stop_after))
    trainer = Trainer(
        model,
        epochs=args.epochs,
        optimizer=opt,
        scheduler=sched,
        device="cpu",
        out_dir=args.out_dir,
        callbacks=callbacks,
        topk=(1, 2),
        progress=False,
    )
    trainer.fit(loader, DataLoader(NoisyData(13), batch_size=5), resume=args.resume or None)
    torch.save(model.state_dict(), Path(args.out_dir) / "final.pt")
    print("INTERRUPTED" if trainer.interrupted else "DONE", trainer.epoch, trainer.step, flush=True)


if __name__ == "__main__":
    main()
