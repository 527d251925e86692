"""``transferkit train --config run.toml``: options from a TOML file, and the run's own copy.

A config file holds ``train`` options by their long names (``epochs = 20``,
``batch-size = 32`` or ``batch_size = 32``), at the top level or in a ``[train]`` table.
They are turned into command-line arguments placed *before* the real ones, so argparse
checks them exactly as it checks typed options, and an option on the command line wins.
Each run writes ``OUT/config.toml``: every option with the value the run used, the
settings it chose from the data included, so ``transferkit train --config
OUT/config.toml --out OTHER`` repeats it from its folder alone.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from transferkit._io import atomic_write_text
from transferkit.errors import ConfigError, closest

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None  # type: ignore[assignment]

__all__ = ["CONFIG_NAME", "config_argv", "write_config"]

CONFIG_NAME = "config.toml"
#: Options that are not part of a run's configuration.
_NOT_CONFIG = frozenset({"config", "verbose", "func", "command", "resume"})
_PATHS = frozenset({"data", "val", "test", "weights", "tensorboard", "labels"})
_NOT_PATHS = frozenset({"fashion-mnist", "imagenet", "none"})


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's long options by destination name (``batch_size`` -> its action)."""
    # argparse has no public list of a parser's options; _actions is the documented-by-use one.
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in _NOT_CONFIG and a.dest != "help"}


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    if tomllib is None:  # pragma: no cover
        raise ConfigError("--config needs Python 3.11 or newer (the standard library's "
                          "tomllib).")
    file = Path(path)
    try:
        with file.open("rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {str(path)!r} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {str(path)!r} is not valid TOML: {exc}.") from None
    if isinstance(table.get("train"), dict):
        rest = [k for k in table if k != "train"]
        if rest:
            raise ConfigError(f"--config {str(path)!r}: keys {rest} sit beside the [train] "
                              "table; put every option inside it.")
        table = table["train"]
    return table


def config_argv(path: str | os.PathLike[str], parser: argparse.ArgumentParser) -> list[str]:
    """Return the options of the config file at ``path`` as ``train`` command-line arguments.

    Raises:
        ConfigError: The file is missing or not TOML, a key is not a ``train`` option (the
            closest is suggested), or a value has the wrong kind (a table, a list...).
    """
    options = _options(parser)
    argv: list[str] = []
    for key, value in _read(path).items():
        dest = str(key).replace("-", "_")
        if dest not in options:
            names = [d.replace("_", "-") for d in options]
            raise ConfigError(f"--config {str(path)!r}: {key!r} is not a train option."
                              f"{closest(str(key).replace('_', '-'), names)} Valid: "
                              f"{', '.join(sorted(names))}.")
        action, flag = options[dest], options[dest].option_strings[-1]
        if action.nargs == 0:  # a flag (store_true)
            if not isinstance(value, bool):
                raise ConfigError(f"--config {str(path)!r}: {key} must be true or false, "
                                  f"got {value!r}.")
            argv += [flag] if value else []
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            argv += [flag, str(value)]
        else:
            raise ConfigError(f"--config {str(path)!r}: {key} must be a string or a number, "
                              f"got {value!r}.")
    return argv


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f'"{value}"'
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_config(out: Path, args: argparse.Namespace, parser: argparse.ArgumentParser,
                 chosen: Mapping[str, Any], comments: Iterable[str] = ()) -> Path:
    """Write ``out/config.toml``: every ``train`` option with the value the run used.

    ``chosen`` fills what the run chose itself (``epochs``, ``batch_size``...); ``None``
    values that stayed unset are left out (they mean "choose from the data").
    """
    lines = [f"# {line}" for line in comments]
    lines.append("[train]")
    for dest in _options(parser):
        value = chosen.get(dest, getattr(args, dest, None))
        if dest == "out" or value is None or value is False:
            continue
        if dest in _PATHS and value not in _NOT_PATHS:  # absolute: it runs from anywhere
            value = str(Path(value).expanduser().resolve())
        lines.append(f"{dest.replace('_', '-')} = {_toml_value(value)}")
    return atomic_write_text(out / CONFIG_NAME, "\n".join(lines) + "\n")
