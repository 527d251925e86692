"""benchmarks/_common.py: run_child reports each child's own wall time and peak memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _common import run_child  # noqa: E402

ALLOC = "import sys; b = bytearray({n} * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ok')"


def test_each_child_reports_its_own_peak_rss_not_the_largest_so_far(tmp_path: Path) -> None:
    big = run_child([sys.executable, "-c", ALLOC.format(n=300)])
    small = run_child([sys.executable, "-c", ALLOC.format(n=1)])
    assert big.returncode == 0 and small.returncode == 0
    assert big.stdout == small.stdout == "ok\n"
    assert big.peak_rss_mb > 300 > small.peak_rss_mb  # RUSAGE_CHILDREN would say 300+ twice
    assert big.wall_s > 0 and small.wall_s > 0
    assert 0 < big.cpu_s and 0 < small.cpu_s


def test_cpu_time_counts_work_not_waiting() -> None:
    busy = run_child([sys.executable, "-c", "import time\nt = time.process_time()\n"
                      "while time.process_time() - t < 0.5: pass"])
    idle = run_child([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert busy.cpu_s >= 0.5 and idle.cpu_s < 0.4 < idle.wall_s


def test_stderr_goes_to_the_file_and_a_failure_keeps_its_code(tmp_path: Path) -> None:
    log = tmp_path / "err.log"
    ran = run_child([sys.executable, "-c", "import sys; sys.exit('broken: 7')"], stderr=log)
    assert ran.returncode == 1 and log.read_text().strip() == "broken: 7"


def test_a_child_past_the_timeout_is_killed() -> None:
    ran = run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert ran.returncode is None and ran.peak_rss_mb is None and ran.cpu_s is None
    assert ran.wall_s == pytest.approx(0.5, abs=5)
