"""Every ``>>>`` example in the package's docstrings runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tempfile
from pathlib import Path

import pytest

import transferkit
from transferkit.backbones import registry as R

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(transferkit.__path__, prefix="transferkit.")
)


def _examples() -> list[tuple[str, doctest.DocTest]]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            # A name re-exported by a package is found again there: keep its own module's.
            owner = test.name if test.name == name else test.name.rsplit(".", 1)[0]
            if test.examples and owner == name:
                found.append((test.name, test))
    return found


EXAMPLES = _examples()


def test_the_package_has_docstring_examples() -> None:
    assert len(EXAMPLES) >= 15, [n for n, _ in EXAMPLES]


@pytest.mark.parametrize("test", [t for _, t in EXAMPLES], ids=[n for n, _ in EXAMPLES])
def test_docstring_example(
    test: doctest.DocTest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")  # an example never downloads
    # examples register backbones, as a user would: none of them may reach the other tests
    monkeypatch.setattr(R, "_REGISTRY", dict(R._REGISTRY))
    # examples write to tempfile.mkdtemp(): keep those folders inside pytest's own, which it prunes
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    result = runner.run(test, out=out.append)
    assert result.failed == 0, "".join(out)
