"""Tests of transferkit.data.folder_layout through load_image_folder: split folders,
separate val/test folders, the rule that tells splits from classes, and its errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from transferkit.data import folder_layout, image_folder
from transferkit.data.folder_layout import find_splits
from transferkit.data.image_folder import SplitSource, load_image_folder
from transferkit.errors import ConfigError, DataError, DataNotFoundError

SPLIT_RED = {"train": 0, "val": 100, "test": 200}  # red channel = split base + 10 * class + i


def _make(root: Path, counts: dict[str, int], base: int = 0) -> Path:
    """Write solid-colour PNGs; image i of the c-th class has red = base + 10 * c + i."""
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (base + 10 * c + i, 0, 0)).save(root / name / f"{i}.png")
    return root


def _split_root(tmp_path: Path, splits: dict[str, dict[str, int]]) -> Path:
    root = tmp_path / "data"
    for split, counts in splits.items():
        _make(root / split, counts, SPLIT_RED.get(split.lower(), 0))
    return root


def _reds(images: torch.Tensor) -> list[int]:
    return sorted(images[:, 0, 0, 0].tolist())


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if an image is decoded: the error must come before any reading."""
    def fail(*args, **kwargs):
        raise AssertionError("an image was decoded before the layout was checked")

    monkeypatch.setattr(image_folder, "decode_image", fail)


# ------------------------------------------------------------------ split folders
@pytest.mark.parametrize("val_name", ["val", "valid", "validation", "Val"])
def test_split_folders_are_read_as_splits(tmp_path, val_name):
    counts = {"cat": 3, "dog": 2}
    root = _split_root(tmp_path, {"train": counts, "test": {"cat": 2, "dog": 1}})
    _make(root / val_name, {"cat": 2, "dog": 2}, SPLIT_RED["val"])
    data = load_image_folder(root, image_size=4)
    assert data.layout == "split" and data.classes == ("cat", "dog")
    # Every image comes from its own split folder: no random split of train.
    assert _reds(data.train_images) == [0, 1, 2, 10, 11]
    assert _reds(data.val_images) == [100, 101, 110, 111]
    assert data.test_images is not None and data.test_labels is not None
    assert _reds(data.test_images) == [200, 201, 210]
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1]
    assert data.val_labels.tolist() == [0, 0, 1, 1] and data.test_labels.tolist() == [0, 0, 1]
    assert data.sources == {
        "train": SplitSource(str(root / "train"), 5),
        "val": SplitSource(str(root / val_name), 4),
        "test": SplitSource(str(root / "test"), 3),
    }
    assert data.describe() == [
        f"train: {root / 'train'} (5 images)",
        f"validation: {root / val_name} (4 images)",
        f"test: {root / 'test'} (3 images)",
    ]


def test_split_folders_without_val_split_train_at_random(tmp_path):
    root = _split_root(tmp_path, {"train": {"a": 10, "b": 5}, "test": {"a": 1, "b": 1}})
    data = load_image_folder(root, image_size=4, seed=3)
    # The same stratified seeded split as for class folders (default fraction 0.2).
    plain = load_image_folder(root / "train", image_size=4, seed=3)
    assert torch.equal(data.val_images, plain.val_images)
    assert torch.equal(data.train_images, plain.train_images)
    assert torch.bincount(data.val_labels).tolist() == [2, 1]
    assert data.describe() == [
        f"train: {root / 'train'} (12 images)",
        "validation: 20% of train, stratified, seed 3 (3 images)",
        f"test: {root / 'test'} (2 images)",
    ]
    assert plain.layout == "classes" and plain.test_images is None and "test" not in plain.sources


def test_class_folders_keep_the_random_split(tmp_path):
    root = _make(tmp_path / "d", {"a": 10, "b": 5})
    data = load_image_folder(root, image_size=4, val_fraction=0.4, seed=1)
    assert data.layout == "classes" and data.test_images is None and data.test_labels is None
    assert torch.bincount(data.val_labels).tolist() == [4, 2]
    assert data.describe() == [f"train: {root} (9 images)",
                               "validation: 40% of train, stratified, seed 1 (6 images)"]
    none = load_image_folder(root, image_size=4, val_fraction=0.0)
    assert str(none.sources["val"]) == "none (val_fraction=0)" and len(none.val_labels) == 0


def test_separate_val_and_test_folders(tmp_path):
    root = _make(tmp_path / "train", {"a": 3, "b": 3})
    val = _make(tmp_path / "holdout", {"a": 1, "b": 2}, SPLIT_RED["val"])
    test = _make(tmp_path / "exam", {"a": 2, "b": 1}, SPLIT_RED["test"])
    data = load_image_folder(root, image_size=4, val=val, test=test)
    assert _reds(data.train_images) == [0, 1, 2, 10, 11, 12]  # all of root: no random split
    assert _reds(data.val_images) == [100, 110, 111]
    assert data.test_images is not None and _reds(data.test_images) == [200, 201, 210]
    assert data.sources["val"] == SplitSource(str(val), 3)
    assert data.sources["test"] == SplitSource(str(test), 3)
    # A test folder alone: validation is still split from train.
    only_test = load_image_folder(root, image_size=4, test=test, val_fraction=0.34)
    assert only_test.sources["val"].fraction == 0.34 and len(only_test.val_labels) == 2


def test_split_root_with_a_separate_test_folder(tmp_path):
    root = _split_root(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    test = _make(tmp_path / "exam", {"a": 1, "b": 1}, SPLIT_RED["test"])
    data = load_image_folder(root, image_size=4, test=test)
    assert data.test_images is not None and _reds(data.test_images) == [200, 210]
    assert _reds(data.val_images) == [100, 110]


# ------------------------------------------------------------------ the rule and layout=
def test_class_named_like_a_split_needs_layout_classes(tmp_path, no_decoding):
    root = _make(tmp_path / "d", {"test": 2, "other": 2})
    message = (f"{str(root)!r} mixes split folders ('test') and class folders ('other'). "
               "Put every class under train/<class>/ (and val/, test/), or pass "
               "layout='classes' if 'test' are classes.")
    with pytest.raises(DataError, match=re.escape(message)):
        load_image_folder(root, image_size=4)


def test_layout_classes_reads_split_names_as_classes(tmp_path):
    root = _make(tmp_path / "d", {"test": 2, "train": 1})
    data = load_image_folder(root, image_size=4, layout="classes", val_fraction=0.0)
    assert data.layout == "classes" and data.classes == ("test", "train")
    assert data.train_labels.tolist() == [0, 0, 1]


def test_split_names_holding_images_are_ambiguous(tmp_path, no_decoding):
    root = _make(tmp_path / "d", {"train": 2, "test": 2})  # images directly in train/, test/
    with pytest.raises(DataError, match=r"only folders named like splits \('test', 'train'\), "
                                        r"with images but no class folders inside.*"
                                        r"layout='classes'"):
        load_image_folder(root, image_size=4)


def test_layout_split_needs_split_folders(tmp_path, no_decoding):
    root = _make(tmp_path / "d", {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match=r"layout='split' but .* holds no split folder .*"
                                        r"only 'cat', 'dog'"):
        load_image_folder(root, image_size=4, layout="split")


def test_split_folders_without_train(tmp_path, no_decoding):
    root = _split_root(tmp_path, {"val": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    with pytest.raises(DataError, match=r"split folders \('test', 'val'\) but no train/ folder"):
        load_image_folder(root, image_size=4)


def test_two_validation_folders(tmp_path, no_decoding):
    root = _split_root(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1},
                                  "validation": {"a": 1, "b": 1}})
    with pytest.raises(DataError, match=r"has two val folders, 'val' and 'validation'"):
        load_image_folder(root, image_size=4)


def test_a_split_folder_without_class_folders(tmp_path, no_decoding):
    root = _split_root(tmp_path, {"train": {"a": 1, "b": 1}})
    (root / "val").mkdir()
    Image.new("RGB", (4, 4)).save(root / "val" / "loose.png")
    with pytest.raises(DataError, match=re.escape(f"{str(root / 'val')!r} holds no class "
                                                  "subfolders; expected val/<class>/<image>")):
        load_image_folder(root, image_size=4)


# ------------------------------------------------------------------ classes
def test_one_class_is_an_error(tmp_path, no_decoding):
    root = _make(tmp_path / "d", {"only": 3})
    message = (f"{str(root)!r} holds a single class folder ('only'); a classifier needs at "
               "least two classes")
    with pytest.raises(DataError, match=re.escape(message)):
        load_image_folder(root, image_size=4)


def test_one_class_in_split_folders_is_an_error(tmp_path, no_decoding):
    root = _split_root(tmp_path, {"train": {"only": 2}, "val": {"only": 1}})
    with pytest.raises(DataError, match=re.escape(f"{str(root / 'train')!r} holds a single "
                                                  "class folder ('only')")):
        load_image_folder(root, image_size=4)


def test_classes_that_differ_between_splits_are_named(tmp_path, no_decoding):
    root = _split_root(tmp_path, {"train": {"cat": 1, "dog": 1, "fox": 1},
                                  "val": {"bird": 1, "cat": 1, "dog": 1}})
    train, val = str(root / "train"), str(root / "val")
    message = (f"The class folders differ between splits: {val!r} lacks 'fox'; {val!r} has "
               f"'bird', which {train!r} lacks. Every split needs the same class folders")
    with pytest.raises(DataError, match=re.escape(message)):
        load_image_folder(root, image_size=4)


def test_a_test_folder_missing_a_class_is_named(tmp_path, no_decoding):
    root = _make(tmp_path / "train", {"a": 1, "b": 1})
    test = _make(tmp_path / "exam", {"a": 1})
    with pytest.raises(DataError, match=re.escape(f"{str(test)!r} lacks 'b'.")):
        load_image_folder(root, image_size=4, test=test)


# ------------------------------------------------------------------ arguments
def test_val_given_twice_is_an_error(tmp_path, no_decoding):
    root = _split_root(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
    other = _make(tmp_path / "other", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match=re.escape(
            f"val={str(other)!r} was given, but {str(root)!r} has its own val folder "
            f"{str(root / 'val')!r}; pass one of the two.")):
        load_image_folder(root, image_size=4, val=other)


def test_one_folder_for_two_splits_is_an_error(tmp_path, no_decoding):
    root = _make(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match="given as both the train and the val folder"):
        load_image_folder(root, image_size=4, val=tmp_path / "d" / ".." / "d")
    other = _make(tmp_path / "o", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match="given as both the val and the test folder"):
        load_image_folder(root, image_size=4, val=other, test=other)


@pytest.mark.parametrize("val_fraction", [0.2, 0.0])
def test_val_fraction_with_a_validation_folder_is_an_error(tmp_path, val_fraction, no_decoding):
    root = _split_root(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
    with pytest.raises(ConfigError, match=re.escape(
            f"val_fraction={val_fraction!r} splits validation from train, but validation comes "
            f"from the folder {str(root / 'val')!r}; leave val_fraction out.")):
        load_image_folder(root, image_size=4, val_fraction=val_fraction)


def test_missing_val_folder(tmp_path):
    root = _make(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(DataNotFoundError, match=r"val= '.*nope' does not exist"):
        load_image_folder(root, image_size=4, val=tmp_path / "nope")


@pytest.mark.parametrize("val_fraction", ["0.2", True, 1.0, -0.1])
def test_bad_val_fraction(tmp_path, val_fraction):
    root = _make(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\)"):
        load_image_folder(root, image_size=4, val_fraction=val_fraction)


def test_unknown_layout_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"layout='splits' is not valid.*'split'"):
        find_splits(tmp_path, layout="splits")  # type: ignore[arg-type]


def test_find_splits_reads_no_image(tmp_path, no_decoding):
    root = _split_root(tmp_path, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    found = folder_layout.find_splits(root)
    assert (found.layout, found.train, found.val, found.test, found.classes) == (
        "split", root / "train", None, root / "test", ("a", "b"))
