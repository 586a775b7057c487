"""A per-row time limit for the batch paths: a row that runs too long fails, the run goes on.

Why: one input that never finishes (a reader stuck on a file, a pathological CT) must not hold
a cohort forever (issue 28 finding 10). ``predict --row-timeout SECONDS`` (default
:data:`DEFAULT_ROW_TIMEOUT_S`; 0 turns it off) bounds the reading of each CT and the analysis of
each row; a row over the limit gets its reason in ``error`` and the next row starts.

How: a real-time interval timer (``SIGALRM``) raises :class:`RowTimeoutError` in the running
Python code. Signals reach only a process's main thread, so the limit holds for runs in the
calling process; inside a Dask worker's task thread it is not enforced (docs/DESIGN.md §13).
A single C call (one SimpleITK read) finishes before the error is raised; the inputs that
block forever (pipes, devices) are refused before any read (files/ct_input.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from ..core.errors import NoduleMalignancyError

__all__ = ["DEFAULT_ROW_TIMEOUT_S", "RowTimeoutError", "row_deadline"]

# Ten minutes: about a thousand times a warm click on two CPU cores (README: performance),
# and far above reading a full CT; a row still running then is stuck, not slow.
DEFAULT_ROW_TIMEOUT_S = 600.0


class RowTimeoutError(NoduleMalignancyError, TimeoutError):
    """A row (or the reading of its CT) ran longer than the row timeout."""


def _enforceable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def row_deadline(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`RowTimeoutError` naming ``what`` if the block runs past ``seconds``.

    ``None`` or ``0``: no limit; off the main thread: no limit (see the module docstring).
    The previous ``SIGALRM`` handler and timer are restored on exit.
    """
    if not seconds or seconds <= 0 or not _enforceable():
        yield
        return

    def expire(signum, frame):
        raise RowTimeoutError(
            f"{what} took longer than the row timeout ({seconds:g} s; --row-timeout)"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
