"""docs/api.md is generated from the docstrings, is up to date and covers every public name."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

import transferkit
import transferkit.data

ROOT = Path(__file__).resolve().parent.parent


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_api", module)
    spec.loader.exec_module(module)
    return module


gen_api = _load_generator()


def test_api_md_is_up_to_date() -> None:
    messages: list[str] = []
    code = gen_api.main(["--check"], out=messages.append)
    assert code == 0, messages[0] + " (then review and commit docs/api.md)"


def test_check_mode_fails_when_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(gen_api.render().replace("### `create`", "### `create_old`"))
    monkeypatch.setattr(gen_api, "API_MD", stale)
    messages: list[str] = []
    assert gen_api.main(["--check"], out=messages.append) == 1
    assert messages == [f"{stale} is out of date: run `python docs/gen_api.py`."]
    assert "create_old" in stale.read_text()  # --check never writes
    assert gen_api.main([], out=messages.append) == 0
    assert "create_old" not in stale.read_text() and "### `create`" in stale.read_text()


def test_every_exported_name_has_a_section() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    headings = set(re.findall(r"^### `([^`]+)`$", text, flags=re.M))
    for name in [*transferkit.__all__, *transferkit.data.__all__]:
        assert name in headings, f"docs/api.md has no section for {name!r}"


def test_sections_hold_signature_and_args() -> None:
    text = gen_api.render()
    create = text.split("### `create`\n", 1)[1].split("\n### ", 1)[0]
    assert "def create(" in create and "num_classes: int" in create and "*," in create
    assert "**Args:**" in create and "- `num_classes`:" in create
    trainer = text.split("### `Trainer`\n", 1)[1].split("\n### ", 1)[0]
    assert "class Trainer(" in trainer and "#### `Trainer.fit`" in trainer
    assert "-> None" not in trainer.split("```", 2)[1]  # a class shows no return annotation
    assert " at 0x" not in text  # no memory addresses: the output is reproducible


def test_split_docstring() -> None:
    doc = inspect.cleandoc(
        """Do a thing with :class:`~transferkit.errors.ConfigError`.

        More text that is not in the reference.

        Args:
            x: The first
                argument, on two lines.
            y (int): The second.

        Returns:
            ``x`` and ``y``.

        Example:
            >>> 1
        """
    )
    summary, sections = gen_api.split_docstring(doc)
    assert summary == "Do a thing with `ConfigError`."
    assert sections["Args"] == ["x: The first argument, on two lines.", "y (int): The second."]
    assert sections["Returns"] == ["`x` and `y`."]


def _documented_objects() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for module, items in gen_api.documented():
        for name, obj in items:
            kind = gen_api._kind(obj)
            if kind == "Constants":
                continue
            out.append((f"{module.__name__}.{name}", obj))
            if kind == "Classes":
                out += [(f"{module.__name__}.{name}.{m}", member)
                        for m, member in gen_api.public_methods(obj)]
    return out


@pytest.mark.parametrize(("name", "obj"), _documented_objects(), ids=lambda v: str(v)[:60])
def test_public_docstring_first_line_is_a_sentence(name: str, obj: object) -> None:
    doc = obj.__doc__  # its own docstring, not one inherited from a base class
    assert doc and doc.strip(), f"{name} has no docstring"
    first = inspect.cleandoc(doc).splitlines()[0]
    assert first.endswith("."), f"{name}: the docstring's first line is not a sentence: {first!r}"
    assert not re.match(rf"^{re.escape(name.rsplit('.', 1)[-1])}\(", first), (
        f"{name}: the docstring starts with an auto-generated signature"
    )
