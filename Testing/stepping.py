"""Hand-stepped time for the analysis runner's tests (runner, browser station): an executor
that runs one queued job when told, and a clock that moves only when a test moves it."""

from __future__ import annotations

import concurrent.futures


class SteppedExecutor(concurrent.futures.Executor):
    """Queues submitted jobs; :meth:`run_next` runs one (on the calling thread)."""

    def __init__(self):
        self.jobs: list = []

    def submit(self, fn, *args, **kwargs):
        future = concurrent.futures.Future()
        self.jobs.append((future, fn, args, kwargs))
        return future

    def run_next(self) -> None:
        future, fn, args, kwargs = self.jobs.pop(0)
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
