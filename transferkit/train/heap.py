"""Keep the memory a CPU training step frees for the next step (glibc's ``malloc``).

glibc serves an allocation above its mmap threshold (128 KiB, raised as large blocks are
freed, at most 32 MiB) with a fresh ``mmap`` region and unmaps it when it is freed, and
hands the free top of its heap back to the OS past a trim threshold. A training step
allocates and frees the same activation buffers every step, so every step faults all
their pages in again and the kernel zeroes each one: training EfficientNet-Lite0 at
224 px, batch 64, on two threads spent 4.8 of its 9.7 CPU-seconds a step in the kernel (2
million page faults a step) and took 2.4x as long a step as with the settings below; 1.5x
at 64 px, batch 256 (``benchmarks/heap.py``, docs/benchmarks.md).

:func:`keep_heap` sets them while the Trainer runs on the CPU: no ``mmap`` for
allocations (``M_MMAP_MAX`` 0: the heap serves them all) and the largest trim threshold
``mallopt`` takes (``M_TRIM_THRESHOLD``, about 2 GiB), so freed memory stays in the process
for the next step. The cost is a higher peak (the heap fragments: +18% at 224 px, +10%
at 64 px, +1% at 32 px) and memory that stays with the process until the block ends. On
leaving, the mmap limit goes back to glibc's default and ``malloc_trim(0)`` hands the free
memory back; the thresholds become fixed at the values glibc's own adjustment ends at
after large blocks were freed (mmap above 32 MiB, trim past 64 MiB): ``mallopt`` turns
that adjustment off, and no call reads the previous values back. Nested uses (an evaluation
inside ``fit``) keep the settings until the outermost one leaves. Where the C library is
not glibc (macOS, Windows, musl), nothing changes: :func:`heap_supported` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import threading
from collections.abc import Iterator

__all__ = ["heap_supported", "keep_heap"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# While kept: every allocation from the heap; trim only past the largest int mallopt takes.
KEEP_TRIM_THRESHOLD = 2**31 - 1
# After: glibc's default mmap count, and the thresholds its dynamic rule reaches
# (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, trim at twice that).
_DEFAULT_MMAP_MAX = 65536
_AFTER_MMAP_THRESHOLD = 32 * 1024 * 1024
_AFTER_TRIM_THRESHOLD = 2 * _AFTER_MMAP_THRESHOLD

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """Return the process's C library when it is glibc (it has ``mallopt``), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def heap_supported() -> bool:
    """Return whether :func:`keep_heap` can change this process's allocator (glibc).

    Example:
        >>> isinstance(heap_supported(), bool)
        True
    """
    return _glibc() is not None


@contextlib.contextmanager
def keep_heap(enabled: bool = True) -> Iterator[bool]:
    """Keep freed memory in the process inside the block; yield whether that applies.

    Args:
        enabled: ``False`` changes nothing (yields ``False``).

    Yields:
        ``True`` when glibc's settings are (or already were, in an outer block) changed.

    Example:
        >>> import torch
        >>> with keep_heap() as kept:
        ...     total = torch.ones(1 << 20).sum().item()
        >>> total, kept == heap_supported()
        (1048576.0, True)
    """
    global _depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)
                libc.malloc_trim(0)
