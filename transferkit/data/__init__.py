"""Data for fine-tuning, in one namespace: ``from transferkit.data import ...``.

The code lives in one module per idea:

- :mod:`transferkit.data.fashion`: find, verify and load FashionMNIST;
- :mod:`transferkit.data.pipeline`: the in-memory batch pipeline (:class:`TensorLoader`);
- :mod:`transferkit.data.augment`: its batch augmentations (:class:`Augment`);
- :mod:`transferkit.data.balanced`: class-balanced sampling (:class:`BalancedSampler`);
- :mod:`transferkit.data.folder_layout`: which folder of a user's image folder holds which split;
- :mod:`transferkit.data.image_folder`: a user's image folder, loaded into memory;
- :mod:`transferkit.data.image_labels`: multi-label images listed in a labels file;
- :mod:`transferkit.data.image_files`: which files under a folder are images;
- :mod:`transferkit.data.image_stats`: their size and colour, from their headers.

This layer knows tensors and files, not models: it imports only the base modules.
"""

from __future__ import annotations

from transferkit.data.augment import AUGMENT_PRESETS, Augment, augment_preset
from transferkit.data.balanced import BalancedSampler, balanced_indices, class_balanced_weights
from transferkit.data.fashion import (
    FASHION_MNIST_CLASSES,
    FashionMNIST,
    fashion_mnist,
    fashion_mnist_search_paths,
    read_idx,
)
from transferkit.data.folder_layout import LAYOUTS, SPLIT_NAMES, SplitFolders, find_splits
from transferkit.data.image_files import IMG_EXTENSIONS, list_images
from transferkit.data.image_folder import (
    DEFAULT_VAL_FRACTION,
    ImageFolderData,
    SplitSource,
    decode_image,
    load_image_folder,
    stratified_val_mask,
)
from transferkit.data.image_labels import LABEL_FILE_TYPES, load_image_labels, read_labels_file
from transferkit.data.image_stats import GREY_MODES, ImageStats, image_stats
from transferkit.data.pipeline import TensorLoader

__all__ = [
    "AUGMENT_PRESETS",
    "DEFAULT_VAL_FRACTION",
    "FASHION_MNIST_CLASSES",
    "IMG_EXTENSIONS",
    "LABEL_FILE_TYPES",
    "LAYOUTS",
    "SPLIT_NAMES",
    "Augment",
    "BalancedSampler",
    "FashionMNIST",
    "GREY_MODES",
    "ImageFolderData",
    "ImageStats",
    "SplitFolders",
    "SplitSource",
    "TensorLoader",
    "augment_preset",
    "balanced_indices",
    "class_balanced_weights",
    "decode_image",
    "fashion_mnist",
    "fashion_mnist_search_paths",
    "find_splits",
    "image_stats",
    "list_images",
    "load_image_folder",
    "load_image_labels",
    "read_idx",
    "read_labels_file",
    "stratified_val_mask",
]
