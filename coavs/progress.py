"""Progress on stderr that suits where stderr goes: a tqdm bar on a terminal, and in a log file or a pipe a plain
line every ``every`` steps (a bar there is hundreds of carriage-return redraws on one line).

    bar = progress_bar(total=160, desc="train", unit="step", every=10)
    bar.set_postfix(loss="0.123"); bar.update(1)
    bar.close()
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class PlainProgress:
    """The part of tqdm's interface coavs uses (``update``, ``set_postfix``, ``close``, ``write``), printing
    ``desc: 40/160 step (25%), 3.1 step/s, loss=0.123`` lines: one every ``every`` updates and one at the end."""

    def __init__(self, total: int | None, initial: int = 0, desc: str = "", unit: str = "it", every: int = 10,
                 file=None):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.every = max(1, int(every))
        self.file = file
        self.postfix: dict = {}
        self._shown = initial
        self._start, self._start_n = time.perf_counter(), initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self._shown >= self.every or (self.total is not None and self.n >= self.total):
            self._show()

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def close(self) -> None:
        if self.n != self._shown:
            self._show()

    def _show(self) -> None:
        self._shown = self.n
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        elapsed = time.perf_counter() - self._start
        if elapsed > 0 and self.n > self._start_n:
            parts.append(f"{(self.n - self._start_n) / elapsed:.2f} {self.unit}/s")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        self.write(f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts), file=self.file)

    @staticmethod
    def write(message: str, file=None) -> None:
        print(message, file=file or sys.stderr, flush=True)

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def progress_bar(total: int | None, *, desc: str = "", unit: str = "it", initial: int = 0, every: int | None = None,
                 disable: bool = False, **tqdm_kwargs):
    """A tqdm bar when stderr is a terminal, else a :class:`PlainProgress` printing every ``every`` updates
    (default: every 5% of ``total``); ``disable``: one that shows nothing."""
    if disable or stderr_is_terminal():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, **tqdm_kwargs)
    if every is None:
        every = max(1, (total or 0) // 20)
    return PlainProgress(total, initial=initial, desc=desc, unit=unit, every=every)


def write(message: str) -> None:
    """A line on stdout that does not break a tqdm bar drawn on a terminal's stderr."""
    if stderr_is_terminal():
        tqdm.write(message)
    else:
        print(message, flush=True)


__all__ = ["PlainProgress", "progress_bar", "stderr_is_terminal", "write"]
