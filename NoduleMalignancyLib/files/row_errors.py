"""Per-row failures of the batch paths: the message for the row, the traceback for a log file.

Why: one bad CT or point never stops a cohort (docs/DESIGN.md §13), so a failure becomes a
row's ``error`` cell. An expected error (core/errors.py: a refusal, an unreadable CT) needs
only its message there; anything else is a bug whose traceback would be lost in a one-line
cell, so it goes to a log file beside the output, named in the run's summary line.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from ..core.atomic import atomic_path
from ..core.errors import is_expected

__all__ = [
    "TRACEBACK_KEY",
    "failure_log_path",
    "failure_message",
    "failure_traceback",
    "row_failure",
    "write_failure_log",
]

# Key of a failed row's traceback in the row dicts (CSV writers ignore keys they do not list).
TRACEBACK_KEY = "_traceback"


def failure_message(exc: BaseException) -> str:
    """The one-line ``error`` cell: the message of an expected error; the type and message of
    anything else (its traceback: :func:`failure_traceback`)."""
    text = str(exc) if is_expected(exc) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split("\n"))


def failure_traceback(exc: BaseException) -> str | None:
    """The traceback of an unexpected error (a bug); ``None`` for an expected one."""
    if is_expected(exc):
        return None
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def row_failure(exc: BaseException, prefix: str = "") -> dict:
    """The cells of a failed row: ``error`` (``prefix`` + :func:`failure_message`) and, for a
    bug, its traceback under :data:`TRACEBACK_KEY` (for :func:`write_failure_log`)."""
    cells = {"error": prefix + failure_message(exc)}
    trace = failure_traceback(exc)
    if trace:
        cells[TRACEBACK_KEY] = trace
    return cells


def failure_log_path(output: str | Path) -> Path:
    """The log beside an output: ``<name>.errors.log`` beside a file, ``errors.log`` in a
    folder."""
    output = Path(output)
    if output.is_dir():
        return output / "errors.log"
    return output.with_suffix(".errors.log")


def write_failure_log(path: str | Path, rows: list[dict], id_key: str = "id") -> Path | None:
    """Take the tracebacks out of ``rows`` (:data:`TRACEBACK_KEY`) and write them to ``path``,
    one entry per distinct traceback with the ids of its rows; ``None`` when no row has one
    (and a previous run's log there is removed, so it cannot be mistaken for this run's)."""
    by_trace: dict[str, list[str]] = {}
    for row in rows:
        trace = row.pop(TRACEBACK_KEY, None)
        if trace:
            by_trace.setdefault(trace, []).append(str(row.get(id_key, "")))
    if not by_trace:
        Path(path).unlink(missing_ok=True)
        return None
    with atomic_path(path) as tmp:
        tmp.write_text(
            "".join(f"rows {', '.join(ids)}:\n{trace}\n" for trace, ids in by_trace.items()),
            encoding="utf-8",
        )
    return Path(path)
