"""Formula-safe CSV cells: the one writer (and reader) of every CSV the project makes.

A spreadsheet runs a text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return as a formula (``=HYPERLINK(...)`` in a reader comment, ``=cmd|...`` in a manifest id).
Such a text cell is written with a leading ``'``, which spreadsheets show as text and the
project's own readers (:func:`read_csv`, :func:`plain_text`) remove again. Numbers stay numbers,
negative ones included: an ``int``/``float`` or a text that is a plain decimal number (``-12.5``,
``1e-3``) is written as it is. A text that already begins with ``'`` before a trigger gets one
more ``'``, so reading back always gives the text that was written (docs/DESIGN.md §13).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..core.atomic import atomic_path

__all__ = [
    "FORMULA_TRIGGERS",
    "formula_safe",
    "plain_text",
    "read_csv",
    "write_csv",
    "write_rows",
]

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _needs_quote(text: str) -> bool:
    """A trigger first, after any run of ``'`` (those are escapes the reader would remove)."""
    return text.lstrip("'").startswith(FORMULA_TRIGGERS) and not _NUMBER.fullmatch(text)


def formula_safe(value):
    """``value`` as a cell a spreadsheet shows as written: text that would run gets a ``'``."""
    if isinstance(value, str) and _needs_quote(value):
        return "'" + value
    return value


def plain_text(cell: str) -> str:
    """The text :func:`formula_safe` was given (the inverse on every text it writes)."""
    if cell.startswith("'") and _needs_quote(cell[1:]):
        return cell[1:]
    return cell


def write_rows(writer: csv.writer, rows: Iterable[Sequence]) -> None:
    """Rows of cells through a ``csv.writer``, every cell formula-safe."""
    for row in rows:
        writer.writerow([formula_safe(v) for v in row])


def write_csv(
    path: str | os.PathLike,
    rows: Iterable[dict],
    columns: Sequence[str],
    format_value: Callable = lambda v: v,
) -> Path:
    """Rows as CSV with these columns (missing cells empty, extra keys ignored), atomically.

    ``format_value`` turns each value into its cell (e.g. a float to ``6g``); the cell is then
    made formula-safe. The columns are the project's own names (never a formula).
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: formula_safe(format_value(v)) for k, v in row.items()})
    return Path(path)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """A CSV with a header as dicts, the ``'`` that :func:`write_csv` added removed."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [plain_text(c) for c in reader.fieldnames or []]
        return [
            {k: plain_text(v) if isinstance(v, str) else v for k, v in row.items()}
            for row in reader
        ]
