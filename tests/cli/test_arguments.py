"""One error rule for arguments (issue 24, issue 25 item 6): every mistake argparse catches and every bad count,
fraction, non-finite number or device name is one ``coavs <command>: error: ...`` line and exit code 1, on every
command that takes the option — found by walking the parser, so commands added later are checked too."""

from __future__ import annotations

import argparse

import pytest

from coavs.analysis.ablate import all_variants
from coavs.arguments import NAME_RULES, OPTION_RULES, option_name
from coavs.cli import build_parser, main
from tests.support.cli import assert_one_line_error, run_cli


def _commands(parser: argparse.ArgumentParser, prefix=()):
    """``(command words, parser)`` of every leaf command (``analyze area`` included)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, sub in subparsers[0].choices.items():
        yield from _commands(sub, prefix + (name,))


def _minimal_argv(words, parser) -> list[str]:
    """The command with every required argument given a placeholder (a path that does not exist, or 1)."""
    argv = list(words)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
            continue
        if not action.option_strings and action.nargs not in ("?", "*"):
            argv.append("/nonexistent/placeholder")
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], "1" if action.type in (int, float) else "/nonexistent/placeholder"]
    return argv


COMMANDS = list(_commands(build_parser()))
# (command, option dest, bad value) for every option a rule covers, on every command that has it.
COUNT_CASES = [(words, action.dest, bad) for words, parser in COMMANDS for action in parser._actions
               if action.dest in OPTION_RULES and action.option_strings and action.type in (int, float)
               for bad in (["-1", "0"] if OPTION_RULES[action.dest](0) else ["-1"])]
FLOAT_CASES = [(words, action.dest) for words, parser in COMMANDS for action in parser._actions
               if action.type is float and action.option_strings]
DEVICE_CASES = [words for words, parser in COMMANDS for action in parser._actions if action.dest in NAME_RULES]


def _option(parser, dest):
    return next(a.option_strings[0] for a in parser._actions if a.dest == dest and a.option_strings)


def test_the_parser_walk_finds_the_commands_and_options():
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"eval", "gate", "verify", "predict", "analyze area", "ablate", "demo"} <= names
    covered = {(" ".join(w), d) for w, d, _ in COUNT_CASES}
    assert {("eval", "max_clips"), ("gate", "max_clips"), ("verify", "limit"), ("ablate", "max_clips"),
            ("analyze semantics", "max_clips"), ("demo", "seeds")} <= covered
    assert {("eval",), ("gate",), ("predict",), ("analyze", "queries"), ("ablate",)} <= set(DEVICE_CASES)


@pytest.mark.parametrize("words, dest, bad", COUNT_CASES, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_counts_and_ranges_are_refused_on_every_command(words, dest, bad, capsys):
    parser = dict(COMMANDS)[words]
    code, _, err = run_cli(_minimal_argv(words, parser) + [f"{_option(parser, dest)}={bad}"], capsys)
    assert_one_line_error(code, err, option_name(dest))


@pytest.mark.parametrize("words, dest", FLOAT_CASES, ids=lambda x: x if isinstance(x, str) else " ".join(x))
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_on_every_command(words, dest, bad, capsys):
    parser = dict(COMMANDS)[words]
    code, _, err = run_cli(_minimal_argv(words, parser) + [f"{_option(parser, dest)}={bad}"], capsys)
    assert_one_line_error(code, err, option_name(dest), "finite")


@pytest.mark.parametrize("words", DEVICE_CASES, ids=" ".join)
@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cpu:0", ""])
def test_every_device_option_refuses_a_name_that_is_no_device(words, bad, capsys):
    parser = dict(COMMANDS)[words]
    code, _, err = run_cli(_minimal_argv(words, parser) + [f"--device={bad}"], capsys)
    assert_one_line_error(code, err, "--device", "is not a device")


@pytest.mark.parametrize("argv, fragment", [
    (["gate", "RUN", "--split", "test"], "invalid choice: 'test'"),
    (["eval", "RUN", "--max-clips", "two"], "invalid int value: 'two'"),
    (["eval", "RUN", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["synth"], "the following arguments are required: out"),
    (["predict", "RUN"], "the following arguments are required: --out"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
    (["analyze", "volume", "RUN"], "invalid choice: 'volume'"),
])
def test_argparse_mistakes_are_one_line_and_exit_1(argv, fragment, capsys):
    code, out, err = run_cli(argv, capsys)
    line = assert_one_line_error(code, err, fragment)
    assert "usage:" not in err and not out
    assert line.startswith("coavs")


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0 and "usage: coavs eval" in capsys.readouterr().out


def test_demo_help_lists_the_seeds_and_models_of_python_m_coavs_demo(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "--seeds" in text and "--models" in text and "--no-progress" in text


def test_ablate_help_lists_every_variant(capsys):
    with pytest.raises(SystemExit):
        main(["ablate", "--help"])
    text = capsys.readouterr().out.split()  # argparse wraps at spaces; a group's names have none
    groups: dict[str, list[str]] = {}
    for variant in all_variants():
        group, _, name = variant.name.partition("/")
        groups.setdefault(group, []).append(name)
    for group, names in groups.items():
        token = group if names == [""] else f"{group}/{'|'.join(names)}"
        assert any(word.rstrip(";.") == token for word in text), token
