"""Verify a file's content before loading it: damaged bytes fail, they never load silently.

Two kinds of files, two checks:

- ``torch.save`` files are zip archives and every entry carries a CRC-32 of its bytes;
  ``torch.load`` does not look at it, :func:`zip_damage` does (every entry, before
  anything is loaded).
- safetensors files carry no checksum of their own. The files transferkit writes carry a
  digest record (:func:`digest_record`, under the metadata key :data:`DIGEST_KEY`): the
  sha256 of every tensor (dtype, shape and bytes) and of every other metadata value, which
  :func:`damaged_entries` checks after reading. A safetensors file without a record (any
  third-party file) cannot be verified this way.

These checks catch accidental damage (disk, copy, transfer); they do not authenticate a
file: whoever can rewrite it can rewrite its checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DIGEST_KEY",
    "ZipDamage",
    "damaged_entries",
    "describe_damaged",
    "digest_record",
    "zip_damage",
]

#: The safetensors metadata key holding the digest record of a file transferkit wrote.
DIGEST_KEY = "transferkit.sha256"
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


@dataclass(frozen=True)
class ZipDamage:
    """The first damaged entry of a zip file.

    Attributes:
        entry: The zip member (``last/data/3``), or ``""`` when the zip directory itself
            cannot be read.
        problem: What is wrong, e.g. ``"fails its CRC-32 check"``.
        tensors: The tensors whose data the entry holds (``model/fc.weight``), when they
            could be found.
    """

    entry: str
    problem: str
    tensors: tuple[str, ...] = ()

    def describe(self) -> str:
        """Return ``zip entry 'x' (the data of tensor 'y') fails its CRC-32 check``."""
        if not self.entry:
            return f"its zip directory {self.problem}"
        what = f"zip entry {self.entry!r}"
        if self.tensors:
            names = ", ".join(repr(t) for t in self.tensors[:3])
            extra = f" and {len(self.tensors) - 3} more" if len(self.tensors) > 3 else ""
            what += f" (the data of tensor {names}{extra})"
        elif self.entry.endswith("data.pkl"):
            what += " (the pickled structure: names, shapes and plain values)"
        return f"{what} {self.problem}"


def zip_damage(path: str | os.PathLike[str]) -> ZipDamage | None:
    """Check the CRC-32 of every entry of a zip file; return the first damage, or ``None``.

    A file that is not a zip archive (a legacy ``torch.save`` file, a truncated one) is not
    checked here: it returns ``None`` and its reader reports what it finds.

    Args:
        path: The file.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return ZipDamage("", f"cannot be read ({exc})")
    with archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as f:
                    while f.read(1 << 20):
                        pass
            except zipfile.BadZipFile as exc:
                problem = "fails its CRC-32 check" if "CRC" in str(exc) else f"is damaged ({exc})"
                return ZipDamage(info.filename, problem, _tensors_of(path, info))
            except (OSError, ValueError, EOFError) as exc:  # zlib errors, short reads
                return ZipDamage(info.filename, f"cannot be read ({exc})")
    return None


def _raw_bytes(path: Path, info: zipfile.ZipInfo) -> bytes | None:
    """Read a stored (uncompressed) entry's bytes without checking them."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with path.open("rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER)
        if len(header) < _LOCAL_HEADER or header[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + _LOCAL_HEADER + name_len + extra_len)
        return f.read(info.compress_size)


def _walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix or "<tensor>", obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _walk(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _walk(value, f"{prefix}/{i}" if prefix else str(i))


def _tensors_of(path: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """Name the tensors whose storage is a damaged ``data/<key>`` entry (best effort).

    ``torch.load`` does not check CRCs, so the damaged file still loads (safely, with
    ``weights_only=True``); the tensors whose storage holds exactly the entry's bytes are
    the damaged ones.
    """
    if "/data/" not in info.filename:
        return ()
    raw = _raw_bytes(path, info)
    if raw is None:
        return ()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  # naming is best effort; the damage is reported anyway
        return ()
    wanted = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else None
    names = []
    for name, tensor in _walk(obj):
        storage = tensor.untyped_storage()
        if wanted is None or storage.nbytes() != len(raw):
            continue
        # A byte view of the storage (``bytes(storage)`` would copy it byte by byte).
        view = torch.empty(0, dtype=torch.uint8).set_(storage)
        if torch.equal(view, wanted):
            names.append(name)
    return tuple(names)


def _tensor_digest(tensor: torch.Tensor) -> str:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digest_record(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Return the digest record (JSON) of a safetensors file's tensors and metadata values.

    Args:
        tensors: The tensors the file holds, by name.
        metadata: The file's other metadata values (the record itself excluded).
    """
    return json.dumps(
        {
            "tensors": {name: _tensor_digest(t) for name, t in tensors.items()},
            "metadata": {key: _text_digest(v) for key, v in metadata.items()},
        },
        sort_keys=True,
    )


def damaged_entries(
    record: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> list[str]:
    """Return what no longer matches a digest record: ``tensor 'x'``, ``metadata 'key'``.

    An entry missing from the file, or present in the file but not in the record, counts as
    damaged; an unreadable record returns ``["the digest record"]``.

    Args:
        record: The JSON written by :func:`digest_record`.
        tensors: The tensors read from the file.
        metadata: The file's other metadata values (the record itself excluded).
    """
    try:
        raw = json.loads(record)
        want_t, want_m = dict(raw["tensors"]), dict(raw["metadata"])
    except (ValueError, KeyError, TypeError):
        return ["the digest record"]
    bad = [f"tensor {n!r}" for n in sorted(set(want_t) | set(tensors))
           if n not in tensors or want_t.get(n) != _tensor_digest(tensors[n])]
    bad += [f"metadata {k!r}" for k in sorted(set(want_m) | set(metadata))
            if k not in metadata or want_m.get(k) != _text_digest(metadata[k])]
    return bad


def describe_damaged(entries: list[str]) -> str:
    """Return ``tensor 'a', tensor 'b' and 2 more do not match ...`` for :func:`damaged_entries`."""
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    verb = "does" if len(entries) == 1 else "do"
    return f"{shown} {verb} not match the sha256 recorded when the file was written"
