"""The Python code blocks of README.md and the core docs run as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import transferkit.backbones.registry as R

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    "README.md",
    "docs/adapt.md",
    "docs/param_groups.md",
    "docs/freezing.md",
    "docs/backbones.md",
    "docs/data.md",
    "docs/trainer.md",
    "docs/training-tools.md",
    "docs/recipes.md",
    "docs/cli.md",
    "docs/getting-started.md",
    "docs/offline.md",
    "docs/faq.md",
]


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_code_blocks_run(page: str, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pages set environment variables and register example backbones, as a user would;
    # none of that may leak into the other tests.
    monkeypatch.setattr(R, "_REGISTRY", dict(R._REGISTRY))
    saved_env = dict(os.environ)
    blocks = _blocks(page)
    assert blocks, f"{page} has no python code block"
    try:
        for code in blocks:
            exec(compile(code, page, "exec"), {"__name__": "__doc_test__"})
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
