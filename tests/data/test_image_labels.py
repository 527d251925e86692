"""Tests of transferkit.data.image_labels: multi-label images listed in a labels file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from transferkit.data import TensorLoader, load_image_labels
from transferkit.errors import ConfigError, DataError, DataNotFoundError


def _images(root: Path, n: int = 5) -> Path:
    """Write ``img/<i>.png`` with red = 10 * i (so the order of the samples can be read)."""
    (root / "img").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (12, 8), (10 * i, 100, 200)).save(root / "img" / f"{i}.png")
    return root


LABELS = {"img/0.png": ["dog", "cat"], "img/1.png": ["cat"], "img/2.png": [],
          "img/3.png": ["bird", "dog"], "img/4.png": ["cat", "dog"]}
EXPECTED = [[0, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 1]]  # bird, cat, dog


def test_json_csv_and_column_files_give_the_same_multi_hot_labels(tmp_path):
    root = _images(tmp_path)
    (root / "l.json").write_text(json.dumps(LABELS))
    (root / "l.csv").write_text("file,labels\n" + "".join(
        f"{k},{' '.join(v)}\n" for k, v in LABELS.items()))
    (root / "cols.csv").write_text("file,bird,cat,dog\n" + "".join(
        f"img/{i}.png,{','.join(map(str, row))}\n" for i, row in enumerate(EXPECTED)))
    for name in ("l.json", "l.csv", "cols.csv"):
        data = load_image_labels(root / name, image_size=6, val_fraction=0.0)
        assert data.classes == ("bird", "cat", "dog") and data.layout == "labels"
        assert data.train_labels.dtype == torch.float32
        assert data.train_labels.tolist() == EXPECTED
        assert data.train_images.shape == (5, 3, 6, 6)
        assert data.train_images[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40]
    loader = TensorLoader(data.train_images, data.train_labels, batch_size=2, num_classes=3)
    assert next(iter(loader))[1].shape == (2, 3)


def test_validation_is_a_seeded_random_split_or_its_own_file(tmp_path):
    root = _images(tmp_path, 10)
    (root / "l.json").write_text(json.dumps({f"img/{i}.png": ["a", "b"][: 1 + i % 2]
                                             for i in range(10)}))
    one = load_image_labels(root / "l.json", image_size=4, val_fraction=0.3, seed=1)
    assert len(one.train_labels) == 7 and len(one.val_labels) == 3
    assert str(one.sources["val"]) == "30% of train, at random, seed 1 (3 images)"
    again = load_image_labels(root / "l.json", image_size=4, val_fraction=0.3, seed=1)
    assert torch.equal(one.val_images, again.val_images)
    reds = sorted(torch.cat([one.train_images, one.val_images])[:, 0, 0, 0].tolist())
    assert reds == [10 * i for i in range(10)]  # every image once
    (root / "val.json").write_text(json.dumps({"img/0.png": ["b"]}))
    (root / "test.json").write_text(json.dumps({"img/1.png": ["a"]}))
    split = load_image_labels(root / "l.json", image_size=4, val=root / "val.json",
                              test=root / "test.json")
    assert split.val_labels.tolist() == [[0.0, 1.0]] and split.test_labels.tolist() == [[1.0, 0.0]]
    assert len(split.train_labels) == 10


def test_paths_are_relative_to_root_and_undecodable_files_are_skipped(tmp_path):
    root = _images(tmp_path / "data", 3)
    (root / "img" / "broken.png").write_bytes(b"not a png")
    labels = tmp_path / "labels.json"  # outside the images' folder
    labels.write_text(json.dumps({"img/0.png": ["a"], "img/1.png": ["b"],
                                  "img/broken.png": ["a", "b"]}))
    with pytest.warns(UserWarning, match=r"Skipped 1 file\(s\)"):
        data = load_image_labels(labels, root=root, image_size=4, val_fraction=0.0)
    assert data.train_labels.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert data.skipped == (str(root / "img" / "broken.png"),)


@pytest.mark.parametrize(("content", "name", "error", "match"), [
    ('{"img/9.png": ["a"], "img/0.png": ["b"]}', "l.json", DataError,
     r"1 file\(s\) listed in .* are not image files under .*img/9\.png"),
    ('{"img/0.png": "a"}', "l.json", DataError, "list of label names"),
    ("{not json", "l.json", DataError, "not valid JSON"),
    ('{"img/0.png": ["a"], "img/1.png": ["a"]}', "l.json", DataError,
     r"names 1 class\(es\) \['a'\]; a classifier needs at least two"),
    ("file,labels\nimg/0.png,a\nimg/0.png,b\n", "l.csv", DataError, "lists 'img/0.png' twice"),
    ("file,a,b\nimg/0.png,1,2\n", "l.csv", DataError, r"line 2: the class columns must hold 0 "),
    ("file,labels\nimg/0.png,a,b\n", "l.csv", DataError, "line 2: 3 cells, but the header"),
    ("img/0.png a", "l.txt", DataError, r"must end in \.csv or \.json"),
])
def test_bad_labels_files_are_named(tmp_path, content, name, error, match):
    root = _images(tmp_path, 2)
    (root / name).write_text(content)
    with pytest.raises(error, match=match):
        load_image_labels(root / name, image_size=4)


def test_bad_arguments_and_unknown_labels_fail_before_decoding(tmp_path):
    root = _images(tmp_path, 2)
    (root / "l.json").write_text(json.dumps({"img/0.png": ["a"], "img/1.png": ["b"]}))
    (root / "val.json").write_text(json.dumps({"img/0.png": ["c"]}))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_image_labels(root / "missing.json", image_size=4)
    with pytest.raises(ConfigError, match="leave val_fraction out"):
        load_image_labels(root / "l.json", image_size=4, val_fraction=0.2, val=root / "val.json")
    with pytest.raises(DataError, match=r"uses label\(s\) \['c'\] that the train labels do not"):
        load_image_labels(root / "l.json", image_size=4, val=root / "val.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped: no warning
        load_image_labels(root / "l.json", image_size=4, val_fraction=0.0)
