"""Data for fine-tuning, in one namespace: ``from transferkit.data import ...``.

The code lives in one module per idea:

- :mod:`transferkit.data.fashion`: find, verify and load FashionMNIST;
- :mod:`transferkit.data.pipeline`: the in-memory batch pipeline (:class:`TensorLoader`);
- :mod:`transferkit.data.augment`: its batch augmentations (:class:`Augment`);
- :mod:`transferkit.data.image_folder`: a user's ``ImageFolder``-style folder, loaded into memory;
- :mod:`transferkit.data.image_files`: which files under a folder are images.

This layer knows tensors and files, not models: it imports only the base modules.
"""

from __future__ import annotations

from transferkit.data.augment import Augment
from transferkit.data.fashion import (
    FASHION_MNIST_CLASSES,
    FashionMNIST,
    fashion_mnist,
    fashion_mnist_search_paths,
    read_idx,
)
from transferkit.data.image_files import list_images
from transferkit.data.image_folder import (
    IMG_EXTENSIONS,
    ImageFolderData,
    decode_image,
    load_image_folder,
)
from transferkit.data.pipeline import TensorLoader

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMG_EXTENSIONS",
    "Augment",
    "FashionMNIST",
    "ImageFolderData",
    "TensorLoader",
    "decode_image",
    "fashion_mnist",
    "fashion_mnist_search_paths",
    "list_images",
    "load_image_folder",
    "read_idx",
]
