"""Argument checks shared by every public entry point: one rule and one message each.

Each function returns the value in its canonical Python type (``int``, ``float``,
``tuple``) or raises :class:`~transferkit.errors.ConfigError` with a message that quotes
the bad value and shows a valid one. NumPy and other ``numbers.Integral``/``numbers.Real``
values are accepted wherever a Python ``int``/``float`` is; ``bool`` never counts as a
number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import TypeVar

from transferkit.errors import ConfigError, closest

__all__ = [
    "channel_stats",
    "choice",
    "flag",
    "image_size",
    "integer",
    "optional_positive_int",
    "positive_int",
    "probability",
    "rate",
]

T = TypeVar("T")


def integer(
    name: str,
    value: object,
    *,
    minimum: int,
    maximum: int | None = None,
    example: int | None = None,
) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``.

    Args:
        name: The argument's name, for the message.
        value: The value given.
        minimum: The smallest valid value.
        maximum: The largest valid value, if any.
        example: A valid value shown in the message (default: ``max(minimum, 1)``, or
            ``minimum`` with a ``maximum``).

    Raises:
        ConfigError: ``value`` is not an integer (``bool`` included) or is out of range.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        if maximum is not None:
            kind = f"an integer in [{minimum}, {maximum}]"
            shown = minimum if example is None else example
        else:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            shown = max(minimum, 1) if example is None else example
        raise ConfigError(f"{name} must be {kind}, got {value!r}; e.g. {name}={shown}.")
    return int(value)


def positive_int(name: str, value: object, *, example: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1 (see :func:`integer`)."""
    return integer(name, value, minimum=1, example=example)


def optional_positive_int(name: str, value: object, *, example: int | None = None) -> int | None:
    """Return ``None`` for ``None``, else :func:`positive_int`."""
    return None if value is None else positive_int(name, value, example=example)


def rate(
    name: str,
    value: object,
    *,
    allow_zero: bool = True,
    upper: float | None = None,
    example: float = 0.01,
) -> float:
    """Return ``value`` as a ``float`` if it is a finite real in ``[0, upper]``.

    Used for learning rates, weight decays, regularisation strengths and ratios.

    Args:
        name: The argument's name, for the message.
        value: The value given.
        allow_zero: Whether 0 is valid (else the range is ``(0, upper]``).
        upper: The largest valid value, if any.
        example: A valid value shown in the message.

    Raises:
        ConfigError: Not a real number, not finite, negative, zero when not allowed, or
            above ``upper``.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if (
        not ok
        or not math.isfinite(value)  # type: ignore[arg-type]
        or value < 0  # type: ignore[operator]
        or (value == 0 and not allow_zero)
        or (upper is not None and value > upper)  # type: ignore[operator]
    ):
        low = ">= 0" if allow_zero else "> 0"
        high = f" and <= {upper:g}" if upper is not None else ""
        raise ConfigError(
            f"{name} must be a finite number {low}{high}, got {value!r}; e.g. {name}={example:g}."
        )
    return float(value)  # type: ignore[arg-type]


def probability(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` if it lies in ``[0, 1]``."""
    return rate(name, value, upper=1.0, example=0.5)


def image_size(value: object, *, name: str = "image_size") -> tuple[int, int]:
    """Return ``(height, width)`` from a positive int or a pair of positive ints.

    Raises:
        ConfigError: Anything else (the message shows a valid value).
    """
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        size = tuple(pair)  # type: ignore[arg-type]
    except TypeError:
        size = ()
    if len(size) != 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ConfigError(
            f"{name}={value!r} must be a positive int or (height, width), e.g. {name}=224."
        )
    return int(size[0]), int(size[1])


def choice(name: str, value: T, choices: Iterable[T]) -> T:
    """Return ``value`` if it is one of ``choices``, else name the closest valid one.

    Raises:
        ConfigError: ``value`` is not one of ``choices``.
    """
    options = list(choices)
    if value in options:
        return value
    shown = ", ".join(repr(c) for c in options)
    hint = closest(str(value), [str(c) for c in options])
    raise ConfigError(f"{name}={value!r} is not valid; use one of {shown}.{hint}")


def flag(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``.

    Raises:
        ConfigError: Anything else (``0``/``1`` included: say ``True`` or ``False``).
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")
    return value


def channel_stats(name: str, value: Sequence[float] | None) -> tuple[float, ...] | None:
    """Return per-channel normalisation values (mean or std) as floats, or ``None``.

    Raises:
        ConfigError: Not a non-empty sequence of finite numbers (``std`` must be > 0).
    """
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of floats, got {value!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{name} must be non-empty and finite, got {value!r}")
    if name == "std" and any(v <= 0 for v in out):
        raise ConfigError(f"std must be positive, got {value!r}")
    return out
