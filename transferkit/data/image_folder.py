"""Load a user's image folder into memory: class folders, or train/val/test split folders.

Which folder holds which split is decided by :mod:`transferkit.data.folder_layout`:
``root/<class>/<image>`` (torchvision's ``ImageFolder``), or ``root/train/<class>/``,
``root/val/<class>/`` and ``root/test/<class>/`` (torchvision's and Hugging Face's split
layout), or separate ``val=``/``test=`` folders. Class names are the sorted subfolder names
and label ``i`` is ``classes[i]``, as in torchvision. Every image is decoded once with PIL,
converted to ``in_chans`` channels (1: ``"L"``, 3: ``"RGB"``), resized so its shorter side
is ``image_size`` and centre-cropped, and stored in one ``uint8`` tensor ``[N, C, H, W]``
per split that :class:`transferkit.data.pipeline.TensorLoader` can serve.

Files that cannot be decoded are skipped with one warning giving their count (their paths
are kept in :attr:`ImageFolderData.skipped`). Without a validation folder, validation is
split from train, seeded and stratified: each class contributes
``round(val_fraction * n_class)`` images. :attr:`ImageFolderData.sources` records where
each split came from.
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from transferkit import _validate
from transferkit.data.folder_layout import Layout, find_splits
from transferkit.data.image_files import IMG_EXTENSIONS, list_images
from transferkit.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "ImageFolderData",
    "SplitSource",
    "decode_image",
    "load_image_folder",
    "stratified_val_mask",
]

logger = logging.getLogger(__name__)

_MODES = {1: "L", 3: "RGB"}
#: The fraction of each class held out for validation when no validation folder exists.
DEFAULT_VAL_FRACTION = 0.2
_SPLIT_TITLES = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class SplitSource:
    """Where the images of one split came from; ``str()`` says it in words for a report.

    Attributes:
        folder: The folder read; for validation split from train, train's folder.
        count: The split's number of images.
        fraction: For validation split from train at random: the fraction of each class
            held out; ``None`` for a split read from its own folder.
        seed: The seed of that random split; ``None`` for a split read from a folder.
        stratified: Whether that split took the same fraction of each class (single-label
            folders) or of the whole (multi-label labels files).

    Example:
        >>> str(SplitSource("data/val", 120))
        'data/val (120 images)'
        >>> str(SplitSource("data", 120, fraction=0.2, seed=0))
        '20% of train, stratified, seed 0 (120 images)'
    """

    folder: str
    count: int
    fraction: float | None = None
    seed: int | None = None
    stratified: bool = True

    def __str__(self) -> str:
        if self.fraction is None:
            return f"{self.folder} ({self.count} images)"
        if self.fraction == 0:
            return "none (val_fraction=0)"
        how = "stratified" if self.stratified else "at random"
        return (f"{self.fraction * 100:g}% of train, {how}, seed {self.seed} "
                f"({self.count} images)")


@dataclass(frozen=True, eq=False)
class ImageFolderData:
    """An image folder held in memory: train, validation and (when present) test splits.

    Attributes:
        train_images: ``uint8`` tensor ``[N_train, C, H, W]``.
        train_labels: ``int64`` tensor ``[N_train]``; from a labels file
            (:func:`~transferkit.data.image_labels.load_image_labels`), float32 multi-hot
            ``[N_train, len(classes)]`` (the same for the other splits' labels).
        val_images: ``uint8`` tensor ``[N_val, C, H, W]`` (``N_val`` may be 0).
        val_labels: ``int64`` tensor ``[N_val]``.
        classes: Class names, indexed by label (sorted folder names).
        skipped: Paths of files that could not be decoded.
        root: The folder read.
        test_images: ``uint8`` tensor ``[N_test, C, H, W]``; ``None`` without a test split.
        test_labels: ``int64`` tensor ``[N_test]``; ``None`` without a test split.
        layout: How ``root`` was read: ``"classes"`` (``root/<class>``), ``"split"``
            (``root/train/<class>``...) or ``"labels"`` (a labels file, multi-label).
        sources: Where each split came from: ``"train"``, ``"val"`` and, when present,
            ``"test"`` map to a :class:`SplitSource`.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    classes: tuple[str, ...]
    skipped: tuple[str, ...]
    root: str
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    layout: str = "classes"
    sources: Mapping[str, SplitSource] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """Return one line per split, e.g. ``"validation: data/val (120 images)"``."""
        return [f"{_SPLIT_TITLES[split]}: {source}" for split, source in self.sources.items()]


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
    val_fraction: float | None = None,
    seed: int = 0,
    val: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    layout: Layout = "auto",
) -> ImageFolderData:
    """Load an image folder into memory, resized, with its train, validation and test splits.

    ``root`` is either class folders, ``root/<class>/<image>``, or split folders,
    ``root/train/<class>/<image>`` with ``root/val/`` (or ``valid/``, ``validation/``) and
    ``root/test/`` beside it; the rule that tells them apart (a class may be named
    ``train``) is in :mod:`transferkit.data.folder_layout`. Validation comes from
    ``root/val/`` or ``val=``; without either, it is split from train, seeded and
    stratified. Test comes from ``root/test/`` or ``test=``, if any.

    Args:
        root: Class folders or split folders.
        image_size: Stored size: an int for a square, or ``(height, width)``.
        in_chans: 1 (grayscale) or 3 (RGB).
        val_fraction: Fraction of each class held out for validation, in ``[0, 1)``, when
            there is no validation folder; default ``DEFAULT_VAL_FRACTION`` (0.2).
        seed: Seed of that split.
        val: A separate folder of validation images, ``val/<class>/<image>``.
        test: A separate folder of test images, ``test/<class>/<image>``.
        layout: ``"auto"`` (the rule), ``"classes"`` or ``"split"``: how ``root`` is read.

    Returns:
        The images, labels and class names of every split, and where each came from
        (:attr:`ImageFolderData.sources`).

    Raises:
        DataNotFoundError: ``root``, ``val`` or ``test`` does not exist or is not a folder.
        ConfigError: A bad argument; ``val_fraction`` given while validation has a folder;
            ``val``/``test`` given while ``root`` has its own; one folder for two splits.
        DataError: No class folder or a single one; class folders that differ between
            splits; split and class folders mixed in ``root``; a class folder without
            readable images.

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
        >>> data.layout, str(data.sources["val"])
        ('classes', '20% of train, stratified, seed 0 (2 images)')
    """
    size = _validate.image_size(image_size)
    if in_chans not in _MODES:
        raise ConfigError(f"in_chans={in_chans!r} must be 1 (grayscale) or 3 (RGB).")
    if val_fraction is not None and (
        isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real)
        or not 0.0 <= val_fraction < 1.0
    ):
        raise ConfigError(f"val_fraction={val_fraction!r} must lie in [0, 1), e.g. 0.2.")
    folders = find_splits(root, val=val, test=test, layout=layout)
    if folders.val is not None and val_fraction is not None:
        raise ConfigError(
            f"val_fraction={val_fraction!r} splits validation from train, but validation "
            f"comes from the folder {str(folders.val)!r}; leave val_fraction out."
        )
    skipped: list[str] = []
    images, labels = _read_split(folders.train, folders.classes, in_chans, size, skipped)
    sources: dict[str, SplitSource] = {}
    if folders.val is None:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
        val_mask = stratified_val_mask(labels, len(folders.classes), fraction, seed)
        val_images, val_labels = images[val_mask], labels[val_mask]
        images, labels = images[~val_mask], labels[~val_mask]
        sources["train"] = SplitSource(str(folders.train), len(labels))
        sources["val"] = SplitSource(str(folders.train), len(val_labels), fraction, seed)
    else:
        sources["train"] = SplitSource(str(folders.train), len(labels))
        val_images, val_labels = _read_split(folders.val, folders.classes, in_chans, size,
                                             skipped)
        sources["val"] = SplitSource(str(folders.val), len(val_labels))
    test_images = test_labels = None
    if folders.test is not None:
        test_images, test_labels = _read_split(folders.test, folders.classes, in_chans, size,
                                               skipped)
        sources["test"] = SplitSource(str(folders.test), len(test_labels))
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} file(s) that could not be decoded, e.g. {skipped[0]!r}; "
            f"see ImageFolderData.skipped for all of them.",
            stacklevel=2,
        )
    folder = Path(root).expanduser()
    logger.info("Loaded %d classes from %s (%s layout): %s", len(folders.classes), folder,
             folders.layout, "; ".join(f"{_SPLIT_TITLES[k]} {v}" for k, v in sources.items()))
    return ImageFolderData(
        train_images=images,
        train_labels=labels,
        val_images=val_images,
        val_labels=val_labels,
        classes=folders.classes,
        skipped=tuple(skipped),
        root=str(folder),
        test_images=test_images,
        test_labels=test_labels,
        layout=folders.layout,
        sources=sources,
    )


def _read_split(
    folder: Path, classes: tuple[str, ...], in_chans: int, size: tuple[int, int],
    skipped: list[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``folder/<class>/**`` for every class; append undecodable paths to ``skipped``."""
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = list_images(folder / name)
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
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def stratified_val_mask(
    labels: torch.Tensor, num_classes: int, val_fraction: float, seed: int
) -> torch.Tensor:
    """Return a mask of ``round(val_fraction * n_c)`` seeded picks from each class ``c``.

    Example:
        >>> mask = stratified_val_mask(torch.arange(20) % 2, 2, 0.2, seed=0)
        >>> int(mask.sum()), int(mask[::2].sum()), int(mask[1::2].sum())
        (4, 2, 2)
    """
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(labels.shape[0], dtype=torch.bool)
    for label in range(num_classes):
        members = (labels == label).nonzero().flatten()
        n_val = round(val_fraction * members.numel())
        chosen = members[torch.randperm(members.numel(), generator=generator)[:n_val]]
        mask[chosen] = True
    return mask
