"""image_stats: the size and colour of images, from their headers; augmentation presets."""

from __future__ import annotations

import pytest
from PIL import Image

from transferkit.data import AUGMENT_PRESETS, Augment, augment_preset, image_stats
from transferkit.errors import ConfigError, DataError


def test_median_size_and_grey(tmp_path):
    paths = []
    for i, (mode, size) in enumerate([("L", (30, 20)), ("I;16", (40, 32)), ("1", (50, 44))]):
        paths.append(tmp_path / f"{i}.png")
        Image.new(mode, size).save(paths[-1])
    stats = image_stats(paths)
    assert stats.median_size == (32, 40) and stats.grey and stats.in_chans == 1
    assert stats.surveyed == 3


def test_one_colour_image_makes_the_set_rgb_and_grey_palettes_stay_grey(tmp_path):
    grey = Image.new("L", (8, 8)).convert("P")
    grey.save(tmp_path / "p.png")
    assert image_stats([tmp_path / "p.png"]).grey
    Image.new("RGB", (8, 8), (10, 200, 30)).convert("P").save(tmp_path / "c.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    assert not image_stats([tmp_path / "p.png", tmp_path / "rgb.png"]).grey
    assert image_stats([tmp_path / "c.png"]).in_chans == 3


def test_unreadable_files_are_left_out_and_none_readable_is_an_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    Image.new("RGB", (12, 10)).save(tmp_path / "ok.png")
    stats = image_stats([tmp_path / "bad.png", tmp_path / "ok.png"])
    assert stats.surveyed == 1 and stats.median_size == (10, 12)
    with pytest.raises(DataError, match="none of the 1 file"):
        image_stats([tmp_path / "bad.png"])


@pytest.mark.parametrize("name, expected", [
    ("none", None), ("light", Augment(crop_padding=4)),
    ("standard", Augment(crop_padding=4, hflip=0.5)),
    ("strong", Augment(crop_padding=4, hflip=0.5, erase=0.25))])
def test_augment_presets(name, expected):
    assert augment_preset(name, 32) == expected
    assert name in AUGMENT_PRESETS


def test_presets_scale_the_shift_and_reject_unknown_names():
    assert augment_preset("light", 224).crop_padding == 28
    assert augment_preset("light", 4).crop_padding == 1
    with pytest.raises(ConfigError, match="augment='flip' is not valid; use one of 'none', "
                                          "'light', 'standard', 'strong'"):
        augment_preset("flip", 32)
