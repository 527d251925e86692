"""Find an image folder's splits: which folder holds the train, validation and test images.

Two layouts are read. **Class folders**, ``root/<class>/<image>`` (torchvision's
``ImageFolder``): every image is for training, and validation is split from it at random.
**Split folders**, ``root/train/<class>/<image>`` with ``root/val/`` (or ``valid/``,
``validation/``) and ``root/test/`` beside it (the layout of torchvision's and Hugging
Face's image-folder datasets): each split is read from its own folder.

The rule that decides (``layout="auto"``), so that a class named ``train`` or ``test`` is
never read as a split by accident, nor a split as a class:

- no subfolder of ``root`` is named after a split: class folders;
- every subfolder is named after a split (case-insensitive), there is a ``train`` one and
  the split folders hold subfolders: split folders;
- anything else is an error saying which folders are which: split and class folders mixed,
  split folders that hold images instead of class folders, a ``val``/``test`` folder
  without ``train``. ``layout="classes"`` (a class *named* ``train``) or ``layout="split"``
  states the layout instead of letting the rule guess.

Separate folders given as ``val=`` and ``test=`` are class-folder layouts. Every split
must have the same class folders as train, and train at least two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transferkit import _validate
from transferkit.errors import ConfigError, DataError, DataNotFoundError

__all__ = ["LAYOUTS", "SPLIT_NAMES", "Layout", "SplitFolders", "class_folders", "find_splits"]

Layout = Literal["auto", "classes", "split"]
#: The values of ``layout=``.
LAYOUTS: tuple[str, ...] = ("auto", "classes", "split")
#: The folder names of each split in the split-folder layout (matched case-insensitively).
SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "valid", "validation"),
    "test": ("test",),
}
_SPLIT_OF = {name: split for split, names in SPLIT_NAMES.items() for name in names}


@dataclass(frozen=True)
class SplitFolders:
    """The folders of an image folder's splits, checked, before any image is read.

    Attributes:
        layout: ``"classes"`` (``root/<class>``) or ``"split"`` (``root/train/<class>``...).
        train: The folder of the training classes.
        val: The folder of the validation classes; ``None``: split from train at random.
        test: The folder of the test classes; ``None``: no test split.
        classes: The class names (sorted folder names, the same in every split).
    """

    layout: Literal["classes", "split"]
    train: Path
    val: Path | None
    test: Path | None
    classes: tuple[str, ...]


def class_folders(folder: Path) -> list[str]:
    """Return the sorted names of the subfolders of ``folder`` (hidden ones left out)."""
    return sorted(
        entry.name for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def find_splits(
    root: str | os.PathLike[str],
    *,
    val: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    layout: Layout = "auto",
) -> SplitFolders:
    """Return the folders of the train, validation and test splits (see the module's rule).

    Args:
        root: Class folders, or split folders (``train/``, ``val/``, ``test/``).
        val: A separate folder of validation class folders.
        test: A separate folder of test class folders.
        layout: ``"auto"`` (the rule), ``"classes"`` or ``"split"``.

    Raises:
        DataNotFoundError: ``root``, ``val`` or ``test`` is not a folder.
        ConfigError: ``layout`` is unknown; ``val``/``test`` given while ``root`` has its
            own; the same folder given for two splits.
        DataError: Mixed or ambiguous layout, no class folder, a single class, or class
            folders that differ between splits (the differences are named).
    """
    layout = _validate.choice("layout", layout, LAYOUTS)
    folder = _existing(root, "Image folder", "one subfolder per class (root/<class>/<image>)")
    extra = {
        split: _existing(path, f"{split}=", "one subfolder per class")
        for split, path in (("val", val), ("test", test)) if path is not None
    }
    found = _split_folders(folder, layout)
    if found is None:
        kind, splits = "classes", {"train": folder}
    else:
        kind, splits = "split", found
    for split, path in extra.items():
        if split in splits:
            raise ConfigError(
                f"{split}={str(path)!r} was given, but {str(folder)!r} has its own "
                f"{split} folder {str(splits[split])!r}; pass one of the two."
            )
        splits[split] = path
    seen: dict[Path, str] = {}
    for split, path in splits.items():
        key = path.resolve()
        if key in seen:
            raise ConfigError(
                f"{str(path)!r} is given as both the {seen[key]} and the {split} folder; "
                "each split needs its own images."
            )
        seen[key] = split
    classes = {split: _classes_of(path) for split, path in splits.items()}
    train = classes["train"]
    if len(train) < 2:
        raise DataError(
            f"{str(splits['train'])!r} holds a single class folder ({train[0]!r}); a "
            "classifier needs at least two classes, one subfolder each "
            "(root/<class>/<image>)."
        )
    for split, names in classes.items():
        if names != train:
            raise DataError(_difference(splits["train"], train, splits[split], names))
    return SplitFolders(
        layout=kind,
        train=splits["train"],
        val=splits.get("val"),
        test=splits.get("test"),
        classes=tuple(train),
    )


def _existing(path: str | os.PathLike[str], what: str, expected: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(
            f"{what} {str(folder)!r} does not exist or is not a folder. Pass the folder "
            f"that holds {expected}."
        )
    return folder


def _split_folders(folder: Path, layout: str) -> dict[str, Path] | None:
    """Return ``{split: folder}`` for the split-folder layout, ``None`` for class folders."""
    if layout == "classes":
        return None
    names = class_folders(folder)
    splits = [n for n in names if n.lower() in _SPLIT_OF]
    others = [n for n in names if n.lower() not in _SPLIT_OF]
    if not splits and layout == "auto":
        return None
    hint = ("If they are classes, pass layout='classes'; if they are splits, put each "
            "class's images in <split>/<class>/.")
    if others:
        if not splits:
            raise DataError(
                f"layout='split' but {str(folder)!r} holds no split folder "
                f"({', '.join(n for v in SPLIT_NAMES.values() for n in v)}), only "
                f"{_names(others)}. Pass layout='auto' for class folders."
            )
        raise DataError(
            f"{str(folder)!r} mixes split folders ({_names(splits)}) and class folders "
            f"({_names(others)}). Put every class under train/<class>/ (and val/, test/), "
            f"or pass layout='classes' if {_names(splits)} are classes."
        )
    found: dict[str, Path] = {}
    for name in splits:
        split = _SPLIT_OF[name.lower()]
        if split in found:
            raise DataError(
                f"{str(folder)!r} has two {split} folders, {found[split].name!r} and "
                f"{name!r}; keep one."
            )
        found[split] = folder / name
    if "train" not in found:
        raise DataError(
            f"{str(folder)!r} holds split folders ({_names(splits)}) but no train/ folder. "
            f"Add train/<class>/<image>, or pass layout='classes' if they are classes."
        )
    if layout == "auto" and not any(class_folders(path) for path in found.values()):
        raise DataError(
            f"{str(folder)!r} holds only folders named like splits ({_names(splits)}), "
            f"with images but no class folders inside. {hint}"
        )
    return found


def _classes_of(folder: Path) -> list[str]:
    classes = class_folders(folder)
    if not classes:
        raise DataError(
            f"{str(folder)!r} holds no class subfolders; expected {folder.name}/<class>/<image>, "
            f"like torchvision's ImageFolder."
        )
    return classes


def _difference(train_dir: Path, train: list[str], other_dir: Path, other: list[str]) -> str:
    missing = [c for c in train if c not in other]
    extra = [c for c in other if c not in train]
    parts = []
    if missing:
        parts.append(f"{str(other_dir)!r} lacks {_names(missing)}")
    if extra:
        parts.append(f"{str(other_dir)!r} has {_names(extra)}, which {str(train_dir)!r} lacks")
    return (
        f"The class folders differ between splits: {'; '.join(parts)}. Every split needs "
        "the same class folders (labels are their sorted names)."
    )


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)
