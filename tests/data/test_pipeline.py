"""Tests of transferkit.pipeline: batches, transforms, reproducibility, sharding, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferkit.data.pipeline import Augment, TensorLoader
from transferkit.errors import ConfigError, DataError


def _data(n: int = 10, shape: tuple[int, ...] = (6, 7), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    return images, labels


def _collect(loader: TensorLoader):
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_plain_batches_are_the_scaled_images_in_order():
    images, labels = _data()
    loader = TensorLoader(images, labels, batch_size=4)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2] and len(loader) == 3
    x, y = _collect(TensorLoader(images, labels, batch_size=4))
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (10, 1, 6, 7)  # one channel stays one channel
    assert torch.equal(x, images.unsqueeze(1).float() / 255)
    assert torch.equal(y, labels)


def test_drop_last():
    images, labels = _data()
    loader = TensorLoader(images, labels, batch_size=4, drop_last=True)
    assert len(loader) == 2 and [b[0].shape[0] for b in loader] == [4, 4]


def test_three_channels_and_normalisation():
    images, labels = _data(shape=(3, 5, 5))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    x, _ = _collect(TensorLoader(images, labels, batch_size=3, mean=mean, std=std))
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    assert x.shape == (10, 3, 5, 5)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [32, (3, 4), 224])
def test_resize_is_antialiased_bilinear(size):
    images, labels = _data()
    x, _ = _collect(TensorLoader(images, labels, batch_size=5, image_size=size))
    hw = (size, size) if isinstance(size, int) else size
    expected = F.interpolate(
        images.unsqueeze(1).float() / 255, size=hw, mode="bilinear", antialias=True
    )
    assert x.shape == (10, 1, *hw)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    if hw == (3, 4):  # downsampling: antialiasing changes the result
        plain = F.interpolate(images.unsqueeze(1).float() / 255, size=hw, mode="bilinear")
        assert not torch.allclose(x, plain, atol=1e-3)


@pytest.mark.parametrize("kind", ["uint8", "uint8+norm", "float"])
def test_every_scaling_path_resizes_to_the_same_values(kind):
    # uint8 without mean/std folds the 1/255 into the resize weights; the other paths
    # scale (and normalise) before resizing. All must equal scale-then-interpolate.
    images, labels = _data(shape=(2, 6, 7))
    mean, std = (0.3, 0.6), (0.2, 0.4)
    kwargs = {"mean": mean, "std": std} if kind == "uint8+norm" else {}
    data = images.float() / 255 if kind == "float" else images
    x, _ = _collect(TensorLoader(data, labels, batch_size=4, image_size=(9, 20), **kwargs))
    expected = images.float() / 255
    if kind == "uint8+norm":
        expected = (expected - torch.tensor(mean).view(1, 2, 1, 1)) / torch.tensor(std).view(
            1, 2, 1, 1
        )
    expected = F.interpolate(expected, size=(9, 20), mode="bilinear", antialias=True)
    assert x.shape == (10, 2, 9, 20)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_float_images_are_used_as_0_to_1_and_not_modified():
    images = torch.rand(5, 2, 4, 4)
    copy = images.clone()
    x, _ = _collect(TensorLoader(images, torch.zeros(5, dtype=torch.long), batch_size=2,
                                 mean=(0.5, 0.5), std=(0.5, 0.5), augment=Augment(erase=1.0)))
    assert torch.equal(images, copy)
    assert x.shape == (5, 2, 4, 4)


def test_each_epoch_is_a_permutation_and_a_pure_function_of_seed_and_epoch():
    images, labels = _data(n=50)
    a = TensorLoader(images, labels, batch_size=8, shuffle=True, seed=3)
    orders = [a.indices(e) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(50))
    assert not torch.equal(orders[0], orders[1])
    b = TensorLoader(images, labels, batch_size=8, shuffle=True, seed=3)
    b.set_epoch(2)
    assert torch.equal(b.indices(), orders[2])
    c = TensorLoader(images, labels, batch_size=8, shuffle=True, seed=4)
    assert not torch.equal(c.indices(0), orders[0])
    # Iterating advances the epoch: the second pass is epoch 1's order.
    _, y0 = _collect(a)
    _, y1 = _collect(a)
    assert torch.equal(y0, labels[orders[0]]) and torch.equal(y1, labels[orders[1]])


AUG = Augment(crop_padding=2, hflip=0.5, erase=0.5)


def test_augmentation_is_reproducible_and_resumable_mid_epoch():
    images, labels = _data(n=20)
    kwargs = {"batch_size": 4, "shuffle": True, "seed": 7, "augment": AUG, "image_size": 12}
    full = TensorLoader(images, labels, **kwargs)
    full.set_epoch(5)
    batches = list(full)
    again = TensorLoader(images, labels, **kwargs)
    again.set_epoch(5)
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    resumed = TensorLoader(images, labels, **kwargs)
    resumed.set_epoch(5, start_batch=3)
    rest = list(resumed)
    assert len(rest) == 2
    for (x1, y1), (x2, y2) in zip(batches[3:], rest, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = TensorLoader(images, labels, **{**kwargs, "seed": 8})
    other.set_epoch(5)
    assert not torch.equal(_collect(other)[0], torch.cat([b[0] for b in batches]))


def test_eval_shards_see_every_sample_exactly_once_with_odd_size():
    images, labels = _data(n=11)
    seen = []
    for rank in range(2):
        loader = TensorLoader(images, labels, batch_size=4, rank=rank, world_size=2)
        assert loader.num_samples == (6, 5)[rank]
        seen += loader.indices().tolist()
        _, y = _collect(loader)
        assert torch.equal(y, labels[loader.indices()])
    assert sorted(seen) == list(range(11))


def test_training_shards_are_even_disjoint_and_share_the_permutation():
    images, labels = _data(n=11)
    shards = [
        TensorLoader(images, labels, batch_size=4, shuffle=True, rank=r, world_size=3, seed=1)
        for r in range(3)
    ]
    for loader in shards:
        loader.set_epoch(4)
    sizes = {len(s.indices()) for s in shards}
    assert sizes == {4} and {len(s) for s in shards} == {1}
    union = torch.stack([s.indices() for s in shards], 1).flatten()  # interleave back
    single = TensorLoader(images, labels, batch_size=4, shuffle=True, seed=1)
    order = single.indices(4)
    assert torch.equal(union[:11], order)  # the shards partition the common permutation
    assert torch.equal(union[11:], order[:1])  # padded with its first sample


def test_ranks_draw_different_augmentations():
    images = torch.full((8, 1, 6, 6), 200, dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.long)
    xs = [
        _collect(TensorLoader(images, labels, batch_size=4, rank=r, world_size=2,
                              augment=Augment(erase=1.0)))[0]
        for r in range(2)
    ]
    assert not torch.equal(xs[0], xs[1])


def test_labels_outside_num_classes_are_rejected():
    images, labels = _data()
    TensorLoader(images, labels, num_classes=3)
    with pytest.raises(DataError, match=r"\[0, 2\).*label 2 at index 2"):
        TensorLoader(images, labels, num_classes=2)
    with pytest.raises(DataError, match="label -1"):
        TensorLoader(images, labels - 1, num_classes=3)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (torch.zeros(0, 4, 4, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), "empty"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
         "2 labels for 3 images"),
        (torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long),
         r"shape \(3, 4\)"),
        (torch.zeros(3, 1, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long),
         r"\[N, H, W\] or \[N, C, H, W\]"),
        (torch.zeros(3, 28, 28, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.long),
         "permute"),
        (torch.zeros(3, 4, 4, dtype=torch.int32), torch.zeros(3, dtype=torch.long), "int32"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 10, dtype=torch.long),
         r"labels\.float\(\)"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 2, 5), "soft or multi-hot"),
        ([[1]], torch.zeros(1, dtype=torch.long), "torch.as_tensor"),
    ],
)
def test_bad_data(images, labels, match):
    with pytest.raises(DataError, match=match):
        TensorLoader(images, labels)


def test_channel_count_must_match_in_chans():
    images, labels = _data(shape=(3, 4, 4))
    assert TensorLoader(images, labels, in_chans=3).channels == 3
    with pytest.raises(DataError, match=r"3 channel\(s\) but in_chans=1.*in_chans=3"):
        TensorLoader(images, labels, in_chans=1)


def test_mean_std_must_match_channels():
    images, labels = _data()
    with pytest.raises(DataError, match=r"mean has 3 values .* 1 channel.*in_chans=1"):
        TensorLoader(images, labels, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with pytest.raises(DataError, match="both mean and std"):
        TensorLoader(images, labels, mean=(0.5,))
    with pytest.raises(DataError, match="positive"):
        TensorLoader(images, labels, mean=(0.5,), std=(0.0,))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -2}, "batch_size must be a positive integer, got -2"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
        ({"image_size": 0}, "image_size=0"),
        ({"rank": 2, "world_size": 2}, r"rank must be an integer in \[0, 1\], got 2"),
        ({"world_size": 0}, "world_size must be a positive integer, got 0"),
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"num_threads": 0}, "num_threads must be a positive integer, got 0"),
        ({"augment": {"hflip": 0.5}}, "Augment"),
    ],
)
def test_bad_arguments(kwargs, match):
    images, labels = _data()
    with pytest.raises(ConfigError, match=match):
        TensorLoader(images, labels, **kwargs)


@pytest.mark.parametrize("num_threads", [1, None])
def test_thread_setting_is_restored_and_results_do_not_depend_on_it(num_threads):
    images, labels = _data(n=12, shape=(2, 9, 9))
    before = torch.get_num_threads()
    kwargs = {"batch_size": 5, "shuffle": True, "image_size": 20, "augment": Augment(erase=0.5,
              crop_padding=2, hflip=0.5), "mean": (0.5, 0.4), "std": (0.2, 0.3)}
    x, y = _collect(TensorLoader(images, labels, num_threads=num_threads, **kwargs))
    assert torch.get_num_threads() == before
    ref_x, ref_y = _collect(TensorLoader(images, labels, num_threads=2, **kwargs))
    torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-6)
    assert torch.equal(y, ref_y)


def test_errors_are_value_errors():
    images, labels = _data()
    with pytest.raises(ValueError):
        TensorLoader(images, labels[:3])
    with pytest.raises(ValueError):
        TensorLoader(images, labels, batch_size=0)


def test_soft_and_multi_hot_targets_are_served_as_stored():
    images = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5],
                            [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    loader = TensorLoader(images, targets, batch_size=2, shuffle=True, seed=3, num_classes=3)
    order = loader.indices(0)
    served = torch.cat([y for _, y in loader])
    assert torch.equal(served, targets[order]) and torch.equal(loader.labels, targets)
    with pytest.raises(DataError, match="3 columns but num_classes=4"):
        TensorLoader(images, targets, num_classes=4)
    with pytest.raises(DataError, match="NaN or infinite"):
        TensorLoader(images, targets * float("nan"))
