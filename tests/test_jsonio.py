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


@pytest.mark.parametrize("name, write, read", [
    ("summary.json", jsonio.write_json, lambda text: _strict(text)),
    ("log.jsonl", lambda path, value: jsonio.write_jsonl(path, [value, {"step": 2}]),
     lambda text: [_strict(line) for line in text.splitlines()][0]),
])
def test_json_writes_are_strict_and_atomic(tmp_path, monkeypatch, name, write, read):
    path = tmp_path / name
    write(path, {"miou": math.nan})
    assert read(path.read_text()) == {"miou": None}

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError):
        write(path, {"miou": 0.5})
    monkeypatch.undo()
    assert read(path.read_text()) == {"miou": None}  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == [name]


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


def test_check_object_returns_an_object_with_its_fields():
    value = {"mode": "any", "threshold": 1, "probe": None}
    fields, optional = {"mode": str, "threshold": float}, {"probe": (str, type(None)), "note": str}
    assert jsonio.check_object(value, "gate.json", "gate", ConfigError, fields, optional) is value


@pytest.mark.parametrize("value, reason", [
    ([1, 2], "not a JSON object (got a list)"),
    ("gate", 'not a JSON object (got "gate")'),
    ({"threshold": 0.5}, '"mode" is missing'),
    ({"mode": "any"}, '"threshold" is missing'),
    ({"mode": "any", "threshold": "high"}, '"threshold" must be a number, got "high"'),
    ({"mode": "any", "threshold": True}, '"threshold" must be a number, got true'),
    ({"mode": ["any"], "threshold": 0.5}, '"mode" must be a string, got a list'),
    ({"mode": "any", "threshold": 0.5, "probe": 3}, '"probe" must be a string or null, got 3'),
    ({"mode": "x" * 60, "threshold": None}, '"threshold" must be a number, got null'),
])
def test_check_object_names_the_file_and_the_first_wrong_field(value, reason):
    with pytest.raises(ConfigError) as info:
        jsonio.check_object(value, "/r/gate.json", "gate", ConfigError, {"mode": str, "threshold": float},
                            {"probe": (str, type(None))})
    assert str(info.value) == f"gate /r/gate.json: {reason}"


def test_check_object_cuts_a_long_value_and_keeps_one_line():
    with pytest.raises(UserError) as info:
        jsonio.check_object({"key": "a\nb" * 30}, "/r/x.json", "record", fields={"key": int})
    message = str(info.value)
    assert message.startswith('record /r/x.json: "key" must be an integer, got "a\\nb') and message.endswith("...")
    assert "\n" not in message and len(message) < 100


def test_read_json_object_gives_a_data_error_its_path(tmp_path):
    from coavs.data.errors import DataError

    path = tmp_path / "coavs_synth.json"
    path.write_text('{"clips": []}')
    with pytest.raises(DataError) as info:
        jsonio.read_json_object(path, "synthetic set info", DataError, {"clips": dict})
    assert info.value.path == str(path)
    assert str(info.value) == f'{path}: synthetic set info: "clips" must be an object, got a list'


def test_parse_json_names_where_the_text_came_from():
    assert jsonio.parse_json('{"a": 1}', "config", "/r/last.pt") == {"a": 1}
    with pytest.raises(ConfigError, match=r"^config /r/last\.pt: not valid JSON \(line 1, column 2: "):
        jsonio.parse_json("{oops", "config", "/r/last.pt", ConfigError)
    with pytest.raises(UserError, match=r"^config /r/last\.pt: not JSON text \(got int\)$"):
        jsonio.parse_json(5, "config", "/r/last.pt")


def test_read_jsonl_returns_the_records(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n')
    assert jsonio.read_jsonl(path, "run log") == [{"step": 1}, {"step": 2}]


@pytest.mark.parametrize("text, reason", [
    ('{"step": 1}\n{"step": \n{"step": 3}\n', "not valid JSON (line 2, column 10: Expecting value)"),
    ('{"step": 1}\n\n[1, 2]\n', "line 3 is not a JSON object (got a list)"),
    ('{"step": 1}\n{"step": 2', "not valid JSON (line 2, column 11: Expecting ',' delimiter)"),
])
def test_read_jsonl_names_the_file_and_the_line(tmp_path, text, reason):
    path = tmp_path / "log.jsonl"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        jsonio.read_jsonl(path, "run log")
    assert str(info.value) == f"run log {path}: {reason}"


def test_read_jsonl_leaves_out_only_a_last_line_still_being_written(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2')
    assert jsonio.read_jsonl(path, "run log", partial_end=True) == [{"step": 1}]
    path.write_text('{"step": 1}\n{"step": 2\n')  # a finished line that is broken
    with pytest.raises(UserError, match="line 2"):
        jsonio.read_jsonl(path, "run log", partial_end=True)
    path.write_text('{"ste\n{"step": 2}\n')
    with pytest.raises(UserError, match="line 1"):
        jsonio.read_jsonl(path, "run log", partial_end=True)


def test_the_demo_progress_reads_a_log_being_written_and_names_a_broken_one(tmp_path):
    from coavs.demo import _last_step

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 5, "total_steps": 40}\n{"step": 10, "tot')
    assert _last_step(tmp_path) == (5, 40)
    log.write_text('{"step": 5, "total_steps": 40}\n7\n{"step": 10}\n')
    with pytest.raises(UserError, match=f"training log {log}: line 2 is not a JSON object"):
        _last_step(tmp_path)
