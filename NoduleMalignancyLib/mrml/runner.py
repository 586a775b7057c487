"""The analysis runner: start, poll, cancel and debounced re-analysis, without Qt.

Why apart from the widget: this is the code that holds the concurrency (torch on one worker
thread, MRML on the main thread, clicks arriving while a run is busy), and the widget cannot
run outside Slicer. The widget only wires it: a timer calls :meth:`AnalysisRunner.poll` on
the main thread and shows the returned :class:`RunnerUpdate`; point events call
:meth:`AnalysisRunner.point_changed`. The browser station can drive it the same way.

Threads: :meth:`start`, :meth:`poll` and :meth:`point_changed` run on the main thread (they
read and write MRML through the logic); only ``logic.compute`` runs on the executor.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .logic import AnalysisCancelledError, NoduleMalignancyLogic
from .requests import AnalysisOutput, AnalysisRequest

__all__ = ["DEBOUNCE_S", "AnalysisRunner", "RunnerUpdate"]

# Re-analyze this long after the last point change (a drag sends many).
DEBOUNCE_S = 0.5


@dataclass
class RunnerUpdate:
    """What one :meth:`AnalysisRunner.poll` has to show."""

    running: bool
    fraction: float = 0.0
    message: str = ""
    log: list[str] = field(default_factory=list)  # messages from the worker since the last poll
    started: bool = False  # this poll started a pending (debounced) analysis
    output: AnalysisOutput | None = None  # a run finished and its nodes were written
    error: Exception | None = None  # ... or it failed: InputError, cancelled, or a bug
    cancelled: bool = False  # the error is a cancellation (nothing was changed)


class AnalysisRunner:
    """One analysis at a time on one persistent worker; changes while busy are kept pending.

    :param logic: the MRML logic (``prepare`` / ``compute`` / ``apply``).
    :param inputs: called on the main thread when a pending analysis starts; returns the
        current (volume node, markups node, device name) as the UI shows them.
    :param executor: runs ``logic.compute``; default one worker thread, made once, so the
        per-thread CUDA/cuDNN state stays warm (tests pass an executor they step by hand).
    :param clock: monotonic seconds (tests pass a fake one for the debounce).
    :param notify: called (on the worker thread) when a run ends, so that a UI with its own
        event loop polls at once instead of at its next tick (the station: issue 29, click to
        overlay); the Qt widget's timer needs none.
    """

    def __init__(
        self,
        logic: NoduleMalignancyLogic,
        inputs: Callable[[], tuple[object, object, str]],
        executor: concurrent.futures.Executor | None = None,
        debounce_s: float = DEBOUNCE_S,
        clock: Callable[[], float] = time.monotonic,
        notify: Callable[[], None] | None = None,
    ):
        self.logic = logic
        self.notify = notify
        self._inputs = inputs
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="NoduleMalignancy"
        )
        self._debounce_s = debounce_s
        self._clock = clock
        self._future: concurrent.futures.Future | None = None
        self._request: AnalysisRequest | None = None
        self._cancel: threading.Event | None = None
        self._progress: tuple[float, str] = (0.0, "")
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        self._pending: set[str] = set()
        self._due: float | None = None

    # State -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._future is not None

    @property
    def pending(self) -> set[str]:
        """Control point IDs waiting to be analyzed."""
        return set(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing running and nothing pending: the widget may stop polling."""
        return not self.running and not self._pending

    # Commands (main thread) --------------------------------------------------------------------
    def start(self, volume, markups, point_index=None, device: str = "auto") -> bool:
        """Prepare and submit an analysis; ``False`` when one is already running.

        :raises InputError: from the logic, before anything is submitted (nothing changes).
        """
        if self.running:
            return False
        self.logic.resolveDevice(device)
        request = self.logic.prepare(volume, markups, point_index)
        self._request = request
        self._cancel = threading.Event()
        self._progress = (0.0, "Starting")
        self._future = self._executor.submit(
            self.logic.compute, request, device, self._on_progress, self._on_log, self._cancel
        )
        if self.notify is not None:
            self._future.add_done_callback(lambda _future: self.notify())
        return True

    def cancel(self) -> None:
        """Ask the running analysis to stop; its outcome (cancelled) arrives through poll."""
        if self._cancel is not None:
            self._cancel.set()

    def point_changed(self, point_id: str, debounce: bool = True) -> None:
        """A point was placed or moved: analyze it :data:`DEBOUNCE_S` after the last change
        (``debounce=False``: at the next poll; a single click needs no wait, a drag does)."""
        self._pending.add(point_id)
        due = self._clock() + (self._debounce_s if debounce else 0.0)
        self._due = due if debounce else min(due, self._due or due)

    def clear_pending(self) -> None:
        self._pending.clear()
        self._due = None

    def shutdown(self) -> None:
        self.cancel()
        self.clear_pending()
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # Poll (main thread) ------------------------------------------------------------------------
    def poll(self) -> RunnerUpdate:
        """Collect progress; apply a finished run to MRML; start a due pending analysis."""
        with self._log_lock:
            log, self._log = self._log, []
        fraction, message = self._progress
        update = RunnerUpdate(running=self.running, fraction=fraction, message=message, log=log)
        future = self._future
        if future is not None and future.done():
            request, cancel = self._request, self._cancel
            self._future = self._request = self._cancel = None
            update.running = False
            try:
                update.output = self.logic.apply(request, future.result(), cancel)
            except Exception as exc:
                update.error = exc
                update.cancelled = isinstance(exc, AnalysisCancelledError)
        if not self.running and self._pending and self._clock() >= (self._due or 0.0):
            update.started = self._start_pending(update)
            update.running = self.running
        return update

    def _start_pending(self, update: RunnerUpdate) -> bool:
        volume, markups, device = self._inputs()
        ids, self._pending = self._pending, set()
        self._due = None
        if markups is None:
            return False
        indices = sorted(i for i in (markups.GetControlPointIndexByID(p) for p in ids) if i >= 0)
        if not indices:
            return False
        try:
            return self.start(volume, markups, indices, device)
        except Exception as exc:
            update.error = exc
            return False

    # Worker callbacks (worker thread) ----------------------------------------------------------
    def _on_progress(self, fraction: float, message: str) -> None:
        self._progress = (fraction, message)  # one atomic assignment

    def _on_log(self, message: str) -> None:
        with self._log_lock:
            self._log.append(message)
