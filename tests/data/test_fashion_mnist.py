"""Tests of transferkit.fashion_mnist: search order, content check, corruption, download."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

import transferkit.data.fashion as fm
from transferkit.errors import CorruptDataError, DataError, DataNotFoundError

NAMES = tuple(fm.SHA256)
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(tensor: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, tensor.dim()])
    header += b"".join(int(d).to_bytes(4, "big") for d in tensor.shape)
    return header + tensor.to(torch.uint8).numpy().tobytes()


def _tiny_content() -> dict[str, bytes]:
    g = torch.Generator().manual_seed(0)
    return {
        "train-images-idx3-ubyte": _idx_bytes(torch.randint(0, 256, (6, 4, 5), generator=g)),
        "train-labels-idx1-ubyte": _idx_bytes(torch.tensor([0, 1, 2, 9, 4, 5])),
        "t10k-images-idx3-ubyte": _idx_bytes(torch.randint(0, 256, (3, 4, 5), generator=g)),
        "t10k-labels-idx1-ubyte": _idx_bytes(torch.tensor([7, 8, 9])),
    }


CONTENT = _tiny_content()


def _write(folder: Path, *, gz: bool = True, names: tuple[str, ...] = NAMES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(CONTENT[name]))
        else:
            (folder / name).write_bytes(CONTENT[name])
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolate every place searched, record the tiny files' hashes, forbid the network."""
    for var in ("TRANSFERKIT_DATA", "TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "_SYSTEM_DIR", tmp_path / "system")
    # The tiny files' hashes replace the recorded ones; production code still checks them.
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in CONTENT.items()}
    monkeypatch.setattr(fm, "SHA256", hashes)
    fetched: list[str] = []

    def no_network(url: str, dest: Path) -> None:
        fetched.append(url)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(fm, "_fetch", no_network)
    return {"tmp": tmp_path, "cache": tmp_path / "cache" / "fashion-mnist", "fetched": fetched}


def _fixture_fetcher(source: Path, fetched: list[str], *, payload: bytes | None = None):
    def fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        if payload is not None:
            dest.write_bytes(payload)
        else:
            shutil.copyfile(source / url.rsplit("/", 1)[-1], dest)

    return fetch


def _check_tiny(data: fm.FashionMNIST) -> None:
    assert data.train_images.shape == (6, 4, 5) and data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist() == [0, 1, 2, 9, 4, 5]
    assert data.train_labels.dtype == torch.int64
    assert data.test_images.shape == (3, 4, 5)
    assert data.test_labels.tolist() == [7, 8, 9]
    assert data.classes == fm.FASHION_MNIST_CLASSES and len(data.classes) == 10
    raw = bytearray(CONTENT["t10k-images-idx3-ubyte"][16:])
    expected = torch.frombuffer(raw, dtype=torch.uint8)
    assert torch.equal(data.test_images.flatten(), expected)


def test_explicit_root_comes_first(env, monkeypatch):
    tmp = env["tmp"]
    root = _write(tmp / "root")
    monkeypatch.setenv("TRANSFERKIT_DATA", str(_write(tmp / "envdata")))
    _write(env["cache"])
    _write(tmp / "system")
    data = fm.fashion_mnist(root)
    assert data.source == str(root)
    _check_tiny(data)


def test_transferkit_data_comes_before_cache_and_system(env, monkeypatch):
    tmp = env["tmp"]
    _write(tmp / "envdata")
    _write(env["cache"])
    _write(tmp / "system")
    monkeypatch.setenv("TRANSFERKIT_DATA", str(tmp / "envdata"))
    assert fm.fashion_mnist(tmp / "absent").source == str(tmp / "envdata")


def test_cache_comes_before_system(env):
    _write(env["cache"])
    _write(env["tmp"] / "system")
    assert fm.fashion_mnist().source == str(env["cache"])


def test_xdg_cache_home_and_default_cache(env, monkeypatch):
    monkeypatch.delenv("TRANSFERKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(env["tmp"] / "xdg"))
    assert fm._cache_dir() == env["tmp"] / "xdg" / "transferkit" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(env["tmp"] / "home"))
    assert fm._cache_dir() == env["tmp"] / "home" / ".cache" / "transferkit" / "fashion-mnist"


def test_system_folder_is_used_last_before_download(env):
    _write(env["tmp"] / "system")
    data = fm.fashion_mnist()
    assert data.source == str(env["tmp"] / "system")
    assert env["fetched"] == []


@pytest.mark.parametrize("sub", ["fashion-mnist", "FashionMNIST/raw"])
def test_root_subfolder_layouts(env, sub):
    _write(env["tmp"] / "root" / sub)
    assert fm.fashion_mnist(env["tmp"] / "root").source == str(env["tmp"] / "root" / sub)


def test_decompressed_and_gz_files_mix(env):
    root = env["tmp"] / "root"
    _write(root, gz=False, names=NAMES[:2])
    _write(root, gz=True, names=NAMES[2:])
    _check_tiny(fm.fashion_mnist(root))


def test_download_into_cache_through_mirrors(env, monkeypatch):
    mirror = _write(env["tmp"] / "mirror")
    monkeypatch.setattr(fm, "_fetch", _fixture_fetcher(mirror, env["fetched"]))
    data = fm.fashion_mnist(offline=False, mirrors=["http://mirror.invalid/"])
    assert data.source == str(env["cache"])
    _check_tiny(data)
    assert sorted(p.name for p in env["cache"].iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    assert env["fetched"] == [f"http://mirror.invalid/{n}.gz" for n in NAMES]


def test_download_uses_torchvision_mirrors_by_default(env, monkeypatch):
    from torchvision.datasets import FashionMNIST

    mirror = _write(env["tmp"] / "mirror")
    monkeypatch.setattr(fm, "_fetch", _fixture_fetcher(mirror, env["fetched"]))
    fm.fashion_mnist()
    assert env["fetched"][0] == f"{FashionMNIST.mirrors[0]}{NAMES[0]}.gz"


def test_download_fills_only_missing_files_and_keeps_the_users(env, monkeypatch):
    cache = _write(env["cache"], gz=False, names=NAMES[:1])
    before = (cache / NAMES[0]).stat().st_mtime_ns
    mirror = _write(env["tmp"] / "mirror")
    monkeypatch.setattr(fm, "_fetch", _fixture_fetcher(mirror, env["fetched"]))
    _check_tiny(fm.fashion_mnist())
    assert [u.rsplit("/", 1)[-1] for u in env["fetched"]] == [f"{n}.gz" for n in NAMES[1:]]
    assert (cache / NAMES[0]).stat().st_mtime_ns == before
    assert not (cache / f"{NAMES[0]}.gz").exists()


def test_corrupt_download_is_rejected_and_leaves_nothing(env, monkeypatch):
    bad = gzip.compress(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"\x01\x02")
    monkeypatch.setattr(fm, "_fetch", _fixture_fetcher(env["tmp"], env["fetched"], payload=bad))
    with pytest.raises(DataNotFoundError, match="SHA-256") as info:
        fm.fashion_mnist(mirrors=["http://a.invalid/", "http://b.invalid/"])
    assert "http://a.invalid/" in str(info.value) and "http://b.invalid/" in str(info.value)
    assert list(env["cache"].iterdir()) == []  # no temp file, no bad file


@pytest.mark.parametrize("how", ["argument", "TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_lists_every_place_tried_and_the_fixes(env, monkeypatch, how):
    _write(env["tmp"] / "envdata", names=NAMES[:3])
    monkeypatch.setenv("TRANSFERKIT_DATA", str(env["tmp"] / "envdata"))
    offline = None
    if how == "argument":
        offline = True
    else:
        monkeypatch.setenv(how, "1")
    with pytest.raises(DataNotFoundError) as info:
        fm.fashion_mnist(env["tmp"] / "root", offline=offline)
    msg = str(info.value)
    for place in fm.fashion_mnist_search_paths(env["tmp"] / "root"):
        assert str(place) in msg
    assert f"missing: {NAMES[3]}" in msg
    assert "download (skipped: offline)" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "TRANSFERKIT_DATA" in msg
    assert "offline=False" in msg
    assert env["fetched"] == []
    assert isinstance(info.value, LookupError) and isinstance(info.value, DataError)


def test_network_failure_raises_not_found(env):
    with pytest.raises(DataNotFoundError, match="network disabled"):
        fm.fashion_mnist(mirrors=["http://mirror.invalid/"])
    assert env["fetched"] == [f"http://mirror.invalid/{NAMES[0]}.gz"]


def test_truncated_gz_names_the_file_and_keeps_it(env):
    root = _write(env["tmp"] / "root")
    path = root / f"{NAMES[0]}.gz"
    truncated = path.read_bytes()[:-20]
    path.write_bytes(truncated)
    with pytest.raises(CorruptDataError, match="truncated") as info:
        fm.fashion_mnist(root)
    assert str(path) in str(info.value) and "apt-get install" in str(info.value)
    assert path.read_bytes() == truncated  # never deleted nor rewritten


def test_corrupted_content_fails_the_hash(env):
    root = _write(env["tmp"] / "root", gz=False)
    path = root / NAMES[2]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="SHA-256") as info:
        fm.fashion_mnist(root)
    assert str(path) in str(info.value)
    assert path.read_bytes() == bytes(data)


def test_production_hashes_reject_other_content(tmp_path):
    # No test hook here: the recorded hashes of the original files are in force.
    path = tmp_path / NAMES[1]
    path.write_bytes(CONTENT[NAMES[1]])
    with pytest.raises(CorruptDataError, match=fm.SHA256[NAMES[1]]):
        fm.read_idx(path, sha256=fm.SHA256[NAMES[1]])


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x00\x00\x0d\x01" + (2).to_bytes(4, "big") + b"ab", "bad header"),
        (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "truncated idx header"),
        (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"ab", "truncated or padded"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path, payload, match):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(CorruptDataError, match=match):
        fm.read_idx(path)


def test_mismatched_image_and_label_counts(env, monkeypatch):
    content = dict(CONTENT)
    content["t10k-labels-idx1-ubyte"] = _idx_bytes(torch.tensor([1, 2]))
    hashes = {n: hashlib.sha256(d).hexdigest() for n, d in content.items()}
    monkeypatch.setattr(fm, "SHA256", hashes)
    root = env["tmp"] / "root"
    root.mkdir()
    for name, data in content.items():
        (root / name).write_bytes(data)
    with pytest.raises(CorruptDataError, match=r"t10k files .* do not fit together"):
        fm.fashion_mnist(root)


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="needs Debian's dataset-fashion-mnist package")
def test_debian_files_match_the_recorded_hashes(monkeypatch, tmp_path):
    monkeypatch.delenv("TRANSFERKIT_DATA", raising=False)
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))
    data = fm.fashion_mnist(offline=True)
    assert data.source == str(DEBIAN)
    assert data.train_images.shape == (60000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
