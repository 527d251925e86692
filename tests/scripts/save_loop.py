"""Save checkpoints in a loop forever; the test SIGKILLs this process at random moments."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from transferkit.train.checkpoint import save_checkpoint

path = Path(sys.argv[1])
start = int(sys.argv[2])
i = start
while True:
    # A few MB so that a write takes long enough to be interrupted in the middle.
    save_checkpoint({"i": i, "w": torch.full((1_000_000,), float(i))}, path)
    print(i, flush=True)
    i += 1
