"""A per-row time limit for the batch paths: a row that runs too long fails, the run goes on.

Why: one input that never finishes (a reader stuck on a file, a pathological CT) must not hold
a cohort forever (issue 28 finding 10). ``predict --row-timeout SECONDS`` (default
:data:`DEFAULT_ROW_TIMEOUT_S`; 0 turns it off) bounds the reading of each CT and the analysis of
each row; a row over the limit gets its reason in ``error`` and the next row starts.

How: in a process's main thread (local ``predict``, ``export``, ``luna25``) a real-time interval
timer (``SIGALRM``) raises :class:`RowTimeoutError` in the running code, also in a sleep or a
blocking read. Signals reach only the main thread, so in any other thread (a Dask worker runs
its tasks in one) a timer thread raises it there with ``PyThreadState_SetAsyncExc``: the thread
sees it at its next Python instruction, so one long C call (a SimpleITK read, a torch operation,
a sleep) finishes first; the row still fails and the worker is free for the next task. The
inputs that block forever (pipes, devices) are refused before any read (files/ct_input.py).
"""

from __future__ import annotations

import contextlib
import ctypes
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


class _Expired(BaseException):
    """What the timer thread raises in a worker thread (the C API takes a class, no message);
    turned into :class:`RowTimeoutError` at the deadline's block. A ``BaseException``, so the
    row's own ``except Exception`` cannot swallow it without its message."""


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Schedule ``exc_type`` in the thread (``None``: withdraw one not yet raised)."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


@contextlib.contextmanager
def row_deadline(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`RowTimeoutError` naming ``what`` if the block runs past ``seconds``.

    ``None`` or ``0``: no limit. In the main thread a ``SIGALRM`` timer (the previous handler
    and timer restored on exit), in any other a timer thread (see the module docstring).
    """
    if not seconds or seconds <= 0:
        yield
        return
    message = f"{what} took longer than the row timeout ({seconds:g} s; --row-timeout)"
    in_main = threading.current_thread() is threading.main_thread()
    deadline = _alarm if in_main and hasattr(signal, "setitimer") else _thread_timer
    with deadline(float(seconds), message):
        yield


@contextlib.contextmanager
def _alarm(seconds: float, message: str) -> Iterator[None]:
    def expire(signum, frame):
        raise RowTimeoutError(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _thread_timer(seconds: float, message: str) -> Iterator[None]:
    thread_id, lock = threading.get_ident(), threading.Lock()
    state = {"open": True, "fired": False}

    def expire() -> None:
        with lock:  # never after the block has left
            if state["open"]:
                state["fired"] = True
                _raise_in(thread_id, _Expired)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except _Expired:
        raise RowTimeoutError(message) from None
    finally:
        timer.cancel()
        with lock:
            state["open"] = False
            if state["fired"]:  # raised already (a no-op then) or still pending: withdrawn
                _raise_in(thread_id, None)
