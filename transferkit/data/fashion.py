"""Find, verify and load the FashionMNIST data set (60,000 train / 10,000 test).

The four idx files are searched in this order, the first folder holding all four wins:

1. the explicit ``root`` argument,
2. ``$TRANSFERKIT_DATA``,
3. the user cache: ``$TRANSFERKIT_CACHE/fashion-mnist``, else
   ``$XDG_CACHE_HOME/transferkit/fashion-mnist``, else ``~/.cache/transferkit/fashion-mnist``,
4. ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist`` package),
5. a download through torchvision's mirrors into the user cache, unless offline
   (``offline=True``, ``TRANSFERKIT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``).

For ``root`` and ``$TRANSFERKIT_DATA`` the folder itself, its ``fashion-mnist/`` subfolder
and torchvision's layout ``FashionMNIST/raw/`` are tried. Each file may be gzip-compressed
(``*.gz``) or already decompressed. The *decompressed* content is checked against the
SHA-256 hashes in :data:`SHA256` (the ``.gz`` files differ between distributors, the content
does not). Files the user owns are never overwritten or deleted: a download goes to a
temporary file in the cache folder, is verified, then moved into place with ``os.replace``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from transferkit._env import is_offline, transferkit_cache_dir
from transferkit.errors import CorruptDataError, DataNotFoundError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SHA256",
    "FashionMNIST",
    "fashion_mnist",
    "fashion_mnist_search_paths",
    "read_idx",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names of FashionMNIST, indexed by label."""

#: SHA-256 of the *decompressed* original idx files (computed once from Debian's package).
SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

_FILES = tuple(SHA256)
_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# Used only when torchvision cannot be imported; torchvision's list wins otherwise.
_MIRRORS: tuple[str, ...] = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_FIXES = (
    "Fix it in one of these ways:\n"
    "  - install Debian's copy: sudo apt-get install dataset-fashion-mnist\n"
    "  - put the four idx files (.gz or decompressed) in a folder and set "
    "TRANSFERKIT_DATA=/that/folder (or pass root=)\n"
    "  - allow the download: unset TRANSFERKIT_OFFLINE / HF_HUB_OFFLINE and pass offline=False"
)
_REPLACE = (
    "Replace it with a good copy (Debian: sudo apt-get install dataset-fashion-mnist), or "
    "move it away and let transferkit download it again."
)
_IDX_UBYTE = 0x08


@dataclass(frozen=True, eq=False)
class FashionMNIST:
    """The FashionMNIST split, held in memory.

    Attributes:
        train_images: ``uint8`` tensor ``[60000, 28, 28]``.
        train_labels: ``int64`` tensor ``[60000]``.
        test_images: ``uint8`` tensor ``[10000, 28, 28]``.
        test_labels: ``int64`` tensor ``[10000]``.
        classes: Class names, indexed by label.
        source: The folder the files were read from.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str


def _cache_dir() -> Path:
    return transferkit_cache_dir() / "fashion-mnist"


def _expand(folder: Path) -> list[Path]:
    return [folder, folder / "fashion-mnist", folder / "FashionMNIST" / "raw"]


def fashion_mnist_search_paths(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Return the folders searched for the FashionMNIST files, in search order.

    Args:
        root: An explicit folder, searched first.

    Returns:
        The candidate folders; the last one is the user cache, where downloads go,
        unless ``/usr/share/datasets/fashion-mnist`` follows it.
    """
    paths: list[Path] = []
    if root is not None:
        paths += _expand(Path(root).expanduser())
    if os.environ.get("TRANSFERKIT_DATA"):
        paths += _expand(Path(os.environ["TRANSFERKIT_DATA"]).expanduser())
    paths += [_cache_dir(), _SYSTEM_DIR]
    unique: list[Path] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return unique


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path, *, gz: bool) -> bytes:
    try:
        if gz:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:
        raise CorruptDataError(
            f"Cannot read {str(path)!r}: the file is truncated or not valid gzip ({exc}). "
            + _REPLACE
        ) from exc


def _check_content(data: bytes, path: Path, sha256: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CorruptDataError(
            f"The content of {str(path)!r} does not match its recorded SHA-256: got {digest}, "
            f"expected {sha256} (the file is truncated or corrupted). {_REPLACE}"
        )


def read_idx(path: str | os.PathLike[str], *, sha256: str | None = None) -> torch.Tensor:
    """Read an idx file (``.gz`` or decompressed) into a tensor, checking its content.

    Args:
        path: The file.
        sha256: The expected SHA-256 of the decompressed content; ``None`` skips the check.

    Returns:
        A ``uint8`` tensor shaped as the idx header says.

    Raises:
        CorruptDataError: The file is truncated, malformed, or its content hash differs.
    """
    path = Path(path)
    data = _read_bytes(path, gz=path.suffix == ".gz")
    if sha256 is not None:
        _check_content(data, path, sha256)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise CorruptDataError(f"{str(path)!r} is not a uint8 idx file (bad header). {_REPLACE}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise CorruptDataError(f"{str(path)!r} has a truncated idx header. {_REPLACE}")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for dim in shape:
        count *= dim
    if len(data) != header + count:
        raise CorruptDataError(
            f"{str(path)!r} is truncated or padded: its header says {shape} "
            f"({header + count} bytes) but it holds {len(data)} bytes. {_REPLACE}"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` into ``dest`` (a fresh temporary file); tests replace this."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as fh:
        shutil.copyfileobj(response, fh)


def _download(name: str, folder: Path, mirrors: Sequence[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.gz"
    errors: list[str] = []
    for mirror in mirrors:
        url = f"{mirror}{name}.gz"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            logger.info("Downloading %s", url)
            _fetch(url, tmp)
            _check_content(_read_bytes(tmp, gz=True), tmp, SHA256[name])
            if target.exists():  # appeared meanwhile: keep the user's file
                return target
            os.replace(tmp, target)
            return target
        except Exception as exc:  # any failure: try the next mirror, report all at the end
            errors.append(f"{url}: {exc}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise DataNotFoundError(
        f"Could not download {name}.gz from any mirror:\n  " + "\n  ".join(errors) + f"\n{_FIXES}"
    )


def _load_folder(folder: Path, files: dict[str, Path]) -> FashionMNIST:
    tensors = {name: read_idx(path, sha256=SHA256[name]) for name, path in files.items()}
    train_images = tensors["train-images-idx3-ubyte"]
    train_labels = tensors["train-labels-idx1-ubyte"].long()
    test_images = tensors["t10k-images-idx3-ubyte"]
    test_labels = tensors["t10k-labels-idx1-ubyte"].long()
    pairs = ((train_images, train_labels, "train"), (test_images, test_labels, "t10k"))
    for images, labels, split in pairs:
        if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise CorruptDataError(
                f"The {split} files in {str(folder)!r} do not fit together: images "
                f"{tuple(images.shape)}, labels {tuple(labels.shape)}. Replace them with a "
                f"matching pair."
            )
    logger.info("FashionMNIST loaded from %s", folder)
    return FashionMNIST(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=FASHION_MNIST_CLASSES,
        source=str(folder),
    )


def fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    offline: bool | None = None,
    mirrors: Sequence[str] | None = None,
) -> FashionMNIST:
    """Find, verify and load FashionMNIST, downloading it only as a last resort.

    Args:
        root: A folder searched first (the folder itself, ``root/fashion-mnist`` and
            torchvision's ``root/FashionMNIST/raw``).
        offline: ``True`` never downloads; ``None`` reads ``TRANSFERKIT_OFFLINE`` and
            ``HF_HUB_OFFLINE``.
        mirrors: Base URLs to download from; defaults to torchvision's mirrors.

    Returns:
        The data set, with ``source`` naming the folder it was read from.

    Raises:
        DataNotFoundError: No folder holds the four files and downloading is not possible.
        CorruptDataError: A file found is truncated or its content hash differs.

    Example:
        >>> import os
        >>> os.path.isdir("/usr/share/datasets/fashion-mnist")  # doctest: +SKIP
        True
        >>> data = fashion_mnist(offline=True)  # doctest: +SKIP
        >>> data.train_images.shape, data.classes[0]  # doctest: +SKIP
        (torch.Size([60000, 28, 28]), 'T-shirt/top')
    """
    tried: list[str] = []
    cache = _cache_dir()
    for folder in fashion_mnist_search_paths(root):
        found = {name: _find_file(folder, name) for name in _FILES}
        present = {name: path for name, path in found.items() if path is not None}
        if len(present) == len(_FILES):
            return _load_folder(folder, present)
        if not folder.is_dir():
            tried.append(f"{folder} (no such folder)")
        else:
            missing = ", ".join(name for name in _FILES if name not in present)
            tried.append(f"{folder} (missing: {missing})")
    if offline if offline is not None else is_offline():
        tried.append("download (skipped: offline)")
    else:
        mirror_list = tuple(mirrors) if mirrors is not None else _torchvision_mirrors()
        present = {}
        for name in _FILES:
            path = _find_file(cache, name)
            present[name] = path if path is not None else _download(name, cache, mirror_list)
        return _load_folder(cache, present)
    raise DataNotFoundError(
        "FashionMNIST was not found. Places tried, in order:\n  "
        + "\n  ".join(tried)
        + f"\n{_FIXES}"
    )


def _torchvision_mirrors() -> tuple[str, ...]:
    try:
        from torchvision.datasets import FashionMNIST as _TV

        return tuple(_TV.mirrors) or _MIRRORS
    except Exception:  # torchvision missing or changed: use our own list
        return _MIRRORS
