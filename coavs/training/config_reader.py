"""The training config's reader: YAML or JSON files (a key given twice is an error, ``1e-4`` is a number) turned
into nested dataclasses, with errors that name the offending key (``optim.lr must be a number, got 'fast'``).
:mod:`coavs.training.config` holds the schema and re-exports :func:`read_file`, :func:`from_dict` and
:func:`to_dict`."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from coavs.errors import ConfigError

T = TypeVar("T")


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two fixes for config files and ``--set`` values: floats written without a dot
    (``1e-4``, ``5E3``) are numbers, as in YAML 1.2 and JSON, not strings (YAML 1.1 needs ``1.0e-4``); and a key
    given twice in one mapping is an error (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise ConfigError(f"the key {key!r} is given twice in one mapping (lines {seen[key]} and "
                                          f"{line}); keep one")
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeConstructor reports it
                    continue
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_implicit_resolver(  # 1e-4, -2E+3, 6e5: the exponent forms YAML 1.1 leaves as strings
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str):
    """YAML text as Python values (see :class:`_ConfigLoader`)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def _json_object(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ConfigError(f"the key(s) {', '.join(map(repr, twice))} are given twice in one object; keep one")
    return dict(pairs)


def read_file(path: str | Path) -> dict:
    """A YAML (.yaml/.yml) or JSON (.json) file as a dict (a key given twice is an error)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            data = parse_yaml(text)
        elif path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_json_object)
        else:
            raise ConfigError(f"config file must end in .yaml, .yml or .json: {path}")
    except (ValueError, ImportError) as exc:
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{path}: {exc}") if str(path) not in str(exc) else exc from None
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError and friends
        problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
        if problem and mark is not None:  # YAML's own message spans several lines with a caret drawing
            raise ConfigError(f"cannot parse {path}: {problem} (line {mark.line + 1}, column {mark.column + 1})"
                              ) from None
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Builds dataclass ``cls`` from ``data`` (nested dataclasses and lists of them allowed).

    Unknown keys and values of the wrong type are errors naming ``where.key``; missing keys keep defaults.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(_join(where, k) for k in unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    kwargs = {k: _convert(hints[k], v, _join(where, k)) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts/lists, for writing the resolved config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, where) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


__all__ = ["from_dict", "parse_yaml", "read_file", "to_dict"]
