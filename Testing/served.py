"""A server the tests start as a child process (the station, ``study serve``) and stop again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def served(command: list[str], ready: str, timeout_s: float = 180.0, stop=signal.SIGTERM):
    """Run ``command`` from the repository root; yield its output lines once one contains
    ``ready`` (fail at once if it exits first); on exit send ``stop`` and wait for it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if ready in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout_s
        while not started.wait(0.5) and process.poll() is None and time.monotonic() < deadline:
            pass
        if not started.is_set() or process.poll() is not None:
            pytest.fail(f"{command[3:5]} did not start:\n" + "".join(lines[-40:]), pytrace=False)
        yield lines
    finally:
        process.send_signal(stop)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
