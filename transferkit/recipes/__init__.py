"""Fine-tuning recipes: one call that composes the lower layers into a good training run.

- :mod:`~transferkit.recipes.table`: the recipes, their defaults and references;
- :mod:`~transferkit.recipes.finetune`: :func:`fine_tune`;
- :mod:`~transferkit.recipes.budget`: its defaults chosen from the data (batch size, length,
  image size), each reported as a :class:`Choice`;
- :mod:`~transferkit.recipes.inputs`: its data, loaders or ``(images, labels)`` tensors;
- :mod:`~transferkit.recipes.cache`: cache what a frozen part of the model computes (the
  head's input for a linear probe, a frozen prefix of stages), once;
- :mod:`~transferkit.recipes.feature_loader`: serve cached tensors as batches;
- :mod:`~transferkit.recipes.views`: train a model through another forward pass;
- :mod:`~transferkit.recipes.l2sp`: the L2-SP regulariser.

This layer sits on :mod:`transferkit.train`, :mod:`transferkit.adaptation` and
:mod:`transferkit.data`.
"""

from __future__ import annotations

from transferkit.recipes.budget import (
    Choice,
    batch_size_choice,
    default_batch_size,
    default_epochs,
    default_image_size,
    default_label_smoothing,
    default_recipe,
    default_recipe_lr,
    image_size_choice,
)
from transferkit.recipes.cache import (
    cache_inputs,
    extract_features,
    extraction_batch_size,
    plain_loader,
    split_at_head,
    split_at_stage,
)
from transferkit.recipes.feature_loader import FeatureLoader, loader_like
from transferkit.recipes.finetune import FineTuneResult, fine_tune
from transferkit.recipes.inputs import DEFAULT_AUGMENT
from transferkit.recipes.l2sp import L2SP, L2SPLoss
from transferkit.recipes.table import (
    DEFAULT_RECIPE,
    L2SP_ALPHA,
    LAYER_DECAY,
    PROBE_LR,
    RECIPES,
    UNFREEZE_UNTIL,
    Recipe,
    check_recipe,
    list_recipes,
)
from transferkit.recipes.views import EvalMode, HeadOnFeatures, StageTail

__all__ = [
    "DEFAULT_AUGMENT",
    "DEFAULT_RECIPE",
    "L2SP",
    "L2SP_ALPHA",
    "LAYER_DECAY",
    "PROBE_LR",
    "RECIPES",
    "UNFREEZE_UNTIL",
    "Choice",
    "EvalMode",
    "FeatureLoader",
    "FineTuneResult",
    "HeadOnFeatures",
    "L2SPLoss",
    "Recipe",
    "StageTail",
    "cache_inputs",
    "check_recipe",
    "batch_size_choice",
    "default_batch_size",
    "default_epochs",
    "default_image_size",
    "default_label_smoothing",
    "default_recipe",
    "default_recipe_lr",
    "image_size_choice",
    "extract_features",
    "extraction_batch_size",
    "fine_tune",
    "list_recipes",
    "loader_like",
    "plain_loader",
    "split_at_head",
    "split_at_stage",
]
