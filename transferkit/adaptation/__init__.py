"""Steps 2 and 3 of fine-tuning, and how the adapted model trains: the ``adapt`` layer.

- :mod:`~transferkit.adaptation.core`: :func:`adapt`, :func:`get_info`, :class:`AdaptInfo`,
  :class:`ModelView` and :func:`unwrap`;
- :mod:`~transferkit.adaptation.heads`, :mod:`~transferkit.adaptation.tracing`,
  :mod:`~transferkit.adaptation.input_layer`, :mod:`~transferkit.adaptation.stages`: how the head,
  the input layers and the stages are found and changed;
- :mod:`~transferkit.adaptation.freezing`: freezing policies, frozen BatchNorm, gradual
  unfreezing;
- :mod:`~transferkit.adaptation.groups`: discriminative and layer-wise learning rates, and
  which parameters get no weight decay.

This layer knows models, not training: it imports only the base modules (errors,
validation, environment).
"""

from __future__ import annotations

from transferkit.adaptation.core import (
    AdaptInfo,
    ModelView,
    Stage,
    adapt,
    get_info,
    recorded_info,
    unwrap,
)
from transferkit.adaptation.freezing import (
    POLICIES,
    GradualUnfreezing,
    check_freeze_state,
    freeze,
    freeze_state,
    freezing_summary,
    load_freeze_state,
    unfreeze,
    unfreeze_steps,
)
from transferkit.adaptation.groups import no_weight_decay_names, param_groups, param_groups_table
from transferkit.adaptation.heads import PooledClassifier
from transferkit.adaptation.input_layer import adapt_channel_stats, adapt_input_weight

__all__ = [
    "POLICIES",
    "AdaptInfo",
    "GradualUnfreezing",
    "ModelView",
    "PooledClassifier",
    "Stage",
    "adapt",
    "adapt_channel_stats",
    "adapt_input_weight",
    "check_freeze_state",
    "freeze",
    "freeze_state",
    "freezing_summary",
    "get_info",
    "load_freeze_state",
    "no_weight_decay_names",
    "param_groups",
    "param_groups_table",
    "recorded_info",
    "unfreeze",
    "unfreeze_steps",
    "unwrap",
]
