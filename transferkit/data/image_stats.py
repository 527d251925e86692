"""What a folder of images looks like, read from the files' headers: size and colour.

``transferkit train`` uses it to choose the stored image size and the number of input
channels before it decodes anything: PIL reads an image's size and mode from its header,
so a survey of a few hundred files takes well under a second.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from transferkit.errors import DataError

__all__ = ["GREY_MODES", "ImageStats", "image_stats"]

#: PIL modes of grey images (8-bit, 16-bit, 32-bit, 1-bit, grey with alpha).
GREY_MODES = ("1", "F", "I", "I;16", "I;16B", "I;16L", "I;16N", "L", "LA")
_SURVEY = 256  # files read at most: evenly spaced over the sorted list


@dataclass(frozen=True)
class ImageStats:
    """The size and colour of a set of images, from a survey of their headers.

    Attributes:
        median_size: Median ``(height, width)`` of the surveyed images.
        grey: Every surveyed image is grey (one channel).
        surveyed: How many files were read (unreadable ones are left out).
    """

    median_size: tuple[int, int]
    grey: bool
    surveyed: int

    @property
    def in_chans(self) -> int:
        """1 for grey images, 3 otherwise."""
        return 1 if self.grey else 3


def image_stats(paths: Sequence[str | os.PathLike[str]]) -> ImageStats:
    """Survey the headers of (at most 256 evenly spaced) ``paths``.

    Raises:
        DataError: No surveyed file could be read as an image.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for i, size in enumerate([(30, 20), (40, 30), (50, 40)]):
        ...     Image.new("L", size).save(root / f"{i}.png")
        >>> stats = image_stats(sorted(root.glob("*.png")))
        >>> stats.median_size, stats.grey, stats.in_chans
        ((30, 40), True, 1)
    """
    step = max(1, len(paths) // _SURVEY)
    sizes: list[tuple[int, int]] = []
    grey = True
    for path in list(paths)[::step][:_SURVEY]:
        try:
            with Image.open(path) as img:
                w, h = img.size
                mode = img.mode
                if mode == "P":  # a palette: grey when every entry is
                    palette = img.getpalette() or []
                    mode = "L" if all(palette[i] == palette[i + 1] == palette[i + 2]
                                      for i in range(0, len(palette) - 2, 3)) else "RGB"
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        sizes.append((h, w))
        grey = grey and mode in GREY_MODES
    if not sizes:
        raise DataError(f"none of the {len(paths)} file(s) surveyed could be read as an image.")
    median = (int(statistics.median(h for h, _ in sizes)),
              int(statistics.median(w for _, w in sizes)))
    return ImageStats(median_size=median, grey=grey, surveyed=len(sizes))
