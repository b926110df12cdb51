"""The command line's rules for arguments, shared by every ``coavs`` command (``coavs/cli.py``,
``coavs/analysis/commands.py``, ``python -m coavs.demo`` and any command added later):

- :class:`ArgumentParser` (argparse's, used for every parser and subparser): a mistake argparse catches — an
  unknown option, a bad choice, a missing argument, a value of the wrong type — is one line
  ``coavs <command>: error: <message>`` and exit code 1, like every other user mistake (not a usage block and
  exit code 2).
- :func:`check_arguments`, run on every parsed command before it starts: every number must be finite (``nan``
  and ``inf`` parse as floats), and options are checked by name, whatever command declares them
  (:data:`OPTION_RULES`): counts such as ``--max-clips``, ``--limit``, ``--batch-size``, ``--workers``,
  ``--steps`` or ``--seeds`` must be >= 1 (a negative count would be a Python slice that silently drops clips;
  zero would average nothing), fractions must lie in their range, ``--device`` must name a device. A new command
  that reuses an option name gets its rule for free; a new kind of option adds a line to the table.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from coavs.devices import DEVICE_NAMES, check_device_name
from coavs.errors import EXIT_USER_ERROR, UserError, one_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line on stderr and exit code :data:`EXIT_USER_ERROR` (subparsers
    made by ``add_subparsers`` are of this class too)."""

    def error(self, message: str):  # argparse's hook for every parsing mistake
        print(f"{self.prog}: error: {one_line(message)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _count(value) -> str | None:
    return None if value >= 1 else "must be >= 1"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _probability(value) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be in [0, 1]"


def _open_fraction(value) -> str | None:
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def _kept_share(value) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def _device(value) -> str | None:
    try:
        check_device_name(value)
    except UserError:
        return f"is not a device: use {DEVICE_NAMES}"
    return None


# Option (argparse dest) -> check of a number (or, for --device, a name) returning None or what is wrong. Applied to
# every command that has the option.
OPTION_RULES: dict[str, Callable[[object], str | None]] = {
    **dict.fromkeys(("max_clips", "limit", "batch_size", "workers", "steps", "seeds", "clusters", "iters",
                     "max_steps", "examples", "max_markers", "clips", "frames", "size", "sample_rate"), _count),
    **dict.fromkeys(("seed", "max_problems", "alpha"), _non_negative),
    **dict.fromkeys(("silent_prob", "eval_silent_prob"), _probability),
    "min_instance_fraction": _open_fraction,
    "keep": _kept_share,
}
NAME_RULES: dict[str, Callable[[str], str | None]] = {"device": _device}


def option_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_arguments(args: argparse.Namespace) -> None:
    """Raises :class:`UserError` for the first argument that breaks a rule (see the module docstring)."""
    for dest, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool) or item is None:
                continue
            if isinstance(item, float) and not math.isfinite(item):
                raise UserError(f"{option_name(dest)} must be a finite number, got {item}")
            if isinstance(item, (int, float)) and dest in OPTION_RULES:
                problem = OPTION_RULES[dest](item)
                if problem:
                    raise UserError(f"{option_name(dest)} {problem}, got {item}")
            if isinstance(item, str) and dest in NAME_RULES:
                problem = NAME_RULES[dest](item)
                if problem:
                    raise UserError(f"{option_name(dest)} {item!r} {problem}")


__all__ = ["NAME_RULES", "OPTION_RULES", "ArgumentParser", "check_arguments", "option_name"]
