"""The one JSON writer (issue 24): no file or line coavs writes holds a NaN or Infinity token, and every JSON
write in the package goes through :mod:`coavs.jsonio`; its reader names the file and what it holds in one line."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from coavs import jsonio
from coavs.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]

# json.dumps outside coavs/jsonio.py only to build hash keys or compare configs (nothing written or printed).
HASHING = {("coavs/data/cache.py", "fingerprint"), ("coavs/analysis/ablate.py", "_key"),
           ("coavs/analysis/ablate.py", "evaluate_variant"), ("coavs/training/config.py", "config_differences")}


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard token {token}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_and_scalars_plain_numbers():
    value = {"nan": math.nan, "inf": [math.inf, -math.inf], "np": np.float32("nan"), "f64": np.float64(0.5),
             "i64": np.int64(3), "tensor": torch.tensor(2.5), "zero_d": np.array(1.25), "path": Path("a/b"),
             "nested": ({"x": float("nan")},), "bool": True, "none": None}
    parsed = _strict(jsonio.dumps(value))
    assert parsed == {"nan": None, "inf": [None, None], "np": None, "f64": 0.5, "i64": 3, "tensor": 2.5,
                      "zero_d": 1.25, "path": "a/b", "nested": [{"x": None}], "bool": True, "none": None}


def test_write_json_is_strict_and_atomic(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    jsonio.write_json(path, {"miou": math.nan})
    assert _strict(path.read_text()) == {"miou": None}

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        jsonio.write_json(path, {"miou": 0.5})
    monkeypatch.undo()
    assert _strict(path.read_text()) == {"miou": None}  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_append_jsonl_writes_strict_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    jsonio.append_jsonl(path, {"loss": math.inf})
    jsonio.append_jsonl(path, {"loss": 1.0})
    assert [_strict(line) for line in path.read_text().splitlines()] == [{"loss": None}, {"loss": 1.0}]


def test_read_json_returns_the_parsed_value(tmp_path):
    path = tmp_path / "info.json"
    path.write_text('{"name": "violin", "sizes": [1, 2.5]}', encoding="utf-8")
    assert jsonio.read_json(path, "info") == {"name": "violin", "sizes": [1, 2.5]}


def test_read_json_names_a_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(UserError) as info:
        jsonio.read_json(path, "marker info")
    assert str(info.value) == f"marker info {path}: no such file"


def test_read_json_gives_the_line_and_column_of_invalid_json(tmp_path):
    path = tmp_path / "markers.json"
    path.write_text('{\n  "a": 1,\n  "b": 2\n  "c": 3\n}\n')
    with pytest.raises(UserError) as info:
        jsonio.read_json(path, "marker info")
    assert str(info.value) == f"marker info {path}: not valid JSON (line 4, column 3: Expecting ',' delimiter)"


def test_read_json_refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "café"}'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.json: not UTF-8 text \(byte 13\)"):
        jsonio.read_json(path, "label map")


def test_read_json_names_a_folder_it_cannot_read(tmp_path):
    with pytest.raises(UserError, match="cannot be read") as info:
        jsonio.read_json(tmp_path, "gate")
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_read_json_raises_the_error_type_it_is_given(tmp_path):
    path = tmp_path / "gate.json"
    path.write_text("[1,")
    with pytest.raises(ConfigError, match=r"^gate .*gate\.json: not valid JSON \(line 1, column 4"):
        jsonio.read_json(path, "gate", error=ConfigError)


def _json_calls(path: Path):
    """``(enclosing function, call)`` of every json.dump / json.dumps call in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr in ("dump", "dumps") and isinstance(child.func.value, ast.Name)
                    and child.func.value.id == "json"):
                found.append((function, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_every_json_write_goes_through_jsonio():
    strays = []
    for path in sorted((ROOT / "coavs").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "coavs/jsonio.py":
            continue
        for function, line in _json_calls(path):
            if (relative, function) not in HASHING:
                strays.append(f"{relative}:{line} ({function})")
    assert not strays, "use coavs.jsonio (dumps / write_json / append_jsonl) instead of json.dump(s): " + ", ".join(
        strays)
