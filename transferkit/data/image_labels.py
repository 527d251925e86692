"""Load multi-label images: a labels file (file -> labels) instead of class folders.

A sample of a multi-label data set has any number of classes, so they cannot be folders.
:func:`load_image_labels` reads them from a file beside the images:

- **JSON**: ``{"photos/1.jpg": ["cat", "dog"], "photos/2.jpg": [], ...}``;
- **CSV with two columns**, ``file,labels``: the labels of a file in one cell, separated
  by ``label_sep`` (default a space, as Kaggle's multi-label sets; pass ``label_sep=";"``
  for names with spaces); an empty cell is a file without labels;
- **CSV with three or more columns**, ``file,cat,dog,...``: one 0/1 column per class,
  named by the header.

The first row of a CSV is its header. File paths are relative to ``root`` (default: the
labels file's folder); each must be an image file by the image-folder rules
(:data:`~transferkit.data.image_files.IMG_EXTENSIONS`, not hidden). Classes are the
sorted names of the labels (CSV columns: their header order) and the labels are stored as
a float ``[N, C]`` multi-hot tensor, so :class:`~transferkit.data.pipeline.TensorLoader`
serves them and the Trainer infers ``task="multi_label"``. Images are decoded as
:func:`~transferkit.data.image_folder.load_image_folder` decodes them (same resizing,
same skipping of undecodable files with one warning); validation is split from train at
random, seeded (not stratified: samples have several classes), unless ``val=`` names its
own labels file.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from transferkit import _validate
from transferkit.data.image_files import IMG_EXTENSIONS, list_images
from transferkit.data.image_folder import (
    DEFAULT_VAL_FRACTION,
    ImageFolderData,
    SplitSource,
    decode_image,
)
from transferkit.errors import ConfigError, DataError, DataNotFoundError

__all__ = ["LABEL_FILE_TYPES", "load_image_labels", "read_labels_file"]

logger = logging.getLogger(__name__)

#: The labels-file formats, by extension.
LABEL_FILE_TYPES: tuple[str, ...] = (".csv", ".json")
_SHOWN = 3  # file names quoted in a message; the count covers the rest


def read_labels_file(path: str | os.PathLike[str], *,
                     label_sep: str = " ") -> tuple[list[tuple[str, list[str]]], list[str] | None]:
    """Read a labels file; return ``[(file, [label, ...]), ...]`` and the CSV column classes.

    The second value is the class order of a one-column-per-class CSV (its header), else
    ``None`` (the classes are then the sorted label names).

    Raises:
        DataNotFoundError: ``path`` is not a file.
        DataError: An unknown extension, malformed JSON or CSV, a cell of a class column
            that is not 0 or 1, or a file listed twice.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataNotFoundError(f"Labels file {str(file)!r} does not exist. Pass a .csv or "
                                ".json file that maps each image file to its labels.")
    kind = file.suffix.lower()
    if kind not in LABEL_FILE_TYPES:
        raise DataError(f"Labels file {str(file)!r} must end in {' or '.join(LABEL_FILE_TYPES)}"
                        f" (got {file.suffix!r}); see load_image_labels for the formats.")
    columns = None
    if kind == ".json":
        rows = _json_rows(file)
    else:
        rows, columns = _csv_rows(file, label_sep)
    seen: set[str] = set()
    for name, _ in rows:
        if name in seen:
            raise DataError(f"Labels file {str(file)!r} lists {name!r} twice; give each image "
                            "one entry with all its labels.")
        seen.add(name)
    return rows, columns


def _json_rows(file: Path) -> list[tuple[str, list[str]]]:
    try:
        table = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"Labels file {str(file)!r} is not valid JSON: {exc}.") from exc
    bad = not isinstance(table, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in table.values())
    if bad:
        raise DataError(f"Labels file {str(file)!r} must hold one JSON object mapping each "
                        'file to a list of label names, e.g. {"1.jpg": ["cat", "dog"]}.')
    return [(str(k), list(v)) for k, v in table.items()]


def _csv_rows(file: Path, sep: str) -> tuple[list[tuple[str, list[str]]], list[str] | None]:
    with file.open(newline="", encoding="utf-8") as f:
        table = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if len(table) < 2 or len(table[0]) < 2:
        raise DataError(f"Labels file {str(file)!r} needs a header row (file,labels or "
                        "file,<class>,<class>...) and one row per image.")
    header, body = [c.strip() for c in table[0]], table[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"Labels file {str(file)!r}, line {i}: {len(row)} cells, but the "
                            f"header has {len(header)}.")
    if len(header) == 2:
        return [(row[0].strip(), [x for x in row[1].split(sep) if x.strip()])
                for row in body], None
    classes = header[1:]
    rows = []
    for i, row in enumerate(body, start=2):
        cells = [c.strip() for c in row[1:]]
        if any(c not in ("0", "1") for c in cells):
            raise DataError(f"Labels file {str(file)!r}, line {i}: the class columns must hold "
                            f"0 or 1, got {cells}.")
        rows.append((row[0].strip(), [c for c, v in zip(classes, cells, strict=True)
                                      if v == "1"]))
    return rows, classes


def _split(path: str | os.PathLike[str], root: Path, classes: list[str], label_sep: str,
           in_chans: int, size: tuple[int, int], skipped: list[str],
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the images of one labels file; return ``uint8`` images and multi-hot labels."""
    rows, _ = read_labels_file(path, label_sep=label_sep)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({x for _, labels in rows for x in labels if x not in index})
    if unknown:
        raise DataError(f"Labels file {str(path)!r} uses label(s) {unknown[:_SHOWN]} that the "
                        f"train labels do not ({len(unknown)} in all); every split needs the "
                        "train split's classes.")
    files = [(root / name, labels) for name, labels in rows]
    missing = [str(p) for p, _ in files if not p.is_file()
               or p.suffix.lower() not in IMG_EXTENSIONS or p.name.startswith(".")]
    if missing:
        raise DataError(
            f"{len(missing)} file(s) listed in {str(path)!r} are not image files under "
            f"{str(root)!r}: {missing[:_SHOWN]}. Paths are relative to root= (default: the "
            f"labels file's folder), extensions {', '.join(IMG_EXTENSIONS)}.")
    images, targets = [], []
    for file, labels in files:
        tensor = decode_image(file, in_chans, size)
        if tensor is None:
            skipped.append(str(file))
            continue
        row = torch.zeros(len(classes))
        row[[index[x] for x in labels]] = 1.0
        images.append(tensor)
        targets.append(row)
    if not images:
        raise DataError(f"None of the {len(files)} images listed in {str(path)!r} could be "
                        "decoded; replace the files or fix the paths.")
    return torch.stack(images), torch.stack(targets)


def load_image_labels(
    labels: str | os.PathLike[str],
    *,
    image_size: int | tuple[int, int],
    in_chans: int = 3,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    val: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    label_sep: str = " ",
) -> ImageFolderData:
    """Load multi-label images listed in a labels file, with float ``[N, C]`` multi-hot labels.

    Args:
        labels: The train labels file (.json or .csv, see the module's formats).
        image_size: Stored size: an int for a square, or ``(height, width)``.
        in_chans: 1 (grayscale) or 3 (RGB).
        root: The folder the file paths are relative to (default: each labels file's).
        val_fraction: Fraction of train held out for validation, at random, in ``[0, 1)``,
            when ``val`` is not given; default ``DEFAULT_VAL_FRACTION`` (0.2).
        seed: Seed of that split.
        val: A validation labels file (the same classes).
        test: A test labels file.
        label_sep: The separator of the labels in a two-column CSV.

    Returns:
        An :class:`~transferkit.data.image_folder.ImageFolderData` with ``layout="labels"``
        and float32 multi-hot ``*_labels`` of shape ``[N, len(classes)]``.

    Raises:
        DataNotFoundError: A labels file or ``root`` does not exist.
        ConfigError: A bad argument; ``val_fraction`` with ``val``.
        DataError: A malformed labels file, fewer than two classes, a listed file that is
            not an image under ``root``, labels of ``val``/``test`` unknown to train.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for i in range(5):
        ...     Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(root / f"{i}.png")
        >>> _ = (root / "labels.csv").write_text(
        ...     "file,labels\\n0.png,cat dog\\n1.png,cat\\n2.png,dog\\n3.png,\\n4.png,cat dog\\n")
        >>> data = load_image_labels(root / "labels.csv", image_size=16, val_fraction=0.2)
        >>> data.classes, tuple(data.train_labels.shape), tuple(data.val_labels.shape)
        (('cat', 'dog'), (4, 2), (1, 2))
    """
    size = _validate.image_size(image_size)
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans={in_chans!r} must be 1 (grayscale) or 3 (RGB).")
    if val_fraction is not None:
        fraction = _validate.probability("val_fraction", val_fraction)
        if fraction >= 1:
            raise ConfigError(f"val_fraction={val_fraction!r} must lie in [0, 1), e.g. 0.2.")
        if val is not None:
            raise ConfigError(f"val_fraction={val_fraction!r} splits validation from train, but "
                              f"val={str(val)!r} was given too; leave val_fraction out.")
    if not isinstance(label_sep, str) or not label_sep:
        raise ConfigError(f"label_sep={label_sep!r} must be a non-empty string, e.g. ' '.")
    rows, columns = read_labels_file(labels, label_sep=label_sep)
    classes = columns or sorted({x for _, names in rows for x in names})
    if len(classes) < 2:
        raise DataError(f"Labels file {str(labels)!r} names {len(classes)} class(es) "
                        f"{classes}; a classifier needs at least two.")

    def folder(path: str | os.PathLike[str]) -> Path:
        base = Path(root).expanduser() if root is not None else Path(path).expanduser().parent
        if not base.is_dir():
            raise DataNotFoundError(f"root {str(base)!r} does not exist or is not a folder.")
        return base

    skipped: list[str] = []
    base = folder(labels)
    images, targets = _split(labels, base, classes, label_sep, in_chans, size, skipped)
    unlisted = len(list_images(base)) - len(rows)
    if unlisted > 0:
        logger.info("%d image file(s) under %s are not in %s: not used", unlisted, base, labels)
    sources = {"train": SplitSource(str(labels), len(targets))}
    if val is None:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
        held = order[: round(fraction * len(targets))]
        mask = torch.zeros(len(targets), dtype=torch.bool)
        mask[held] = True
        val_images, val_labels = images[mask], targets[mask]
        images, targets = images[~mask], targets[~mask]
        sources["train"] = SplitSource(str(labels), len(targets))
        sources["val"] = SplitSource(str(labels), len(val_labels), fraction, seed,
                                     stratified=False)
    else:
        val_images, val_labels = _split(val, folder(val), classes, label_sep, in_chans, size,
                                        skipped)
        sources["val"] = SplitSource(str(val), len(val_labels))
    test_images = test_labels = None
    if test is not None:
        test_images, test_labels = _split(test, folder(test), classes, label_sep, in_chans, size,
                                          skipped)
        sources["test"] = SplitSource(str(test), len(test_labels))
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} file(s) that could not be decoded, e.g. "
                      f"{skipped[0]!r}; see ImageFolderData.skipped for all of them.",
                      stacklevel=2)
    logger.info("Loaded %d multi-label classes from %s: %s", len(classes), labels,
                "; ".join(f"{k} {v}" for k, v in sources.items()))
    return ImageFolderData(
        train_images=images, train_labels=targets, val_images=val_images,
        val_labels=val_labels, classes=tuple(classes), skipped=tuple(skipped),
        root=str(base), test_images=test_images, test_labels=test_labels, layout="labels",
        sources=sources)
