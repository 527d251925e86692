"""benchmarks/small_data.py --quick runs the default and one swept arm and prints a verdict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_a_table_and_a_verdict(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "small_data.py"), "--quick",
                           "--threads", "1", "--seeds", "0", "1", "--jobs", "2", "--out",
                           str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdict = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert set(verdict) == {"digits"} and verdict["digits"]["best"] == "full 1e-2/1e-3 1x"
    result = json.loads(out.read_text())["datasets"]["digits"]
    rows, runs = result["rows"], result["runs"]
    assert set(rows) == set(runs) == {"default", "full 1e-2/1e-3 1x"}
    assert all(r["epochs"] == 2 and 0 <= r["test_acc"] <= 1 for r in rows.values())
    for arm, row in rows.items():  # each arm's row is the mean of its two seeds' runs
        accs = sorted(r["test_acc"] for r in runs[arm])
        assert len(accs) == 2 and sorted(row["per_seed"]) == accs
        assert row["test_acc"] == round(sum(accs) / 2, 4)
    assert "| digits |" in proc.stdout
    # Each run says which weights it ended with: full restores its best epoch of the two.
    assert all(r["restored_epoch"] in (1, 2) and not r["probe_kept"]
               for r in runs["full 1e-2/1e-3 1x"])
    lines = [line for line in proc.stdout.splitlines() if " seed " in line]
    assert len(lines) == 4 and all("ep (ends with " in line for line in lines)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_a_terminated_run_takes_its_workers_with_it(tmp_path):
    # Before: a killed parent left its --jobs workers training (an hour of CPU, found by
    # the load they put on every later measurement).
    pytest.importorskip("sklearn")
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "small_data.py"),
                             "--quick", "--threads", "1", "--seeds", "0", "1", "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 3 and time.monotonic() < deadline:  # tracker + 2 workers
            time.sleep(0.5)
            workers = _children(proc.pid)
        assert len(workers) >= 3, workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)]
    finally:
        proc.kill()
        proc.wait()


def test_write_folder_writes_the_split_folder_train_reads(tmp_path):
    pytest.importorskip("sklearn")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "small_data.py"),
                           "--datasets", "digits", "--write-folder", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "d" / "train").glob("*/*.png"))) == 300
    assert len(list((tmp_path / "d" / "val").glob("*/*.png"))) == 100
    assert sorted(p.name for p in (tmp_path / "d" / "test").iterdir()) == [str(i) for i in
                                                                         range(10)]


def _small_data():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import small_data
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return small_data


def test_arms_are_read_with_an_optional_image_size():
    small_data = _small_data()
    assert small_data.parse_arm("full 1e-2/1e-3 1x 96px") == (
        "full 1e-2/1e-3 1x 96px", "full", 1e-2, 1e-3, 1.0, 96)
    assert small_data.parse_arm("lp_ft 3e-3/3e-4 2x") == (
        "lp_ft 3e-3/3e-4 2x", "lp_ft", 3e-3, 3e-4, 2.0, None)
    assert small_data.parse_arm("linear_probe 1x")[1:] == ("linear_probe", 1e-2, None, 1.0, None)
    with pytest.raises(SystemExit, match="cannot read the size of 'full 1e-2/1e-3 1x bigpx'"):
        small_data.parse_arm("full 1e-2/1e-3 1x bigpx")


@pytest.mark.parametrize(("default", "best", "met", "gap", "ratio"), [
    ((0.90, 100.0), (0.895, 100.0), True, -0.5, 1.0),   # ahead, same time
    ((0.90, 300.0), (0.895, 100.0), True, -0.5, 3.0),   # ahead: its time is not held against it
    ((0.90, 150.0), (0.905, 100.0), True, 0.5, 1.5),    # within a point, within 2x
    ((0.90, 250.0), (0.905, 100.0), False, 0.5, 2.5),   # within a point, but over 2x
    ((0.90, 100.0), (0.92, 100.0), False, 2.0, 1.0),    # 2 points behind
    ((0.90, 250.0), (0.90, 100.0), False, 0.0, 2.5),    # a tie at 2.5x the time
])
def test_the_verdict_holds_the_default_to_the_best_swept_arm(default, best, met, gap, ratio):
    rows = {"default": {"test_acc": default[0], "seconds": default[1]},
            "linear_probe 1x": {"test_acc": 0.5, "seconds": 1.0},
            "full 1e-2/1e-3 2x": {"test_acc": best[0], "seconds": best[1]}}
    v = _small_data().verdict(rows)
    assert v == {"best": "full 1e-2/1e-3 2x", "best_acc": best[0], "default_acc": default[0],
                 "gap_points": gap, "time_ratio": ratio, "met": met}
