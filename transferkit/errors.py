"""Typed errors raised by transferkit.

Every error derives from :class:`TransferKitError`. Errors a user would
naturally catch as a built-in also derive from it (``ValueError`` for bad
values, ``LookupError`` for names that cannot be found), so
``except ValueError`` keeps working in code that does not know transferkit.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "TransferKitError",
    "ConfigError",
    "HeadNotFoundError",
    "InputAdaptationError",
    "UnknownPolicyError",
    "StageIndexError",
    "UnknownBackboneError",
    "DuplicateBackboneError",
    "WeightsError",
    "WeightsNotFoundError",
    "WeightsMismatchError",
    "DataError",
    "DataNotFoundError",
    "CorruptDataError",
    "CheckpointError",
    "TrainingError",
    "NonFiniteLossError",
    "CallbackError",
    "closest",
]


class TransferKitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class ConfigError(TransferKitError, ValueError):
    """An argument has an invalid value (wrong type, out of range)."""


class HeadNotFoundError(TransferKitError, LookupError):
    """No output layer could be found, or ``head=`` names no module."""


class InputAdaptationError(TransferKitError, ValueError):
    """The layers that read the input image cannot be adapted to ``in_chans``."""


class UnknownPolicyError(TransferKitError, ValueError):
    """A freezing policy or recipe name is not known."""


class UnknownRecipeError(UnknownPolicyError, ConfigError):
    """A recipe name is not known (both an ``UnknownPolicyError`` and a ``ConfigError``)."""


class StageIndexError(TransferKitError, IndexError):
    """A stage index is outside the model's stages."""


class UnknownBackboneError(TransferKitError, LookupError):
    """A backbone name is not in the registry."""


class DuplicateBackboneError(TransferKitError, ValueError):
    """A backbone name is registered twice."""


class WeightsError(TransferKitError):
    """Pretrained weights cannot be used (corrupt, unsafe, unreadable)."""


class WeightsNotFoundError(WeightsError, LookupError):
    """No source of pretrained weights could provide the requested weights."""


class WeightsMismatchError(WeightsError, ValueError):
    """A weights file does not fit the architecture (names or shapes)."""


class DataError(TransferKitError, ValueError):
    """A data set is empty, malformed or inconsistent with the model."""


class DataNotFoundError(DataError, LookupError):
    """A data set could not be found in any of the places searched."""


class CorruptDataError(DataError):
    """A data file is truncated or its content does not match its hash."""


class CheckpointError(TransferKitError):
    """A checkpoint cannot be written or read."""


class TrainingError(TransferKitError, RuntimeError):
    """Training cannot go on."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite."""


class CallbackError(TrainingError):
    """A callback raised; the message names the callback and the event."""


def closest(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ``" Did you mean ...?"`` hint for ``value``, or ``""``.

    Args:
        value: The name the user gave.
        choices: The valid names.
        n: How many suggestions at most.
    """
    matches = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
