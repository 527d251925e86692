"""The user's sampler under DDP: respected on every rank, in process (ranks simulated).

``tests/train/test_distributed.py`` runs the same cases with a real 2-process torchrun.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from transferkit.errors import ConfigError
from transferkit.train.batch_checks import set_data_epoch
from transferkit.train.distributed import DistInfo, shard_for_evaluation, shard_for_training
from transferkit.train.samplers import ShardedBatchSampler, ShardedSampler, draw


class Indexed(Dataset):
    """Sample ``i`` is the number ``i``, so a batch says which indices it holds."""

    def __init__(self, n: int = 100) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor(float(i)), 0


def seen(loader, epoch: int) -> list[int]:
    set_data_epoch(loader, epoch)  # as the Trainer does before every epoch
    return [int(v) for x, _ in loader for v in x]


def shares(loader, epoch=0, *, train=True, world=2, seed=0) -> list[list[int]]:
    if train:
        return [seen(shard_for_training(loader, DistInfo(r, world), seed=seed), epoch)
                for r in range(world)]
    return [seen(shard_for_evaluation(loader, DistInfo(r, world), seed=seed), epoch)
            for r in range(world)]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ index samplers
def test_subset_random_sampler_train_split_never_leaks():
    loader = DataLoader(Indexed(), batch_size=3, sampler=SubsetRandomSampler(range(10)))
    for epoch in (0, 1):
        # SubsetRandomSampler's own draw, with its generator seeded by seed + epoch
        expected = torch.randperm(10, generator=seeded(7 + epoch)).tolist()
        got = shares(loader, epoch, seed=7)
        assert got == [expected[0::2], expected[1::2]]
        assert max(got[0] + got[1]) < 10
        assert sorted(got[0] + got[1]) == list(range(10))  # disjoint, and cover the subset
    assert shares(loader, 0, seed=7) != shares(loader, 1, seed=7)  # reshuffled per epoch
    assert shares(loader, 1, seed=7) == shares(loader, 1, seed=7)  # pure in (seed, epoch)


def test_training_shares_are_padded_to_equal_length_evaluation_shares_are_not():
    loader = DataLoader(Indexed(), batch_size=2, sampler=SubsetRandomSampler(range(90, 99)))
    drawn = [90 + i for i in torch.randperm(9, generator=seeded(0)).tolist()]
    train = shares(loader)
    assert train == [drawn[0::2], drawn[1::2] + drawn[:1]]  # 5 each: the first repeats
    assert [len(shard_for_training(loader, DistInfo(r, 2), seed=0)) for r in (0, 1)] == [3, 3]
    val = shares(loader, train=False)
    assert val == [drawn[0::2], drawn[1::2]]  # 5 + 4: every index exactly once
    shard = shard_for_evaluation(loader, DistInfo(1, 2), seed=0)
    assert isinstance(shard.sampler, ShardedSampler) and len(shard.sampler) == 4


def test_weighted_random_sampler_keeps_its_weighting():
    weights = torch.tensor([0.0, 1.0] * 50)  # the even indices must never appear
    sampler = WeightedRandomSampler(weights, num_samples=40, replacement=True)
    loader = DataLoader(Indexed(), batch_size=4, sampler=sampler)
    for epoch in (0, 3):
        expected = torch.multinomial(weights, 40, True, generator=seeded(epoch)).tolist()
        got = shares(loader, epoch)
        assert got == [expected[0::2], expected[1::2]]
        assert len(got[0]) == len(got[1]) == 20
        assert all(i % 2 == 1 for i in got[0] + got[1])


def test_random_sampler_with_replacement_is_not_turned_into_a_permutation():
    ds = Indexed(10)
    loader = DataLoader(ds, batch_size=5, sampler=RandomSampler(ds, replacement=True,
                                                               num_samples=30))
    assert shard_for_training(loader, DistInfo(), seed=0) is loader  # one process: as given
    expected = list(RandomSampler(ds, replacement=True, num_samples=30, generator=seeded(2)))
    assert shares(loader, 2) == [expected[0::2], expected[1::2]]  # 15 each, repeats kept


class EveryThird(RandomSampler):
    """A subclass of RandomSampler that draws otherwise: not a plain shuffle."""

    def __iter__(self):
        return iter(range(0, len(self.data_source), 3))


def test_a_sampler_subclass_is_not_taken_for_a_plain_shuffle():
    loader = DataLoader(Indexed(12), batch_size=2, sampler=EveryThird(Indexed(12)))
    assert shares(loader) == [[0, 6], [3, 9]]


class Epochs(SubsetRandomSampler):
    def set_epoch(self, epoch: int) -> None:
        self.epochs = [*getattr(self, "epochs", []), epoch]


def test_set_epoch_reaches_the_users_sampler():
    sampler = Epochs(range(4))
    shard = shard_for_training(DataLoader(Indexed(), sampler=sampler), DistInfo(0, 2), seed=0)
    set_data_epoch(shard, 5)
    assert sampler.epochs == [5] and shard.sampler.epoch == 5


def test_draw_shifts_no_random_stream_and_restores_the_generator():
    own = seeded(123)
    sampler = SubsetRandomSampler(range(10), generator=own)
    before, own_before = torch.get_rng_state(), own.get_state()
    assert draw(sampler, seed=4, epoch=1) == torch.randperm(10, generator=seeded(5)).tolist()
    assert sampler.generator is own
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(own.get_state(), own_before)


def test_a_samplers_own_generator_is_set_aside_with_a_warning():
    sampler = SubsetRandomSampler(range(10), generator=seeded(123))
    loader = DataLoader(Indexed(), batch_size=5, sampler=sampler)
    message = (
        "The train loader's SubsetRandomSampler has a generator of its own; the Trainer draws "
        "its indices from a generator seeded by (seed, epoch) instead, so that every rank "
        "draws the same ones and a resumed run draws the same epoch again. HINT: pass "
        "Trainer(seed=...) to change the order, and build the sampler (or the DataLoader) "
        "without generator= to silence this warning."
    )
    with pytest.warns(UserWarning) as record:
        shard = shard_for_training(loader, DistInfo(0, 2), seed=0)
    assert [str(w.message) for w in record] == [message]
    assert seen(shard, 0) == torch.randperm(10, generator=seeded(0)).tolist()[0::2]
    with pytest.warns(UserWarning, match="The train loader's RandomSampler has a generator"):
        shard_for_training(DataLoader(Indexed(), shuffle=True, generator=seeded(1)), DistInfo(),
                           seed=0)


# ------------------------------------------------------------------ DistributedSampler
def test_a_users_distributed_sampler_is_used_as_it_is_or_refused():
    ds = Indexed(10)
    loader = DataLoader(ds, sampler=DistributedSampler(ds, num_replicas=2, rank=1, seed=5))
    assert shard_for_training(loader, DistInfo(1, 2), seed=0) is loader
    assert shard_for_evaluation(loader, DistInfo(1, 2)) is loader
    with pytest.raises(ConfigError) as err:
        shard_for_training(loader, DistInfo(0, 2), seed=0)
    assert str(err.value) == (
        "The train loader's DistributedSampler is built for rank 1 of 2, but this process is "
        "rank 0 of 2. Build it with num_replicas=2, rank=0, or pass a DataLoader without it: "
        "the Trainer shards for you."
    )
    with pytest.raises(ConfigError, match="rank 1 of 2, but this process is rank 0 of 1"):
        shard_for_evaluation(loader, DistInfo())


# ------------------------------------------------------------------ batch samplers
def test_a_batch_sampler_keeps_its_batches_whole():
    batches = BatchSampler(SubsetRandomSampler(range(20, 33)), batch_size=3, drop_last=False)
    loader = DataLoader(Indexed(), batch_sampler=batches)
    order = [20 + i for i in torch.randperm(13, generator=seeded(1)).tolist()]
    drawn = [order[i : i + 3] for i in range(0, 13, 3)]  # 5 batches: 3, 3, 3, 3, 1

    def batch_shares(train):
        shard = (lambda r: shard_for_training(loader, DistInfo(r, 2), seed=1)) if train else (
            lambda r: shard_for_evaluation(loader, DistInfo(r, 2), seed=1))
        out = []
        for r in (0, 1):
            s = shard(r)
            assert isinstance(s.batch_sampler, ShardedBatchSampler)
            set_data_epoch(s, 0)
            out.append([[int(v) for v in x] for x, _ in s])
        return out

    assert batch_shares(True) == [drawn[0::2], drawn[1::2] + drawn[:1]]  # 3 batches each
    assert batch_shares(False) == [drawn[0::2], drawn[1::2]]  # 3 + 2, every index once
    assert shard_for_training(loader, DistInfo(), seed=0) is loader  # one process: as given


def test_a_batch_sampler_over_a_distributed_sampler_is_used_as_it_is():
    ds = Indexed(10)
    batches = BatchSampler(DistributedSampler(ds, num_replicas=2, rank=0), 2, drop_last=False)
    loader = DataLoader(ds, batch_sampler=batches)
    assert shard_for_training(loader, DistInfo(0, 2), seed=0) is loader
    with pytest.raises(ConfigError, match="built for rank 0 of 2, but this process is rank 1"):
        shard_for_training(loader, DistInfo(1, 2), seed=0)
    with pytest.raises(ConfigError, match="built for rank 0 of 2, but this process is rank 0 of 1"):
        shard_for_training(loader, DistInfo(), seed=0)  # half the data in a single process


# ------------------------------------------------------------------ what stays as it was
def test_plain_shuffle_and_plain_order_are_unchanged():
    loader = DataLoader(Indexed(9), batch_size=2, shuffle=True)
    shard = shard_for_training(loader, DistInfo(1, 2), seed=3)
    assert isinstance(shard.sampler, DistributedSampler) and shard.sampler.seed == 3
    in_order = DataLoader(Indexed(9), batch_size=2)
    assert shares(in_order) == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 0]]  # padded like DDP's
    assert shares(in_order, train=False) == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]
    assert shard_for_training(in_order, DistInfo(), seed=0) is in_order
