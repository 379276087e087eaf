"""Typed configs: dataclasses loaded from YAML, with `--key value` / `--section.key value` overrides.

One loader for every recipe. A recipe config is a dataclass whose fields are sections (model, data,
trainer, method), each a dataclass itself. Unknown keys, wrong types and missing files raise
`ConfigError` with a message that names the key (and a close match) or the file.

Example::

    cfg = load_config(SFTConfig, "recipes/sft/configs/tiny_cpu.yaml", ["--trainer.lr", "1e-4"])
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from llmkit.errors import ConfigError

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(options))})"


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # type: ignore[index]
            return True, inner
    return False, tp


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from YAML or a command-line string) to type `tp`, or raise ConfigError naming `key`.

    Strings are accepted for numbers and booleans because command-line overrides are strings and
    PyYAML reads `1e-4` as a string.
    """
    optional, inner = _is_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in {"null", "none"} and optional):
        if optional or tp is Any:
            return None
        raise ConfigError(f"config key '{key}' must not be null (expected {_type_name(tp)})")
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=key + ".")
        raise ConfigError(f"config key '{key}' must be a mapping of {_type_name(tp)} fields, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return {coerce(k, key_tp, key): coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' has the wrong type: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    as_float = None
                if as_float is not None and as_float.is_integer():
                    return int(as_float)
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"config key '{key}' has the wrong type: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_suggest(str(key), list(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{prefix}{name}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        raise ConfigError(f"invalid config section '{prefix.rstrip('.') or cls.__name__}': {exc}") from exc


def to_dict(cfg: Any) -> Any:
    """Convert a config dataclass (recursively) to plain Python for YAML/JSON dumps."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """Parse `--key value`, `--key=value` and bare `--flag` (meaning true) into (key, value) pairs."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected command-line argument '{arg}' (overrides look like --section.key value)")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        pairs.append((key.replace("-", "_"), value))
    return pairs


def resolve_key(cls: type, key: str) -> list[str]:
    """Turn `key` into a path of field names; a bare key may name a unique field of any section."""
    parts = key.split(".")
    hints = typing.get_type_hints(cls)
    if parts[0] in hints:
        return parts
    if len(parts) == 1:
        owners = []
        for name, tp in hints.items():
            _, inner = _is_optional(tp)
            if dataclasses.is_dataclass(inner) and key in typing.get_type_hints(inner):
                owners.append(name)
        if len(owners) == 1:
            return [owners[0], key]
        if len(owners) > 1:
            raise ConfigError(f"override '--{key}' is ambiguous: it is in sections {owners}; write --{owners[0]}.{key}")
    all_keys = list(hints)
    for name, tp in hints.items():
        _, inner = _is_optional(tp)
        if dataclasses.is_dataclass(inner):
            all_keys += [f"{name}.{k}" for k in typing.get_type_hints(inner)]
    raise ConfigError(f"unknown config key '{key}' in command-line override{_suggest(key, all_keys)}")


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{'.'.join(path)}': '{part}' is not a section")
        node = child
    # Overrides are strings; parse YAML scalars so lists/null/numbers work, and let `coerce` type-check.
    try:
        parsed = yaml.safe_load(value) if isinstance(value, str) else value
    except yaml.YAMLError:
        parsed = value
    node[path[-1]] = parsed


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from `path`; a missing file or bad YAML raises ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from the YAML file `path` (optional) and apply command-line `overrides`."""
    data = read_yaml(path) if path is not None else {}
    for key, value in parse_overrides(overrides or []):
        _set_path(data, resolve_key(cls, key), value)
    return from_dict(cls, data)


def options_help(cls: type, prefix: str = "") -> str:
    """One line per settable key of config dataclass `cls`: `--section.key  TYPE  (default: VALUE)`.

    Nested dataclass sections are expanded, so the list is exactly what `load_config` accepts.
    """
    hints = typing.get_type_hints(cls)
    lines: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _is_optional(hints[f.name])[1]
        if dataclasses.is_dataclass(tp):
            lines.append(options_help(tp, prefix + f.name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        if typing.get_origin(tp) is Literal:
            name = "|".join(str(a) for a in typing.get_args(tp))
        else:
            name = _type_name(hints[f.name]).replace("NoneType", "None")
        lines.append(f"  --{prefix}{f.name:<{max(1, 34 - len(prefix))}} {name}  (default: {to_dict(default)!r})")
    return "\n".join(lines)


def wants_help(argv: list[str]) -> bool:
    """True when the command line asks for help (`-h` or `--help`)."""
    return any(a in ("-h", "--help") for a in argv)


def split_config_arg(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull `--config PATH` (or `--config=PATH`) out of `argv`; return (path, remaining overrides)."""
    path = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path")
            path = argv[i + 1]
            i += 2
            continue
        if argv[i].startswith("--config="):
            path = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return path, rest
