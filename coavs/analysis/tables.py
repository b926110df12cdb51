"""CSV and Markdown tables of the analyses. CSV floats are written at full precision (Python's shortest
round-trip form), so a number read back equals the metric that produced it."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def write_csv(rows: list[dict], path: str | Path, columns: list[str] | None = None) -> Path:
    """Rows (dicts) as a CSV with a header; ``columns`` fixes the order (default: keys in first-seen order).
    Missing values are written empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="", extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str | Path) -> list[dict]:
    """A CSV as a list of dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fmt(value, digits: int = 1, percent: bool = True) -> str:
    """A metric for a Markdown table: ``0.4567`` → ``45.7`` (percent) ; NaN/None → ``–``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str):
        return value
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A GitHub Markdown table; ``align`` per column ``"l"`` or ``"r"`` (default: first left, others right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
