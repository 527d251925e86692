"""Class-balanced sampling: BalancedSampler, balanced_indices and TensorLoader(balanced=True).

The 2-process DDP run of BalancedSampler is in tests/train/test_distributed.py
(tests/scripts/ddp_samplers.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferkit.data import BalancedSampler, TensorLoader, balanced_indices
from transferkit.data.balanced import class_balanced_weights
from transferkit.errors import ConfigError, DataError
from transferkit.recipes.cache import plain_loader
from transferkit.train import Callback, Trainer
from transferkit.train.batch_checks import set_data_epoch
from transferkit.train.distributed import DistInfo, shard_for_training
from transferkit.train.samplers import draw

LABELS = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)  # 90 / 9 / 1


def share(indices) -> list[float]:
    labels = LABELS[torch.as_tensor(list(indices))]
    return [float((labels == c).float().mean()) for c in range(3)]


def test_weights_give_every_class_the_same_total():
    w = class_balanced_weights(LABELS)
    assert [float(w[LABELS == c].sum()) for c in range(3)] == pytest.approx([1 / 3] * 3)
    assert float(w.sum()) == pytest.approx(1.0)
    # A class index with no sample (3 of 0, 1, 3) takes no share.
    assert class_balanced_weights([0, 0, 3]).tolist() == pytest.approx([0.25, 0.25, 0.5])


@pytest.mark.parametrize(("labels", "match"), [
    ([], "labels is empty"),
    ([[0, 1]], r"1-D sequence of integer class indices, got shape \(1, 2\)"),
    ([0.5, 1.0], "dtype torch.float32"),
    ([0, -1], "labels must be >= 0, got -1"),
])
def test_bad_labels_are_refused(labels, match):
    with pytest.raises(DataError, match=match):
        BalancedSampler(labels)


def test_balanced_indices_draw_each_class_about_equally_with_replacement():
    idx = balanced_indices(LABELS, 30_000, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (30_000,) and idx.dtype == torch.int64
    assert share(idx.tolist()) == pytest.approx([1 / 3] * 3, abs=0.015)
    assert int((idx == 99).sum()) > 9_000  # the single sample of class 2 repeats
    with pytest.raises(ConfigError, match="num_samples must be a positive integer, got 0"):
        balanced_indices(LABELS, 0, generator=torch.Generator())


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    sampler = BalancedSampler(LABELS, seed=5)
    assert len(sampler) == 100 and len(BalancedSampler(LABELS, num_samples=7)) == 7
    sampler.set_epoch(2)
    first = list(sampler)
    assert first == list(sampler)  # iterating again: the same epoch, the same draw
    expected = torch.multinomial(class_balanced_weights(LABELS), 100, replacement=True,
                                 generator=torch.Generator().manual_seed(5 + 2)).tolist()
    assert first == expected
    sampler.set_epoch(3)
    assert list(sampler) != first
    other = BalancedSampler(LABELS, seed=5)
    other.set_epoch(2)
    assert list(other) == first  # a new sampler (a resumed run) draws the same epoch
    with pytest.raises(ConfigError, match="seed must be an integer >= 0, got -1"):
        BalancedSampler(LABELS, seed=-1)


def test_trainer_draw_uses_its_seed_like_for_every_sampler():
    # Under DDP the Trainer draws every sampler from a generator seeded by its seed + epoch
    # (the `generator` attribute): with equal seeds, the single-process draw is the same.
    sampler = BalancedSampler(LABELS, seed=3)
    sampler.set_epoch(1)
    assert draw(sampler, seed=3, epoch=1) == list(sampler)
    assert sampler.generator is None  # the draw put it back


class Indexed(Dataset):
    def __len__(self) -> int:
        return 100

    def __getitem__(self, i: int):
        return torch.full((1, 1, 1), float(i)), LABELS[i]


def test_ddp_shares_of_a_dataloader_split_one_balanced_draw():
    loader = DataLoader(Indexed(), batch_size=10, sampler=BalancedSampler(LABELS, seed=3))
    expected = draw(BalancedSampler(LABELS), seed=3, epoch=4)
    shares = []
    for rank in (0, 1):
        shard = shard_for_training(loader, DistInfo(rank, 2), seed=3)
        set_data_epoch(shard, 4)
        shares.append([int(v) for x, _ in shard for v in x.flatten()])
    assert shares == [expected[0::2], expected[1::2]]


def test_tensor_loader_draws_balanced_batches_and_shards_them():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 1, 2, 2)
    loader = TensorLoader(images.contiguous(), LABELS, batch_size=10, balanced=True, seed=1)
    assert loader.even_shards and len(loader) == 10
    epoch0 = loader.indices(0)
    assert loader.indices(0).tolist() == epoch0.tolist()  # pure in (seed, epoch)
    assert loader.indices(1).tolist() != epoch0.tolist()
    drawn = torch.cat([loader.indices(e) for e in range(20)])
    assert share(drawn.tolist()) == pytest.approx([1 / 3] * 3, abs=0.05)
    # Batches hold what indices() says, in order.
    loader.set_epoch(0)
    seen = [int(v) for x, _ in loader for v in (x[:, 0, 0, 0] * 255).round()]
    assert seen == epoch0.tolist()
    # Mid-epoch resume: the same batches as a full epoch, after the skipped ones.
    loader.set_epoch(3)
    full = [y.tolist() for _, y in loader]
    loader.set_epoch(3, start_batch=4)
    assert [y.tolist() for _, y in loader] == full[4:]
    # Two ranks take disjoint positions of the same (padded) draw.
    ranks = [loader.copy(rank=r, world_size=2).indices(5) for r in (0, 1)]
    assert [len(r) for r in ranks] == [50, 50]
    assert torch.stack(ranks, 1).flatten().tolist() == loader.indices(5).tolist()
    # Caching reads every image once, in order: no balancing there.
    assert plain_loader(loader).indices(0).tolist() == list(range(100))
    with pytest.raises(ConfigError, match="balanced must be True or False, got 1"):
        TensorLoader(images, LABELS, balanced=1)  # type: ignore[arg-type]


def test_exact_resume_mid_epoch_with_a_balanced_dataloader(tmp_path):
    def run(out, epochs, callbacks=(), resume=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(1, 3))
        loader = DataLoader(Indexed(), batch_size=10, sampler=BalancedSampler(LABELS, seed=2))
        trainer = Trainer(model, epochs=epochs, device="cpu", topk=(1,), progress=False,
                          out_dir=out, seed=2, callbacks=list(callbacks))
        trainer.fit(loader, resume=resume)
        return trainer, [p.detach().clone() for p in model.parameters()]

    _, straight = run(tmp_path / "a", 2)
    stopped, _ = run(tmp_path / "b", 2, [Interrupt(13)])
    assert (stopped.epoch, stopped.batch_in_epoch) == (1, 4)  # stops at the next step
    resumed, params = run(tmp_path / "b", 2, resume=True)
    assert resumed.step == 20
    assert all(torch.equal(a, b) for a, b in zip(straight, params, strict=True))


class Interrupt(Callback):
    """Request a stop at optimizer step ``step``, as Ctrl-C does (a checkpoint mid-epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer) -> None:
        if trainer.step == self.step:
            trainer._sigint = True
