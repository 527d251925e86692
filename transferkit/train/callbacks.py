"""Callbacks: small hooks the Trainer calls at named events.

There are five events, in this order::

    on_fit_start
        on_epoch_start       (once per epoch)
            on_batch_end     (once per optimizer step)
        on_epoch_end         (after validation; ``trainer.history[-1]`` is this epoch)
    on_fit_end               (also after an interruption or an early stop)

A callback subclasses :class:`Callback` and overrides the events it needs. Callbacks run
in ascending ``order`` (ties keep the order given). Setting ``trainer.should_stop = True``
stops training at the end of the current epoch. An exception raised inside a callback is
re-raised as :class:`~transferkit.errors.CallbackError` naming the callback and the event,
with the original exception chained.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from transferkit.errors import CallbackError, ConfigError

if TYPE_CHECKING:
    from transferkit.train.trainer import Trainer

__all__ = ["EVENTS", "Callback", "CallbackList", "Event"]

Event = Literal["on_fit_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_fit_end"]
EVENTS: tuple[Event, ...] = (
    "on_fit_start",
    "on_epoch_start",
    "on_batch_end",
    "on_epoch_end",
    "on_fit_end",
)


class Callback:
    """Base class of callbacks: every event is a no-op until overridden.

    Attributes:
        order: Callbacks run in ascending ``order``; the default is 0.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, trainer):
        ...         print(trainer.history[-1]["train_loss"])
    """

    order: int = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        """Run once before the first epoch (after a resume, before the resumed epoch)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Run at the start of every epoch; ``trainer.epoch`` is the epoch (0-based)."""

    def on_batch_end(self, trainer: Trainer) -> None:
        """Run after every optimizer step; ``trainer.last_loss`` holds the batch loss."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """Run after training and validation of an epoch; see ``trainer.history[-1]``."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Run once when ``fit`` ends, whether it finished, stopped early or was interrupted."""


class CallbackList:
    """Hold callbacks sorted by ``order`` and dispatch events to them.

    Args:
        callbacks: The callbacks.

    Raises:
        ConfigError: An element is not a :class:`Callback` (or a class instead of an instance).
    """

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        items = list(callbacks)
        for cb in items:
            if not isinstance(cb, Callback):
                hint = " Pass an instance, e.g. MyCallback()." if isinstance(cb, type) else ""
                raise ConfigError(
                    f"callbacks must be Callback instances, got {cb!r} "
                    f"({type(cb).__name__}).{hint} Subclass transferkit.callbacks.Callback."
                )
        # sorted() is stable: equal orders keep the order the user gave.
        self.callbacks: list[Callback] = sorted(items, key=lambda cb: cb.order)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def fire(self, event: Event, trainer: Trainer) -> None:
        """Call ``event`` on every callback, in order.

        Args:
            event: One of :data:`EVENTS`.
            trainer: The trainer passed to the callbacks.

        Raises:
            CallbackError: A callback raised; the original exception is chained.
        """
        for cb in self.callbacks:
            try:
                getattr(cb, event)(trainer)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                raise CallbackError(
                    f"Callback {type(cb).__name__} failed in {event}: "
                    f"{type(exc).__name__}: {exc}. Fix the callback or remove it from "
                    "Trainer(callbacks=...)."
                ) from exc
