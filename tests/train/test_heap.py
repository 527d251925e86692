"""keep_heap: glibc serves large blocks from the heap inside it, and mmaps them again after."""

from __future__ import annotations

import ctypes
import logging
import sys

import pytest
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.train import Trainer
from transferkit.train import heap as heap_mod
from transferkit.train.callbacks import Callback
from transferkit.train.heap import heap_supported, keep_heap

MIB = 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc():
    if not sys.platform.startswith("linux") or not heap_supported():
        pytest.skip("glibc only")
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def mmapped_block() -> bool:
    """Return whether glibc serves a large allocation with its own mmap region.

    The block is larger than all the heap glibc holds (``arena``), so no free chunk left by
    earlier work can serve it: glibc maps it (it is above the 32 MiB mmap threshold) or,
    with mmap off, grows the heap. It is never touched, so it costs no memory.
    """
    libc = _libc()
    info = libc.mallinfo2()
    size = info.arena + 64 * MIB
    ptr = libc.malloc(size)
    assert ptr
    try:
        return libc.mallinfo2().hblkhd - info.hblkhd >= size
    finally:
        libc.free(ptr)


def test_large_blocks_come_from_the_heap_inside_and_are_mmapped_again_after():
    assert mmapped_block()
    with keep_heap() as kept:
        assert kept is True
        assert not mmapped_block()
    assert mmapped_block()


def test_nested_blocks_keep_the_settings_until_the_outermost_leaves():
    _libc()
    with keep_heap():
        with keep_heap() as inner:
            assert inner is True
        assert not mmapped_block()  # the inner exit did not restore
    assert mmapped_block()


def test_disabled_changes_nothing():
    _libc()
    with keep_heap(False) as kept:
        assert kept is False
        assert mmapped_block()


def test_without_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(heap_mod, "_glibc", lambda: None)
    with keep_heap() as kept:
        assert kept is False


def _data():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(3)]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 3))


class _Probe(Callback):
    def __init__(self):
        self.mmapped = []

    def on_batch_end(self, trainer):
        self.mmapped.append(mmapped_block())


@pytest.mark.parametrize("keep_memory,expected", [(None, False), (False, True)])
def test_trainer_keeps_the_heap_during_fit_on_the_cpu_by_default(keep_memory, expected):
    _libc()
    probe = _Probe()
    trainer = Trainer(_model(), epochs=1, device="cpu", keep_memory=keep_memory,
                      callbacks=[probe], progress=False)
    assert trainer.keep_memory is (keep_memory is None)
    trainer.fit(_data())
    assert probe.mmapped == [expected] * 3
    assert mmapped_block()  # given back after fit


def test_the_weights_do_not_depend_on_keep_memory():
    results = []
    for keep in (True, False):
        model = _model()
        Trainer(model, epochs=2, device="cpu", keep_memory=keep, progress=False).fit(_data())
        results.append(model.state_dict())
    for key, value in results[0].items():
        assert torch.equal(value, results[1][key]), key


def test_fit_says_it_once(caplog):
    _libc()
    trainer = Trainer(_model(), epochs=1, device="cpu", progress=False)
    with caplog.at_level(logging.INFO, logger="transferkit.train.trainer"):
        trainer.fit(_data())
        trainer.fit(_data(), epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("keep_memory")]
    assert len(lines) == 1
    assert "keep_memory=False turns it off" in lines[0]


def test_asked_for_without_glibc_is_said_not_silently_dropped(monkeypatch, caplog):
    monkeypatch.setattr(heap_mod, "_glibc", lambda: None)
    with caplog.at_level(logging.INFO, logger="transferkit.train.trainer"):
        Trainer(_model(), epochs=1, device="cpu", keep_memory=True,
                progress=False).fit(_data())
        Trainer(_model(), epochs=1, device="cpu", progress=False).fit(_data())  # default
    warned = [r for r in caplog.records if "keep_memory" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "not glibc" in warned[0].getMessage()


def test_keep_memory_must_be_a_flag():
    with pytest.raises(ConfigError, match="keep_memory"):
        Trainer(_model(), device="cpu", keep_memory="yes")
