"""Load a user's image folder (torchvision ``ImageFolder`` layout) into memory.

The layout is ``root/<class name>/<image file>``; class names are the sorted subfolder
names and label ``i`` is ``classes[i]``, as in torchvision. Every image is decoded once
with PIL, converted to ``in_chans`` channels (1: ``"L"``, 3: ``"RGB"``), resized so its
shorter side is ``image_size`` and centre-cropped to a square, and stored in one ``uint8``
tensor ``[N, C, H, W]`` that :class:`transferkit.data.pipeline.TensorLoader` can serve.

Files that cannot be decoded are skipped with one warning giving their count (their paths
are kept in :attr:`ImageFolderData.skipped`). The train/validation split is seeded and
stratified: each class contributes ``round(val_fraction * n_class)`` images to validation.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from transferkit import _validate
from transferkit.errors import ConfigError, DataError, DataNotFoundError

__all__ = ["IMG_EXTENSIONS", "ImageFolderData", "decode_image", "load_image_folder"]

logger = logging.getLogger(__name__)

#: File extensions read as images (torchvision's list).
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)
_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True, eq=False)
class ImageFolderData:
    """An image folder held in memory, split into train and validation.

    Attributes:
        train_images: ``uint8`` tensor ``[N_train, C, H, W]``.
        train_labels: ``int64`` tensor ``[N_train]``.
        val_images: ``uint8`` tensor ``[N_val, C, H, W]`` (``N_val`` may be 0).
        val_labels: ``int64`` tensor ``[N_val]``.
        classes: Class names, indexed by label (sorted folder names).
        skipped: Paths of files that could not be decoded.
        root: The folder read.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    classes: tuple[str, ...]
    skipped: tuple[str, ...]
    root: str


def _to_8_bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit grey image (``"I;16"``...) to 8 bits over its full range.

    PIL's own ``convert("L")`` clips such images at 255, which turns a 16-bit PNG into
    a nearly white picture; here ``0..65535`` maps onto ``0..255`` (``round(v / 257)``).
    """
    if not img.mode.startswith("I;16"):
        return img
    wide = np.asarray(img).astype(np.float32)
    return Image.fromarray(np.rint(wide / 257.0).astype(np.uint8))  # 2-D uint8: mode "L"


def decode_image(
    path: str | os.PathLike[str], in_chans: int, size: int | tuple[int, int]
) -> torch.Tensor | None:
    """Decode one image file as :func:`load_image_folder` stores it, or return ``None``.

    The image is converted to ``in_chans`` channels (1: grey, 3: RGB), resized so that it
    covers ``size`` and centre-cropped to it. 16-bit grey images (PIL modes ``"I;16"``...)
    are scaled to 8 bits over their full range (``round(v / 257)``), not clipped.

    Args:
        path: The image file.
        in_chans: 1 or 3.
        size: ``(height, width)``, or an int for a square.

    Returns:
        A ``uint8`` tensor ``[in_chans, height, width]``, or ``None`` when the file is
        missing, unreadable or not an image.

    Raises:
        ConfigError: ``in_chans`` is not 1 or 3, or ``size`` is not a valid size.
    """
    if in_chans not in _MODES:
        raise ConfigError(f"in_chans={in_chans!r} must be 1 (grayscale) or 3 (RGB).")
    size = _validate.image_size(size, name="size")
    try:
        with Image.open(path) as img:
            img = _to_8_bit(img).convert(_MODES[in_chans])
            w, h = img.size
            scale = max(size[1] / w, size[0] / h)  # shorter side to the target, then crop
            new_w, new_h = max(size[1], round(w * scale)), max(size[0], round(h * scale))
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
            left, top = (new_w - size[1]) // 2, (new_h - size[0]) // 2
            img = img.crop((left, top, left + size[1], top + size[0]))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return data.view(size[0], size[1], -1).permute(2, 0, 1).contiguous()


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | tuple[int, int],
    in_chans: int = 3,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> ImageFolderData:
    """Load ``root/<class>/<image>`` into memory, resized, with a seeded stratified split.

    Args:
        root: The folder holding one subfolder per class.
        image_size: Stored size: an int for a square, or ``(height, width)``.
        in_chans: 1 (grayscale) or 3 (RGB).
        val_fraction: Fraction of each class held out for validation, in ``[0, 1)``.
        seed: Seed of the split.

    Returns:
        The images, labels and class names, split into train and validation.

    Raises:
        DataNotFoundError: ``root`` does not exist or is not a folder.
        DataError: No class folder, a class folder without readable images.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     for i in range(5):
        ...         Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(root / name / f"{i}.png")
        >>> data = load_image_folder(root, image_size=16, val_fraction=0.2)
        >>> data.classes, tuple(data.train_images.shape), tuple(data.val_images.shape)
        (('cat', 'dog'), (8, 3, 16, 16), (2, 3, 16, 16))
    """
    size = _validate.image_size(image_size)
    if in_chans not in _MODES:
        raise ConfigError(f"in_chans={in_chans!r} must be 1 (grayscale) or 3 (RGB).")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction!r} must lie in [0, 1), e.g. 0.2.")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(
            f"Image folder {str(folder)!r} does not exist or is not a folder. Pass the folder "
            f"that holds one subfolder per class (root/<class>/<image>)."
        )
    classes = sorted(
        entry.name for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataError(
            f"{str(folder)!r} holds no class subfolders; expected root/<class>/<image>, "
            f"like torchvision's ImageFolder."
        )
    images: list[torch.Tensor] = []
    labels: list[int] = []
    skipped: list[str] = []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (folder / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
        )
        if not files:
            raise DataError(
                f"Class folder {str(folder / name)!r} holds no image files "
                f"({', '.join(IMG_EXTENSIONS)}). Add images or remove the folder."
            )
        count = 0
        for path in files:
            tensor = decode_image(path, in_chans, size)
            if tensor is None:
                skipped.append(str(path))
                continue
            images.append(tensor)
            labels.append(label)
            count += 1
        if count == 0:
            raise DataError(
                f"No image in class folder {str(folder / name)!r} could be decoded "
                f"({len(files)} files tried). Replace the files or remove the folder."
            )
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} file(s) under {str(folder)!r} that could not be decoded, "
            f"e.g. {skipped[0]!r}; see ImageFolderData.skipped for all of them.",
            stacklevel=2,
        )
    all_images = torch.stack(images)
    all_labels = torch.tensor(labels, dtype=torch.long)
    val_mask = _stratified_val_mask(all_labels, len(classes), val_fraction, seed)
    logger.info(
        "Loaded %d images in %d classes from %s (%d for validation)",
        len(labels), len(classes), folder, int(val_mask.sum()),
    )
    return ImageFolderData(
        train_images=all_images[~val_mask],
        train_labels=all_labels[~val_mask],
        val_images=all_images[val_mask],
        val_labels=all_labels[val_mask],
        classes=tuple(classes),
        skipped=tuple(skipped),
        root=str(folder),
    )


def _stratified_val_mask(
    labels: torch.Tensor, num_classes: int, val_fraction: float, seed: int
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(labels.shape[0], dtype=torch.bool)
    for label in range(num_classes):
        members = (labels == label).nonzero().flatten()
        n_val = round(val_fraction * members.numel())
        chosen = members[torch.randperm(members.numel(), generator=generator)[:n_val]]
        mask[chosen] = True
    return mask
