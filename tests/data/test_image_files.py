"""list_images: which files under a folder are images (the image-folder rules)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from PIL import Image

from transferkit.data import IMG_EXTENSIONS, list_images
from transferkit.errors import DataNotFoundError


def _touch_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (2, 2)).save(path, format="PNG")


def test_recursive_sorted_extensions_and_hidden_entries(tmp_path: Path) -> None:
    for name in ("b/z.png", "b/a.JPG", "a.jpeg", "b/c/d.webp", ".hidden/x.png", "b/.y.png",
                 "notes.txt", "b/c/raw.gif"):
        _touch_image(tmp_path / name)
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.jpeg", "b/a.JPG", "b/c/d.webp", "b/z.png"]
    assert ".gif" not in IMG_EXTENSIONS  # the extension list decides, not the content


def test_paths_are_joined_to_the_folder_given(tmp_path: Path, monkeypatch) -> None:
    _touch_image(tmp_path / "photos" / "cat" / "1.png")
    monkeypatch.chdir(tmp_path)
    assert list_images("photos") == [Path("photos/cat/1.png")]


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist or is not a folder"):
        list_images(tmp_path / "missing")


def test_unlistable_subfolder_is_named_in_one_warning(tmp_path: Path, monkeypatch) -> None:
    _touch_image(tmp_path / "ok" / "1.png")
    _touch_image(tmp_path / "locked" / "2.png")
    locked = str(tmp_path / "locked")
    real_scandir = os.scandir

    def scandir(path):  # what a folder without read permission does (also as root)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list_images(tmp_path)
    assert got == [tmp_path / "ok" / "1.png"]
    assert [str(w.message) for w in caught] == [
        f"Cannot list folder {locked!r} (Permission denied); the images in it are skipped."]
