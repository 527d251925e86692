"""The package builds into an sdist and a wheel that install and run offline.

The project files are copied to a temporary folder first, so the build leaves no
``build/`` or ``*.egg-info`` behind in the working tree. The build uses the test
environment's setuptools (``--no-isolation``: no index needed). The wheel is installed
with ``--no-deps --no-index`` into a fresh venv that sees the test environment's
packages (torch, ...) through a ``.pth`` file, since ``--system-site-packages`` of a venv
created from a venv only reaches the base interpreter.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from transferkit._version import __version__

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("build")
pytest.importorskip("twine")


def _run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the sdist, then the wheel from the sdist, as ``python -m build`` does."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "transferkit", src / "transferkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check",
         "--outdir", out, src, cwd=tmp)
    return out


def test_sdist_and_wheel_are_built_and_pass_twine(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"transferkit-{__version__}-py3-none-any.whl",
                     f"transferkit-{__version__}.tar.gz"]
    done = _run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()),
                cwd=dist)
    assert done.stdout.count("PASSED") == 2


def test_wheel_contents(dist: Path) -> None:
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as whl:
        files = set(whl.namelist())
        info = f"transferkit-{__version__}.dist-info"
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    for name in ("py.typed", "__init__.py", "__main__.py", "_version.py", "_validate.py",
                 "adaptation/core.py", "backbones/model_file.py", "data/pipeline.py",
                 "train/trainer.py", "recipes/finetune.py", "report/markdown.py",
                 "cli/__init__.py", "cli/catalog.py", "cli/train.py", "cli/predict.py",
                 "cli/export.py"):
        assert f"transferkit/{name}" in files
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "transferkit").rglob("*.py")}
    assert sources - files == set(), "modules missing from the wheel (a subpackage not listed?)"
    assert not any(f.startswith(("tests/", "docs/", "benchmarks/")) for f in files)
    assert "transferkit = transferkit.cli:main" in entry_points
    with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "LICENSE", "transferkit/py.typed"} <= members


def test_wheel_installs_and_runs(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv,
         cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                   cwd=tmp_path).stdout.strip()
    # torch & co. from the test environment; .pth files there (an editable transferkit)
    # are not processed, and the venv's own site-packages comes first on sys.path.
    Path(purelib, "_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
         "--no-index", "--quiet", next(dist.glob("*.whl")), cwd=tmp_path)
    where = _run(python, "-c", "import transferkit; print(transferkit.__file__)",
                 cwd=tmp_path).stdout.strip()
    assert Path(where).resolve().is_relative_to(Path(purelib).resolve()), where
    script = venv / "bin" / "transferkit"
    assert _run(script, "--version", cwd=tmp_path).stdout.strip() == f"transferkit {__version__}"
    help_text = _run(script, "--help", cwd=tmp_path).stdout
    assert help_text.startswith("usage: transferkit")
    for command in ("backbones", "info", "train", "predict", "export"):
        assert command in help_text
