"""The one JSON writer and reader of coavs: every JSON file and every JSON line it prints goes through
:func:`dumps`, and every JSON file a user gives or an earlier run wrote is read with :func:`read_json` (or
:func:`read_json_object`, which also checks its fields, or :func:`read_jsonl`): a file that is missing, is not JSON
or holds the wrong shape is one line naming the file, never a raw ``KeyError``.

Strict JSON has no NaN or Infinity (Python's ``json`` writes the bare tokens ``NaN``/``Infinity`` by default, which
strict parsers — ``jq``, JavaScript, most other languages — reject). A metric that is undefined (no frames to
average, an empty denominator) or infinite is written as ``null``; numpy and torch scalars as plain numbers; paths
as strings. Writing still refuses any other non-finite number it meets (``allow_nan=False``), so a file can never
hold one.

    write_json(run / "summary.json", summary)
    append_jsonl(run / "log.jsonl", record)
    print(dumps(rows, indent=2))
    info = read_json(folder / "markers.json", "marker info", error=DataError)
    gate = read_json_object(run / "gate.json", "gate", ConfigError, fields={"mode": str, "threshold": float})
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePath
from typing import NoReturn

from coavs.errors import UserError


def finite(value):
    """``value`` (nested dicts, lists, tuples) with every NaN or infinite float replaced by None, numpy / torch
    scalars and 0-d arrays turned into Python numbers, and paths into strings; everything else as it is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    if not isinstance(value, (bool, int, str)) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return finite(value.item())  # a numpy scalar, a 0-d array or a 0-d tensor
    return value


def dumps(value, **kwargs) -> str:
    """``json.dumps`` of :func:`finite` ``(value)``, strict (no NaN/Infinity tokens); ``kwargs`` as json.dumps's
    (``indent``, ``sort_keys``, ``default``)."""
    kwargs.setdefault("allow_nan", False)
    return json.dumps(finite(value), **kwargs)


def write_json(path, value, indent: int | None = 2, atomic: bool = True, **kwargs) -> Path:
    """Writes ``value`` as strict JSON (+ newline) to ``path``; ``atomic``: through a temporary file renamed over
    it, so a reader never sees half a file and a failed write (disk full) leaves the old file."""
    path = Path(path)
    text = dumps(value, indent=indent, **kwargs) + "\n"
    if not atomic:
        path.write_text(text, encoding="utf-8")
        return path
    return _replace_text(path, text)


def write_jsonl(path, records) -> Path:
    """Replaces ``path`` with ``records``, one strict JSON line each, atomically (as :func:`write_json`): a crash
    while rewriting a log leaves the old log, never a truncated one."""
    return _replace_text(Path(path), "".join(dumps(record) + "\n" for record in records))


def _replace_text(path: Path, text: str) -> Path:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def append_jsonl(path, record) -> None:
    """Appends ``record`` as one strict JSON line to ``path``."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(dumps(record) + "\n")


def read_json(path, what: str, error=UserError):
    """The parsed contents of the JSON file ``path``. A file that is missing, unreadable, not UTF-8 or not valid
    JSON raises ``error`` with a one-line message naming ``what`` and the path, e.g. ``marker info
    /x/markers.json: not valid JSON (line 3, column 5: Expecting ',' delimiter)``. ``error`` is called with that
    message, or with ``(path, "<what>: <reason>")`` when it has ``takes_path`` (``DataError``, which keeps the path)."""
    path = Path(path)
    return parse_json(_read_text(path, what, error), what, path, error)


def read_json_object(path, what: str, error=UserError, fields: dict | None = None,
                     optional: dict | None = None) -> dict:
    """:func:`read_json` of ``path``, checked by :func:`check_object` (a JSON object with ``fields``)."""
    return check_object(read_json(path, what, error), path, what, error, fields, optional)


def parse_json(text, what: str, path, error=UserError):
    """``text`` parsed, JSON that ``path`` holds (a file, or a checkpoint storing it); anything but valid JSON
    text raises ``error`` naming ``what`` and ``path``, as :func:`read_json` does."""
    if not isinstance(text, str):
        fail(error, path, what, f"not JSON text (got {type(text).__name__})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    fail(error, path, what, reason)


def read_jsonl(path, what: str, error=UserError, partial_end: bool = False) -> list[dict]:
    """The records of the JSON-lines file ``path`` (one JSON object a line; blank lines skipped). A file
    :func:`read_json` would refuse, or a line that is not a JSON object, raises ``error`` naming the file and the
    line's number. ``partial_end``: a last line without its newline that does not parse is left out (a writer is
    still appending it)."""
    path = Path(path)
    lines = _read_text(path, what, error).split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if partial_end and number == len(lines):
                break
            reason = f"not valid JSON (line {number}, column {exc.colno}: {exc.msg})"
        else:
            if isinstance(record, dict):
                records.append(record)
                continue
            reason = f"line {number} is not a JSON object (got {_describe(record)})"
        fail(error, path, what, reason)
    return records


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "an integer",
          float: "a number", type(None): "null"}


def check_object(value, path, what: str, error=UserError, fields: dict | None = None,
                 optional: dict | None = None) -> dict:
    """``value`` (read from ``path``) when it is a JSON object holding every key of ``fields`` and each key of
    ``fields`` and ``optional`` that it holds is of the given kind: a type or tuple of ``dict``, ``list``, ``str``,
    ``bool``, ``int``, ``float`` (any number, not a bool) and ``type(None)``. Otherwise raises ``error`` as
    :func:`read_json` does, naming the first key that is wrong: ``gate /r/gate.json: "threshold" must be a number,
    got "high"``."""
    if not isinstance(value, dict):
        fail(error, path, what, f"not a JSON object (got {_describe(value)})")
    required = fields or {}
    for key, kinds in {**required, **(optional or {})}.items():
        if key not in value:
            if key in required:
                fail(error, path, what, f"{json.dumps(key)} is missing")
            continue
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not _is_kind(value[key], kinds):
            expected = " or ".join(_KINDS[kind] for kind in kinds)
            fail(error, path, what, f"{json.dumps(key)} must be {expected}, got {_describe(value[key])}")
    return value


def fail(error, path, what: str, reason: str) -> NoReturn:
    """Raises ``error`` with ``<what> <path>: <reason>`` (or ``(path, "<what>: <reason>")`` when it has
    ``takes_path``), the one-line message of every reader here."""
    if getattr(error, "takes_path", False):
        raise error(path, f"{what}: {reason}")
    raise error(f"{what} {path}: {reason}")


def _read_text(path: Path, what: str, error) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        reason = "no such file"
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (byte {exc.start})"
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
    fail(error, path, what, reason)


def _is_kind(value, kinds: tuple) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def _describe(value) -> str:
    """A JSON value for a message: an object or a list by its kind, a scalar as JSON (cut at 40 characters)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["append_jsonl", "check_object", "dumps", "fail", "finite", "parse_json", "read_json", "read_json_object",
           "read_jsonl", "write_json"]
