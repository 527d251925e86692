"""Tests of transferkit.augment: crop with padding, flip, erasing, argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transferkit.data.augment import Augment, random_crop_flip, random_erase
from transferkit.data.pipeline import TensorLoader
from transferkit.errors import ConfigError


def _data(n: int = 10, shape: tuple[int, ...] = (6, 7), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % 3


def _collect(loader: TensorLoader):
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_functions_are_reproducible_from_the_generator():
    images, _ = _data(n=8, shape=(2, 9, 9))
    aug = Augment(erase=1.0)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        cropped = random_crop_flip(images, 3, 0.5, g)
        return cropped, random_erase(cropped.float(), aug, g)

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    assert first[0].dtype == torch.uint8 and first[0].shape == images.shape


def test_hflip_one_flips_every_image():
    images, labels = _data()
    x, _ = _collect(TensorLoader(images, labels, batch_size=4, augment=Augment(hflip=1.0)))
    assert torch.equal(x, images.unsqueeze(1).flip(-1).float() / 255)


def test_random_crop_is_a_window_of_the_zero_padded_image():
    images, labels = _data(n=16, shape=(2, 5, 6))
    pad = 2
    x, _ = _collect(TensorLoader(images, labels, batch_size=16, augment=Augment(crop_padding=pad)))
    padded = F.pad(images.float() / 255, (pad, pad, pad, pad))
    offsets = set()
    for i in range(16):
        hits = [
            (t, s)
            for t in range(2 * pad + 1)
            for s in range(2 * pad + 1)
            if torch.equal(x[i], padded[i, :, t : t + 5, s : s + 6])
        ]
        assert hits, f"image {i} is not a crop of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 1  # the offsets are random, not one fixed shift


def test_crop_and_flip_together():
    images, labels = _data(n=32, shape=(1, 5, 6))
    pad = 1
    aug = Augment(crop_padding=pad, hflip=0.5)
    x, _ = _collect(TensorLoader(images, labels, batch_size=32, augment=aug))
    padded = F.pad(images.float() / 255, (pad, pad, pad, pad))
    flipped = 0
    for i in range(32):
        windows = [
            padded[i, :, t : t + 5, s : s + 6] for t in range(2 * pad + 1)
            for s in range(2 * pad + 1)
        ]
        plain = any(torch.equal(x[i], win) for win in windows)
        mirrored = any(torch.equal(x[i], win.flip(-1)) for win in windows)
        assert plain or mirrored
        flipped += int(mirrored and not plain)
    assert 0 < flipped < 32


def test_random_erasing_writes_one_rectangle_and_keeps_the_rest():
    images = torch.full((12, 1, 20, 20), 255, dtype=torch.uint8)
    loader = TensorLoader(images, torch.zeros(12, dtype=torch.long), batch_size=6,
                          augment=Augment(erase=1.0, erase_value=-1.0))
    x, _ = _collect(loader)
    for img in x[:, 0]:
        erased = img == -1.0
        assert bool(((img == 1.0) | erased).all())
        rows, cols = erased.any(1).nonzero().flatten(), erased.any(0).nonzero().flatten()
        assert rows.numel() > 0
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(erased.sum()) == h * w  # a full rectangle
        assert 0.02 * 400 * 0.5 <= h * w <= 0.33 * 400 * 1.5  # area near the scale range


def test_erase_probability_zero_changes_nothing():
    images, labels = _data()
    x, _ = _collect(TensorLoader(images, labels, batch_size=4, augment=Augment(erase=0.0)))
    assert torch.equal(x, images.unsqueeze(1).float() / 255)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_padding": -1}, "crop_padding"),
        ({"hflip": 1.5}, "hflip"),
        ({"erase": -0.1}, "erase"),
        ({"erase_scale": (0.5, 0.1)}, "erase_scale"),
        ({"erase_ratio": (0.0, 1.0)}, "erase_ratio"),
    ],
)
def test_bad_augment(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Augment(**kwargs)
