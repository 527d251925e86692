"""transferkit: transfer learning by fine-tuning pretrained image backbones, in plain PyTorch.

The four steps of fine-tuning, each one call::

    model = transferkit.create("resnet18", num_classes=10, in_chans=1)   # 1 + 2 + 3
    groups = transferkit.param_groups(model, head_lr=1e-2, body_lr=1e-3)
    transferkit.Trainer(model, optimizer=torch.optim.AdamW(groups)).fit(train, val)  # 4
"""

from transferkit._version import __version__
from transferkit.adaptation import AdaptInfo, Stage, adapt, get_info
from transferkit.callbacks import Callback
from transferkit.checkpoint import load_checkpoint, save_checkpoint
from transferkit.errors import (
    CallbackError,
    CheckpointError,
    ConfigError,
    CorruptDataError,
    DataError,
    DataNotFoundError,
    DuplicateBackboneError,
    HeadNotFoundError,
    InputAdaptationError,
    NonFiniteLossError,
    StageIndexError,
    TrainingError,
    TransferKitError,
    UnknownBackboneError,
    UnknownPolicyError,
    UnknownRecipeError,
    WeightsError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from transferkit.features import FeatureLoader, extract_features
from transferkit.freezing import (
    GradualUnfreezing,
    freeze,
    freeze_state,
    freezing_summary,
    load_freeze_state,
    unfreeze,
)
from transferkit.input_layer import adapt_channel_stats, adapt_input_weight
from transferkit.l2sp import L2SP, L2SPLoss
from transferkit.model_file import ModelMeta, load_model, read_meta, save_model
from transferkit.param_groups import param_groups, param_groups_table
from transferkit.recipes import RECIPES, FineTuneResult, Recipe, fine_tune, list_recipes
from transferkit.registry import (
    BackboneInfo,
    BackboneSpec,
    backbone_info,
    create,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from transferkit.trainer import Trainer, warmup_cosine

__all__ = [
    "__version__",
    "AdaptInfo",
    "BackboneInfo",
    "BackboneSpec",
    "Callback",
    "CallbackError",
    "CheckpointError",
    "ConfigError",
    "CorruptDataError",
    "DataError",
    "DataNotFoundError",
    "DuplicateBackboneError",
    "FeatureLoader",
    "FineTuneResult",
    "GradualUnfreezing",
    "HeadNotFoundError",
    "InputAdaptationError",
    "L2SP",
    "L2SPLoss",
    "ModelMeta",
    "NonFiniteLossError",
    "RECIPES",
    "Recipe",
    "Stage",
    "StageIndexError",
    "Trainer",
    "TrainingError",
    "TransferKitError",
    "UnknownBackboneError",
    "UnknownPolicyError",
    "UnknownRecipeError",
    "WeightsError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "adapt",
    "adapt_channel_stats",
    "adapt_input_weight",
    "backbone_info",
    "create",
    "extract_features",
    "fine_tune",
    "freeze",
    "freeze_state",
    "freezing_summary",
    "get_info",
    "list_backbones",
    "list_recipes",
    "load_checkpoint",
    "load_freeze_state",
    "load_model",
    "param_groups",
    "param_groups_table",
    "read_meta",
    "register_backbone",
    "save_checkpoint",
    "save_model",
    "unfreeze",
    "unregister_backbone",
    "warmup_cosine",
]
