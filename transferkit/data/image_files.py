"""Find the image files under a folder, by the image-folder rules.

A file is an image file when its extension, in any case, is one of
:data:`IMG_EXTENSIONS`. Files and folders whose name starts
with ``"."`` are hidden and skipped with everything under them; symbolic links to folders
are not followed (no loops), as in ``Path.rglob``. The files come back sorted, so a run
over a folder always visits it in the same order.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from transferkit.errors import DataNotFoundError

__all__ = ["IMG_EXTENSIONS", "list_images"]

#: File extensions read as images (torchvision's list), in any case.
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMG_EXTENSIONS


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Return the image files under ``folder``, recursively, sorted.

    A subfolder that cannot be listed is skipped with one warning naming it.

    Args:
        folder: The folder to search.

    Returns:
        The paths (``folder`` joined with each file's relative path), sorted.

    Raises:
        DataNotFoundError: ``folder`` does not exist or is not a folder.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "b").mkdir(); (root / ".hidden").mkdir()
        >>> for name in ("b/2.png", "1.jpg", ".hidden/3.png", "notes.txt"):
        ...     Image.new("L", (4, 4)).save(root / name, format="PNG")
        >>> [p.relative_to(root).as_posix() for p in list_images(root)]
        ['1.jpg', 'b/2.png']
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(
            f"{str(root)!r} does not exist or is not a folder. Pass a folder of images."
        )

    def unreadable(exc: OSError) -> None:
        warnings.warn(
            f"Cannot list folder {exc.filename!r} ({exc.strerror or exc}); the images in it "
            "are skipped.",
            stacklevel=4,
        )

    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if _is_image_name(f))
    return sorted(found)
