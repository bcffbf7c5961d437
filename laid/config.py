"""The one typed config loader: YAML -> dataclasses, for every config in the project.

A config is a (nested) dataclass whose fields document themselves. `load_config(cls, path,
overrides)` reads YAML, applies dotted `key=value` overrides (`lambdas.kl=0.5`), and builds the
dataclass; unknown keys and values of the wrong type are one-line errors that name the file and the
key, so a typo never silently falls back to a default. Range checks live in each dataclass's
`__post_init__` and run on load.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

__all__ = ["load_config", "from_dict", "to_dict", "to_yaml", "apply_overrides", "parse_override", "read_yaml"]


def _check_type(value, hint, where: str):
    """Coerce/validate `value` against a type hint of the simple kinds used above."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return from_dict(hint, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if args and len(items) != len(value):
            raise ValueError(f"{where}: expected {len(items)} values, got {value!r}")
        return tuple(_check_type(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, items or [Any] * len(value))))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2:  # values checked too (e.g. dict[str, SomeDataclass])
            return {k: _check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict[str, Any], where: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ValueError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {names}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'lambdas.kl=0.5' -> (['lambdas', 'kl'], 0.5); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. lambdas.kl=0.5)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a (nested) config mapping; returns a new mapping."""
    data = yaml.safe_load(yaml.safe_dump(data, sort_keys=False))  # deep copy of plain data, key order kept
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    for key, value in items:
        path = key.split(".") if isinstance(key, str) else key
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {'.'.join(path)}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from `path`; a missing file, bad YAML or a non-mapping is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{what} {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must be a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict[str, Any] = (),
                what: str = "config", base: dict[str, Any] | None = None) -> T:
    """Build `cls` from YAML at `path` (or `base`, or defaults when both are None) plus overrides."""
    data = dict(base or {})
    if path is not None:
        data.update(read_yaml(path, what))
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what} {path or '(defaults)'}: {e}") from None


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
