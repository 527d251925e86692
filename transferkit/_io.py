"""Atomic file writes and writable-folder checks: nothing the user owns is left half-written.

A write goes to a temporary file in the destination's folder, is flushed and fsynced,
then ``os.replace`` puts it in place and the folder is fsynced: a process killed at any
moment leaves either the previous file or the new one, never a mix. New files get the
permissions the user's umask gives (as ``open()`` would), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_writable"]


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every OS (Windows), hence the guard.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``).

    An existing file keeps its permissions; a new one gets ``0o666 & ~umask``.

    Args:
        path: Destination file. Its folder must exist.
        data: The bytes to write.

    Returns:
        The destination path.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # Never leave temp files behind, even on KeyboardInterrupt.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(folder: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove it is writable with a probe file.

    Args:
        folder: The folder.
        what: How to name it in messages (``"--out"``, ``"out_dir"``...).

    Returns:
        The folder, as a ``Path``.

    Raises:
        OSError: It exists and is not a folder, or it cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"{what} {str(folder)!r} exists and is not a folder; pick another path."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".transferkit-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(
            f"{what} {str(folder)!r} is not writable ({exc.strerror or exc}); pick a folder "
            "you can write to."
        ) from exc
    return folder
