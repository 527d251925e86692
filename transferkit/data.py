"""Data for fine-tuning, in one namespace: ``from transferkit.data import ...``.

The code lives in one module per idea:

- :mod:`transferkit.fashion_mnist`: find, verify and load FashionMNIST;
- :mod:`transferkit.pipeline`: the in-memory batch pipeline (:class:`TensorLoader`);
- :mod:`transferkit.augment`: its batch augmentations (:class:`Augment`);
- :mod:`transferkit.image_folder`: a user's ``ImageFolder``-style folder, loaded into memory.
"""

from __future__ import annotations

from transferkit.augment import Augment
from transferkit.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FashionMNIST,
    fashion_mnist,
    fashion_mnist_search_paths,
    read_idx,
)
from transferkit.image_folder import IMG_EXTENSIONS, ImageFolderData, load_image_folder
from transferkit.pipeline import TensorLoader

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMG_EXTENSIONS",
    "Augment",
    "FashionMNIST",
    "ImageFolderData",
    "TensorLoader",
    "fashion_mnist",
    "fashion_mnist_search_paths",
    "load_image_folder",
    "read_idx",
]
