"""Turn Ctrl-C into a request to stop cleanly, for the duration of a ``with`` block.

The first SIGINT only calls ``request()`` (the Trainer then finishes the current step,
writes a checkpoint and returns); a second one, while ``requested()`` is true, raises
``KeyboardInterrupt`` at once. Outside the main thread signals cannot be handled, so the
block runs with the handler unchanged.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["sigint_requests_stop"]


@contextlib.contextmanager
def sigint_requests_stop(
    request: Callable[[], None], requested: Callable[[], bool]
) -> Iterator[None]:
    """Install a SIGINT handler that calls ``request()``; restore the previous one on exit.

    Args:
        request: Called on the first Ctrl-C.
        requested: Whether a stop was already requested (then Ctrl-C aborts at once).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if requested():  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        request()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
