"""The one user-error type of coavs, at the bottom of the package (it imports nothing from coavs).

A :class:`UserError` is a mistake in what the user asked for or gave us (a path, a value, a file's contents): the
command line prints its message as one line, ``coavs <command>: error: <message>``, and exits with
:data:`EXIT_USER_ERROR`. Every layer (data, training, eval, analysis) raises it or a subclass of it
(:class:`coavs.data.errors.DataError`, :class:`coavs.training.config.ConfigError`); only ``coavs.cli.main``
turns it into that line.
"""

from __future__ import annotations

EXIT_USER_ERROR = 1


class UserError(ValueError):
    """A mistake in what the user asked for; its message is shown as one line (newlines are folded)."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (worker_message(args[0]),)
        super().__init__(*args)


class ConfigError(UserError):
    """A config file or value that cannot be used; the message names the key (also importable from
    :mod:`coavs.training.config`)."""


def worker_message(text: str) -> str:
    """The original message of an error that a DataLoader worker raised: torch re-raises it in the main process
    as ``type("Caught X in DataLoader worker process N.\nOriginal Traceback ...\nmodule.X: message")``; the
    user gets ``message``. Other text is returned as it is."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    _, sep, message = last.partition(": ")
    return message if sep else last


def one_line(message: object) -> str:
    """``message`` as a single line: its lines stripped and joined with ``"; "`` (YAML and pickle errors span
    several lines)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines)


__all__ = ["EXIT_USER_ERROR", "ConfigError", "UserError", "one_line", "worker_message"]
