"""decode_image: how one file becomes a uint8 tensor (bit depths PIL misreads by default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data import decode_image


def _gradient_16_bit(path: Path) -> np.ndarray:
    """Save a 16-bit grey PNG whose 256 columns run over the whole 0..65535 range."""
    values = np.round(np.linspace(0, 65535, 256)).astype(np.uint16)
    image = np.tile(values, (4, 1))
    Image.fromarray(image).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"  # what PIL reads back: the case under test
    return image


@pytest.mark.parametrize("in_chans", [1, 3])
def test_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path: Path, in_chans: int) -> None:
    wide = _gradient_16_bit(tmp_path / "gradient16.png")
    got = decode_image(tmp_path / "gradient16.png", in_chans, (4, 256))
    assert got is not None and got.dtype == torch.uint8
    assert tuple(got.shape) == (in_chans, 4, 256)
    expected = torch.from_numpy(np.rint(wide / 257.0).astype(np.uint8))
    for channel in got:  # grey in every channel
        assert torch.equal(channel, expected)
    assert got[0, 0, :4].tolist() == [0, 1, 2, 3] and got[0, 0, -1] == 255
    # PIL's own convert("L") clips everything above 255 to white: 255 of 256 columns
    assert int((got[0, 0] == 255).sum()) == 1


def test_8_bit_images_are_unchanged(tmp_path: Path) -> None:
    values = np.arange(256, dtype=np.uint8)
    Image.fromarray(np.tile(values, (4, 1))).save(tmp_path / "gradient8.png")
    got = decode_image(tmp_path / "gradient8.png", 1, (4, 256))
    assert got is not None and got[0, 0].tolist() == list(range(256))
