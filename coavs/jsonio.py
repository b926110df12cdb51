"""The one JSON writer and reader of coavs: every JSON file and every JSON line it prints goes through
:func:`dumps`, and every JSON file a user gives or an earlier run wrote is read with :func:`read_json`.

Strict JSON has no NaN or Infinity (Python's ``json`` writes the bare tokens ``NaN``/``Infinity`` by default, which
strict parsers — ``jq``, JavaScript, most other languages — reject). A metric that is undefined (no frames to
average, an empty denominator) or infinite is written as ``null``; numpy and torch scalars as plain numbers; paths
as strings. Writing still refuses any other non-finite number it meets (``allow_nan=False``), so a file can never
hold one.

    write_json(run / "summary.json", summary)
    append_jsonl(run / "log.jsonl", record)
    print(dumps(rows, indent=2))
    info = read_json(folder / "markers.json", "marker info", error=DataError)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePath

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
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text)
    except FileNotFoundError:
        reason = "no such file"
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (byte {exc.start})"
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
    if getattr(error, "takes_path", False):
        raise error(path, f"{what}: {reason}")
    raise error(f"{what} {path}: {reason}")


__all__ = ["append_jsonl", "dumps", "finite", "read_json", "write_json"]
