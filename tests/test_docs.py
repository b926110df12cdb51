"""The README's and docs/'s examples run as written (issue 25), so the docs cannot drift from the code.

Every fenced ```python and ```bash block of README.md and docs/*.md runs, in order, in one fresh working folder per
document (python blocks share one namespace; bash lines run one command each and must exit 0). An HTML comment just
before a block (invisible on GitHub) changes that:

- ``<!-- docs-test: skip (REASON) -->``: not run — only for what CI cannot do here (install packages, download
  weights); the reason is required and the list stays short (``MAX_SKIPPED``).
- ``<!-- docs-test: synopsis -->``: a usage summary with placeholders; each ``coavs ...`` line must name a real
  command and only options that command has.
- ``<!-- docs-test: given`` + Python lines + ``-->``: the reader's own inputs (tensors, a predict function, "my"
  files), run in the document's namespace before the block.

Small sizes, the one liberty taken with the commands (``SMALL_ARGUMENTS``): ``coavs synth`` makes 40 clips of 64
pixels, ``coavs ablate`` two variants of 2 steps, and every training stops after 2 steps (``run.max_steps``,
appended to ``torchrun`` command lines and set on every config read in this process). ``coavs`` commands run in
this process (``coavs.cli.main``), ``torchrun`` and ``python -m`` as subprocesses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from coavs.cli import build_parser, main
from coavs.training import config as config_module

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_SKIPPED = 6
TRAINING_STEPS = 2
SMALL_ARGUMENTS = {  # command words -> arguments appended (argparse: the last value of an option wins)
    ("coavs", "synth"): ["--clips", "40", "--size", "64", "--frames", "3"],
    ("coavs", "ablate"): ["--variants", "vanilla,scheme/mask", "--steps", str(TRAINING_STEPS)],
    ("torchrun",): ["--set", f"run.max_steps={TRAINING_STEPS}"],
}
_MARKER = re.compile(r"<!--\s*docs-test:\s*(\w[\w-]*)(.*?)-->", re.S)
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    document: Path
    line: int
    language: str
    code: str
    marker: str | None = None  # skip | synopsis | None
    reason: str = ""
    given: str = ""  # Python run before the block


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path`` with the docs-test markers that precede them."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, pending, i = [], {}, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("<!--") and "docs-test:" in line:
            end = i
            while "-->" not in lines[end]:
                end += 1
            match = _MARKER.search("\n".join(lines[i:end + 1]))
            kind, rest = match.group(1), match.group(2)
            if kind == "given":
                pending["given"] = pending.get("given", "") + rest.strip("\n") + "\n"
            elif kind in ("skip", "synopsis"):
                pending["marker"], pending["reason"] = kind, rest.strip().strip("()").strip()
            i = end + 1
            continue
        fence = _FENCE.match(line)
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append(Block(path, i + 1, fence.group(1), "\n".join(lines[i + 1:end]), **pending))
            pending, i = {}, end + 1
            continue
        if line.strip():
            pending = {}  # a marker belongs to the block right after it
        i += 1
    return found


def _commands(code: str) -> list[list[str]]:
    """The command lines of a bash block (comments dropped, ``\\`` continuations joined)."""
    text = re.sub(r"\\\n", " ", code)
    return [words for words in (shlex.split(line, comments=True) for line in text.splitlines()) if words]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small(words: list[str]) -> list[str]:
    for prefix, extra in SMALL_ARGUMENTS.items():
        if tuple(words[:len(prefix)]) == prefix:
            return words + extra
    return words


def run_command(words: list[str], where: str) -> None:
    words = _small(words)
    if words[0] == "coavs":
        code = main(words[1:])
        assert code == 0, f"{where}: `{shlex.join(words)}` exited {code}"
        return
    if words[0] == "torchrun" or words[:2] == ["python", "-m"]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1", PET_MASTER_PORT=str(_free_port()))
        command = ([sys.executable, "-m", "torch.distributed.run", *words[1:]] if words[0] == "torchrun"
                   else [sys.executable, *words[1:]])
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{where}: `{shlex.join(words)}` exited {result.returncode}: " \
                                       f"{result.stderr[-1500:]}"
        return
    raise AssertionError(f"{where}: `{words[0]}` is neither coavs, torchrun nor python -m: mark the block "
                         "<!-- docs-test: skip (reason) --> if it cannot run here")


def check_synopsis(block: Block) -> None:
    parser = build_parser()
    for words in _commands(block.code):
        where = f"{block.document.name}:{block.line}"
        assert words[0] == "coavs", f"{where}: a synopsis line must start with coavs: {words}"
        command, rest = parser, words[1:]
        while rest:
            subparsers = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
            if not subparsers:
                break
            assert rest[0] in subparsers[0].choices, f"{where}: no command `coavs ... {rest[0]}`"
            command, rest = subparsers[0].choices[rest[0]], rest[1:]
        options = {o for a in command._actions for o in a.option_strings}
        for token in re.findall(r"(--[\w-]+)", " ".join(rest)):
            assert token in options, f"{where}: `{command.prog}` has no option {token}"


@pytest.fixture
def docs_workspace(tmp_path, monkeypatch):
    """A fresh working folder holding the checkout's configs/, the decode cache inside it, one thread, and every
    training config capped at TRAINING_STEPS steps."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COAVS_CACHE", str(tmp_path / "cache"))
    original = config_module.TrainConfig.from_dict.__func__

    def capped(cls, data, overrides=None):
        config = original(cls, data, overrides)
        if config.run.max_steps is not None and config.run.max_steps <= TRAINING_STEPS:
            return config
        return dataclasses.replace(config, run=dataclasses.replace(config.run, max_steps=TRAINING_STEPS))

    monkeypatch.setattr(config_module.TrainConfig, "from_dict", classmethod(capped))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_examples_of_a_document_run_as_written(document, docs_workspace):
    namespace = {"__name__": "__docs__", "torch": torch, "Path": Path, "shutil": shutil}
    for block in blocks(document):
        where = f"{document.relative_to(ROOT)}:{block.line}"
        if block.language not in ("python", "bash", "sh", "shell") or block.marker == "skip":
            continue
        if block.marker == "synopsis":
            check_synopsis(block)
            continue
        if block.given:
            exec(compile(block.given, f"{where} (given)", "exec"), namespace)
        if block.language == "python":
            exec(compile(block.code, where, "exec"), namespace)
        else:
            for words in _commands(block.code):
                run_command(words, where)


def test_skipped_blocks_are_few_and_say_why():
    skipped = [(b.document.relative_to(ROOT).as_posix(), b.line, b.reason) for d in DOCUMENTS for b in blocks(d)
               if b.marker == "skip"]
    assert all(reason for _, _, reason in skipped), skipped
    assert len(skipped) <= MAX_SKIPPED, f"{len(skipped)} skipped doc blocks (at most {MAX_SKIPPED}): {skipped}"


def test_the_parser_of_markers_and_fences(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n<!-- docs-test: skip (needs a GPU) -->\n```bash\ncoavs x\n```\n\n<!-- docs-test: given\n"
                   "a = 1\n-->\n```python\nb = a\n```\n\nplain\n```\ntree\n```\n<!-- docs-test: synopsis -->\n"
                   "```bash\ncoavs eval RUN [--max-clips N]\n```\n")
    found = blocks(doc)
    assert [(b.language, b.marker, b.reason, b.given) for b in found] == [
        ("bash", "skip", "needs a GPU", ""), ("python", None, "", "a = 1\n"), ("", None, "", ""),
        ("bash", "synopsis", "", "")]
    check_synopsis(found[3])
    bad = Block(doc, 1, "bash", "coavs eval RUN --no-such-option")
    with pytest.raises(AssertionError, match="no option --no-such-option"):
        check_synopsis(bad)
    assert _commands("coavs a \\\n  --b c   # note\n\n# only a comment\n") == [["coavs", "a", "--b", "c"]]


def test_the_readme_states_the_paper_preset_sizes():
    from coavs.models import ModelConfig

    paper = ModelConfig.paper()
    text = " ".join((ROOT / "README.md").read_text().split())
    sentence = text.split("`ModelConfig.paper()` has", 1)[1].split(").", 1)[0]
    assert f"D={paper.hidden_dim}" in sentence and f"{paper.num_layers} layers" in sentence
    assert f"{paper.num_heads} heads" in sentence and f"Q = S·d = {paper.queries} queries" in sentence


def test_design_lists_every_command():
    text = (ROOT / "docs" / "design.md").read_text()
    listed = re.search(r"`coavs ([a-z-]+(?: \| [a-z-]+)+)`", text.split("## Command line", 1)[1]).group(1)
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(listed.split(" | ")) == sorted(subparsers.choices)
