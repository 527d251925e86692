"""Tests of transferkit._integrity: zip CRC-32s and digest records catch damaged bytes."""

from __future__ import annotations

import torch

from transferkit._integrity import (
    ZipDamage,
    damaged_entries,
    describe_damaged,
    digest_record,
    zip_damage,
)


def test_intact_and_non_zip_files_report_nothing(tmp_path):
    torch.save({"w": torch.arange(10.0)}, tmp_path / "ok.pt")
    torch.save({"w": torch.arange(10.0)}, tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)
    (tmp_path / "text").write_text("not a zip")
    assert [zip_damage(tmp_path / n) for n in ("ok.pt", "legacy.pt", "text")] == [None] * 3


def test_a_damaged_storage_names_every_tensor_that_shares_it(tmp_path, damage):
    base = torch.arange(32.0)
    path = tmp_path / "c.pt"
    torch.save({"a": base, "b": {"view": base[4:]}, "other": torch.ones(3)}, path)
    entry = damage.zip_tensor(path, base)
    assert zip_damage(path) == ZipDamage(entry, "fails its CRC-32 check", ("a", "b/view"))
    assert zip_damage(path).describe() == (
        f"zip entry {entry!r} (the data of tensor 'a', 'b/view') fails its CRC-32 check"
    )


def test_a_damaged_zip_directory_is_reported(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"w": torch.arange(10.0)}, path)
    raw = bytearray(path.read_bytes())
    start = raw.rfind(b"PK\x01\x02")  # the last central directory record
    raw[start:start + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    damage = zip_damage(path)
    assert damage is not None and damage.entry == ""
    assert damage.describe().startswith("its zip directory cannot be read (")


def test_digest_record_catches_bytes_dtype_shape_names_and_metadata():
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    record = digest_record({"w": w}, {"meta": "{}"})
    assert damaged_entries(record, {"w": w.clone()}, {"meta": "{}"}) == []
    changed = w.clone()
    changed[0, 0] = 7.0
    same_bytes_as_int = w.view(torch.int32)  # a relabelled dtype keeps every byte
    assert damaged_entries(record, {"w": changed}, {"meta": "{}"}) == ["tensor 'w'"]
    assert damaged_entries(record, {"w": same_bytes_as_int}, {"meta": "{}"}) == ["tensor 'w'"]
    assert damaged_entries(record, {"w": w.reshape(3, 2)}, {"meta": "{}"}) == ["tensor 'w'"]
    assert damaged_entries(record, {"v": w}, {"meta": "{}"}) == ["tensor 'v'", "tensor 'w'"]
    assert damaged_entries(record, {"w": w}, {"meta": "[]"}) == ["metadata 'meta'"]
    assert damaged_entries("{not json", {"w": w}, {}) == ["the digest record"]


def test_describe_damaged_lists_three_then_counts():
    assert describe_damaged(["tensor 'a'"]) == (
        "tensor 'a' does not match the sha256 recorded when the file was written")
    assert describe_damaged([f"tensor '{c}'" for c in "abcde"]) == (
        "tensor 'a', tensor 'b', tensor 'c' and 2 more do not match the sha256 recorded when "
        "the file was written")
