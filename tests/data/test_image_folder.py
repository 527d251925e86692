"""Tests of transferkit.image_folder: layout, resizing, split, undecodable files, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from transferkit.data.image_folder import load_image_folder
from transferkit.data.pipeline import TensorLoader
from transferkit.errors import ConfigError, DataError, DataNotFoundError


def _make(root: Path, counts: dict[str, int], size=(12, 8)) -> Path:
    """Write solid-colour PNGs; image i of class c has red = 10 * c + i."""
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", size, (10 * c + i, 100, 200)).save(root / name / f"{i}.png")
    return root


def test_classes_labels_and_pixels(tmp_path):
    root = _make(tmp_path, {"b_dog": 3, "a_cat": 2})
    data = load_image_folder(root, image_size=6, val_fraction=0.0)
    assert data.classes == ("a_cat", "b_dog")  # sorted, as torchvision
    assert data.train_images.shape == (5, 3, 6, 6) and data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist() == [0, 0, 1, 1, 1]
    reds = data.train_images[:, 0, 0, 0].tolist()
    assert reds == [10, 11, 0, 1, 2]  # a_cat was written as class 1, b_dog as class 0
    assert bool((data.train_images[:, 1] == 100).all() and (data.train_images[:, 2] == 200).all())
    assert data.val_images.shape == (0, 3, 6, 6) and data.val_labels.shape == (0,)
    assert data.skipped == () and data.root == str(root)


def test_grayscale_and_rectangular_size_with_centre_crop(tmp_path):
    root = tmp_path / "d"
    (root / "x").mkdir(parents=True)
    (root / "y").mkdir()
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (10, 0, 30, 20))  # white centre square, black sides
    img.save(root / "x" / "0.png")
    img.save(root / "y" / "0.png")  # a second class: one class is an error
    data = load_image_folder(root, image_size=(10, 10), in_chans=1, val_fraction=0.0)
    assert data.train_images.shape == (2, 1, 10, 10)
    # Shorter side to 10 px, then the centre 10x10 is kept: the black sides are cut off
    # (the outermost columns are only blurred by the bilinear filter).
    assert bool((data.train_images[..., 1:-1] == 255).all())
    assert int(data.train_images.min()) > 200
    wide = load_image_folder(root, image_size=(5, 10), in_chans=1, val_fraction=0.0)
    assert wide.train_images.shape == (2, 1, 5, 10)  # same aspect ratio: nothing cropped
    assert int(wide.train_images[0, 0, 2, 0]) < 60 and int(wide.train_images[0, 0, 2, 5]) == 255


def test_split_is_seeded_and_stratified(tmp_path):
    root = _make(tmp_path, {"a": 10, "b": 5, "c": 4})
    one = load_image_folder(root, image_size=4, val_fraction=0.2, seed=1)
    assert torch.bincount(one.val_labels, minlength=3).tolist() == [2, 1, 1]
    assert torch.bincount(one.train_labels, minlength=3).tolist() == [8, 4, 3]
    two = load_image_folder(root, image_size=4, val_fraction=0.2, seed=1)
    assert torch.equal(one.val_images, two.val_images)
    other = [load_image_folder(root, image_size=4, val_fraction=0.2, seed=s) for s in range(2, 6)]
    assert any(not torch.equal(o.val_images, one.val_images) for o in other)
    # Train and validation together hold every image exactly once.
    reds = sorted(torch.cat([one.train_images, one.val_images])[:, 0, 0, 0].tolist())
    assert reds == sorted([*range(10), *range(10, 15), *range(20, 24)])


def test_undecodable_files_are_skipped_with_a_warning(tmp_path):
    root = _make(tmp_path, {"a": 2, "b": 2})
    (root / "a" / "broken.png").write_bytes(b"not a png")
    (root / "b" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match=r"Skipped 1 file\(s\)"):
        data = load_image_folder(root, image_size=4, val_fraction=0.0)
    assert data.skipped == (str(root / "a" / "broken.png"),)
    assert data.train_labels.tolist() == [0, 0, 1, 1]


def test_no_warning_when_everything_decodes(tmp_path):
    root = _make(tmp_path, {"a": 1, "b": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_folder(root, image_size=4)


def test_missing_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope", image_size=4)


def test_folder_without_classes(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class subfolders"):
        load_image_folder(tmp_path, image_size=4)


def test_empty_class_folder_is_named(tmp_path):
    root = _make(tmp_path, {"a": 2})
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty'.*holds no image files"):
        load_image_folder(root, image_size=4)


def test_class_with_only_undecodable_files(tmp_path):
    root = _make(tmp_path, {"a": 2})
    (root / "bad").mkdir()
    (root / "bad" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=r"No image in class folder .*bad"):
        load_image_folder(root, image_size=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 4, "in_chans": 2}, "in_chans=2"),
        ({"image_size": 4, "val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_image_folder(_make(tmp_path, {"a": 1}), **kwargs)


def test_feeds_the_tensor_loader(tmp_path):
    data = load_image_folder(_make(tmp_path, {"a": 3, "b": 3}), image_size=8, val_fraction=0.0)
    loader = TensorLoader(data.train_images, data.train_labels, batch_size=4, image_size=16,
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                          num_classes=len(data.classes))
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 0, 1]
