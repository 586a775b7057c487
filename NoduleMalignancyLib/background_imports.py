"""Import modules in a thread while the caller reads a CT (a cold ``analyze``, issue 27).

Why: torch and the analysis modules take longer to import than the CT takes to read, and the
read spends its time in zlib and SimpleITK, which release the GIL; on two cores the two
overlap. The thread imports every module itself, in the order given, so the caller never
imports one of them concurrently (no import-lock cycle between the threads): it waits for a
module with :meth:`BackgroundImports.module`. While it runs, the GIL changes hands every
millisecond instead of Python's 5 (:data:`SWITCH_INTERVAL_S`): the reading thread gets it back
sooner after each of its C calls (a cold ``analyze``: about 0.1 s sooner).
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

__all__ = ["SWITCH_INTERVAL_S", "BackgroundImports"]

SWITCH_INTERVAL_S = 0.001


class BackgroundImports:
    """``modules`` (names relative to ``package`` where they start with a dot) imported in a
    daemon thread, one after the other, from construction on."""

    def __init__(self, modules: tuple[str, ...], package: str | None = None) -> None:
        self._names = tuple(modules)
        self._package = package
        self._loaded: dict[str, ModuleType] = {}
        self._ready = {name: threading.Event() for name in self._names}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="background-imports", daemon=True)
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._interval, SWITCH_INTERVAL_S))
        self._thread.start()

    def _run(self) -> None:
        try:
            for name in self._names:
                self._loaded[name] = importlib.import_module(name, self._package)
                self._ready[name].set()
        except BaseException as exc:  # re-raised in the caller's thread by module()/wait()
            self._error = exc
        finally:
            sys.setswitchinterval(self._interval)
            for event in self._ready.values():  # nobody waits forever on a failed import
                event.set()

    def module(self, name: str) -> ModuleType:
        """The module once the thread has imported it; the thread's error if it failed."""
        self._ready[name].wait()
        if name not in self._loaded:
            self._raise()
        return self._loaded[name]

    def wait(self) -> None:
        """Until every module is imported; the thread's error if one failed."""
        self._thread.join()
        if self._error is not None:
            self._raise()

    def close(self) -> None:
        """Until the thread is done, errors ignored (the caller is failing already)."""
        self._thread.join()

    def _raise(self) -> None:
        raise self._error or ImportError(f"not imported: {self._names}")
