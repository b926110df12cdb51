"""The package's layers point one way: every import of every module under ``coavs/`` and ``kernels/`` (read with
``ast``, top-level and inside functions) goes to the importer's own layer or a lower one; ``kernels/`` (installed
as ``coavs.kernels``) imports nothing from coavs; imports sit at the top of a file unless they load a heavy
optional dependency (:data:`LOCAL_IMPORT_ALLOWED`).

Layers, lowest first (README "Build layout" and docs/design.md describe them)::

    0 shared:    coavs (the package itself), errors, _native, _C, audio_spec, progress
    1 kernels:   Triton kernels, a leaf
    2 ops:       custom ops and their backends (the only layer that knows about backends)
    3 data:      readers, datasets, splits            4 models: the network (never data)
    5 inference: branch combination, post-processing, precision, frame batches, gate
      preprocess: per-clip VGGish features and marker files (data + models)
    6 eval       7 training       8 analysis       9 front ends: cli, demo, __main__, info
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module prefix → rank. The longest matching prefix decides; a module matching none is an error of this table.
RANKS = {
    "coavs": 0, "coavs.errors": 0, "coavs._native": 0, "coavs._C": 0, "coavs.audio_spec": 0, "coavs.progress": 0,
    "coavs.kernels": 1,
    "coavs.ops": 2,
    "coavs.data": 3,
    "coavs.models": 4, "coavs.integrations": 4,
    "coavs.inference": 5, "coavs.preprocess": 5,
    "coavs.eval": 6,
    "coavs.training": 7,
    "coavs.analysis": 8,
    "coavs.cli": 9, "coavs.demo": 9, "coavs.__main__": 9, "coavs.info": 9,
}
# Layers that share a rank but must not import each other.
# coavs.models may use coavs.integrations (the hf_mask2former segmenter accelerates transformers' Mask2Former),
# never the reverse: an integration adapts a third-party model and knows nothing of coavs's.
SEPARATE = {("coavs.models", "coavs.data"), ("coavs.data", "coavs.models"),
            ("coavs.integrations", "coavs.models"),
            ("coavs.integrations", "coavs.data"), ("coavs.data", "coavs.integrations")}
# Imports that may sit inside a function: heavy or optional dependencies (and the kernels and native extension,
# which load Triton / a compiled library and are chosen per call by coavs.ops), and platform-only modules.
LOCAL_IMPORT_ALLOWED = ("transformers", "av", "matplotlib", "timm", "torchvision", "torchaudio", "scipy", "triton",
                        "coavs.kernels", "coavs._C", "fcntl")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "kernels":
        parts = ["coavs", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> list[Path]:
    return sorted([*(ROOT / "coavs").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")])


def _imports(path: Path):
    """``(imported module, line, inside a function)`` for every import of ``path``. ``from a import b`` yields
    ``a.b`` when that is a module of the package (so ``from coavs import errors`` is an edge to coavs.errors)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []

    def visit(node, local: bool):
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, inside) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package[:len(package) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if _is_package_module(sub) else base, child.lineno, inside))
            visit(child, inside)

    visit(tree, False)
    return found


def _is_package_module(name: str) -> bool:
    if not name.startswith("coavs."):
        return False
    parts = name.split(".")[1:]
    if parts[0] == "kernels":
        base = ROOT / "kernels" / Path(*parts[1:]) if parts[1:] else ROOT / "kernels"
    else:
        base = ROOT / "coavs" / Path(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _layer(module: str) -> str:
    best = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py's RANKS: add it")
    return best


def _is_coavs(module: str) -> bool:
    return module == "coavs" or module.startswith("coavs.")


def _violations() -> list[str]:
    problems = []
    for path in _sources():
        importer = _module_name(path)
        mine = _layer(importer)
        where = path.relative_to(ROOT)
        for module, line, local in _imports(path):
            if local and not any(module == h or module.startswith(h + ".") for h in LOCAL_IMPORT_ALLOWED):
                problems.append(f"{where}:{line}: import of {module} inside a function (move it to the top; only "
                                f"{', '.join(LOCAL_IMPORT_ALLOWED)} may load late)")
            if not _is_coavs(module):
                continue
            theirs = _layer(module)
            if mine == "coavs.kernels" and theirs != "coavs.kernels":
                problems.append(f"{where}:{line}: kernels/ imports {module} (kernels/ is a leaf: nothing from coavs)")
            elif RANKS[theirs] > RANKS[mine]:
                problems.append(f"{where}:{line}: upward import {importer} ({mine}, rank {RANKS[mine]}) -> "
                                f"{module} ({theirs}, rank {RANKS[theirs]})")
            elif (mine, theirs) in SEPARATE:
                problems.append(f"{where}:{line}: {importer} imports {module}: {mine} and {theirs} are separate "
                                f"layers of one rank")
    return problems


def test_every_module_is_in_a_layer():
    names = [_module_name(p) for p in _sources()]
    assert len(names) > 40
    for name in names:
        _layer(name)


def test_imports_point_down_and_sit_at_the_top():
    problems = _violations()
    assert not problems, "layer violations:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, message", [
    ("from coavs.training.trainer import train\n", "upward import coavs.eval.runner"),
    ("def f():\n    from coavs.data import splits\n", "inside a function"),
    ("def f():\n    import matplotlib\n", None),
    ("from . import metrics\nfrom coavs.inference.combine import combine\n", None),
    ("from ..cli import main\n", "upward import coavs.eval.runner"),
])
def test_the_checker_catches_what_it_should(tmp_path, monkeypatch, source, message):
    """The checker itself, on a fake ``coavs/eval/runner.py``: it must see upward edges (absolute and relative)
    and late imports, and pass allowed ones."""
    fake = ROOT / "coavs" / "eval" / "runner.py"
    real_read = Path.read_text

    def read_text(self, *args, **kwargs):
        return source if self == fake else real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    problems = [p for p in _violations() if p.startswith(str(Path("coavs", "eval", "runner.py")))]
    if message is None:
        assert problems == []
    else:
        assert any(message in p for p in problems), problems


def test_kernels_importing_coavs_is_caught(monkeypatch):
    fake = ROOT / "kernels" / "debias_logits.py"
    real_read = Path.read_text

    def read_text(self, *args, **kwargs):
        return "import coavs.errors\n" if self == fake else real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert any("kernels/ imports coavs.errors" in p for p in _violations())
