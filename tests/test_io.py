"""The base module transferkit._io: atomic writes, file permissions, writable folders."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from transferkit._io import atomic_write_bytes, atomic_write_text, check_writable


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_text_replaces_the_whole_file(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "h.json", "[1]")
    atomic_write_text(tmp_path / "h.json", "[1, 2]")
    assert (tmp_path / "h.json").read_text() == "[1, 2]"
    assert os.listdir(tmp_path) == ["h.json"]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "m.bin", b"x")
        with open(tmp_path / "plain.bin", "wb") as f:  # what open() gives, for reference
            f.write(b"x")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "m.bin") == 0o666 & ~umask == _mode(tmp_path / "plain.bin")


def test_an_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.txt"
    atomic_write_text(path, "old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["c.txt"]


def test_check_writable(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir())
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="--out .* exists and is not a folder"):
        check_writable(tmp_path / "file", what="--out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(OSError, match="is not writable"):
            check_writable(locked)
    finally:
        locked.chmod(0o700)
