"""The package's imports follow its layers (docs/architecture.md), so the layout cannot rot.

Every module of ``transferkit`` is parsed (not imported) and each of its imports checked:

- a layer imports only the layers below it (the table ``ALLOWED``);
- no module imports a private name (``_name``) of another module, nor a private module
  of another subpackage;
- imports of transferkit modules are at module level; only the optional or slow
  third-party packages in ``LAZY`` may be imported inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "transferkit"
BASE = {"errors", "_validate", "_io", "_integrity", "_state_dict", "_env", "_version"}
# layer -> the layers it may import (itself included); "base" is the modules above.
ALLOWED = {
    "base": {"base"},
    "adaptation": {"base", "adaptation"},
    "data": {"base", "data"},
    "report": {"base", "report"},
    "backbones": {"base", "adaptation", "backbones"},
    "train": {"base", "adaptation", "train"},
    "recipes": {"base", "adaptation", "data", "report", "train", "recipes"},
    "cli": {"base", "adaptation", "data", "report", "backbones", "train", "recipes", "cli"},
    "top": {"base", "adaptation", "data", "report", "backbones", "train", "recipes", "cli"},
}
# Third-party modules that may be imported inside a function, and why (measured or optional).
LAZY = {
    "timm": "about 2 s to import; only timm: names need it",
    "huggingface_hub": "only an hf_hub: name whose config.json is not cached downloads it",
    "torchvision": "about 1.2 s (torchvision.models); only torchvision names need it",
    "matplotlib": "optional dependency (plots)",
    "tqdm": "optional dependency (progress bars)",
    "onnx": "optional dependency (export)",
    "onnxruntime": "optional dependency (export check)",
    "tomllib": "standard library from Python 3.11 only (cli --config); the package supports 3.10",
    "torch.utils.tensorboard": "optional dependency (TensorBoardLogger): fails without tensorboard",
}


def _modules(package: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in package.rglob("*.py"))


def _name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return "top"
    if parts[1] in BASE:
        return "base"
    return parts[1]


def _imports(tree: ast.Module, module: str, is_package: bool):
    """Yield (imported module, imported names, line, at module level) for every import.

    Module level includes the bodies of module-level ``if`` and ``try`` statements (an
    import guarded by ``if dist.is_available():`` still runs at import time).
    """
    top_level: set[int] = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        top_level.add(id(node))
        if isinstance(node, ast.If | ast.Try):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            pending += [n for h in getattr(node, "handlers", []) for n in h.body]
    type_checking = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            yield base, [a.name for a in node.names], node.lineno, id(node) in top_level


def _violations(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in _modules(package):
        module = _name(path, package)
        layer = _layer(module)
        tree = ast.parse(path.read_text(), str(path))
        for target, names, line, at_top in _imports(tree, module, path.name == "__init__.py"):
            where = f"{path.relative_to(package.parent)}:{line}"
            root = target.split(".")[0]
            if root != "transferkit":
                if not at_top and root not in LAZY and target not in LAZY:
                    found.append(f"{where}: imports {target} inside a function")
                continue
            # `from transferkit import _validate` names a module, not a private attribute.
            if target == "transferkit":
                targets = [f"transferkit.{n}" for n in names]
                names = []
            else:
                targets = [target]
            for full in targets:
                if not at_top:
                    found.append(f"{where}: imports {full} inside a function")
                dest = _layer(full)
                if dest not in ALLOWED[layer]:
                    found.append(f"{where}: {layer} may not import {full} (layer {dest})")
                private = [p for p in full.split(".")[1:] if p.startswith("_")]
                own_package = module.split(".")[:2] == full.split(".")[:2]
                if private and full.split(".")[1] not in BASE and not own_package:
                    found.append(f"{where}: imports the private module {full}")
            for n in names:
                if n.startswith("_") and n != "__version__":
                    found.append(f"{where}: imports the private name {n} from {target}")
    return found


def test_imports_follow_the_layers() -> None:
    assert _violations() == []


def _fake_package(tmp_path: Path, **modules: str) -> Path:
    """Write a package ``transferkit`` whose ``data`` layer holds ``modules`` (name: source)."""
    fake = tmp_path / "transferkit"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    for name, source in modules.items():
        (fake / "data" / f"{name}.py").write_text(source)
    return fake


@pytest.mark.parametrize(
    "source,expected",
    [
        ("from transferkit.train.trainer import Trainer\n", "data may not import"),
        ("from transferkit.data.pipeline import _seed_of\n", "private name _seed_of"),
        ("def f():\n    from transferkit.errors import ConfigError\n", "inside a function"),
        ("def f():\n    import PIL\n", "imports PIL inside a function"),
    ],
)
def test_the_check_finds_each_kind_of_violation(
    tmp_path: Path, source: str, expected: str
) -> None:
    found = _violations(_fake_package(tmp_path, bad=source))
    assert len(found) == 1 and expected in found[0], found


def test_a_guarded_import_at_module_level_is_at_module_level(tmp_path: Path) -> None:
    fake = _fake_package(
        tmp_path,
        ok="import sys\nif sys.platform:\n    import PIL\ntry:\n    import numpy\n"
           "except ImportError:\n    numpy = None\n",
        bad="class C:\n    def f(self):\n        if True:\n            import PIL\n")
    assert _violations(fake) == [
        f"{Path('transferkit/data/bad.py')}:4: imports PIL inside a function"]


def test_every_subpackage_is_a_known_layer() -> None:
    layers = {_layer(_name(p)) for p in _modules()}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)
    assert {"adaptation", "backbones", "data", "train", "recipes", "report", "cli"} <= layers
