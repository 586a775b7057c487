"""One reader's station process, started by ``study serve`` (docs/DESIGN.md §15).

Why a process per reader: trame keeps one state per server, shared by every connection, so two
readers in one process would see (and could act in) each other's reading. The front
(``station/serve.py``) starts this module with its settings on stdin (never on the command line,
where ``ps`` shows them): the database, the reader's token, the websocket secret and the port
on 127.0.0.1. Its websocket takes only its own origin: the front's proxy connects as that, a page
of any other origin (the front's included) cannot connect directly. The station signs the
reader in at once and serves only them. It stops when the front's end of stdin closes (the
front stopped or was killed), so no station outlives its front.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

__all__ = ["main"]

READY = "reading station on"  # the line the front waits for (station/cli.py prints it)


def main() -> int:
    settings = json.loads(sys.stdin.readline())
    from .access import StationAccess
    from .cli import serve
    from .study_app import StudyStationApp

    try:
        app = StudyStationApp(
            None,
            settings["db"],
            reader_token=settings["token"],
            models_dir=settings.get("models"),
            device=settings.get("device", "auto"),
        )
    except PermissionError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    threading.Thread(target=_stop_with_front, name="front-watch", daemon=True).start()
    access = StationAccess(settings["secret"])
    return serve(app, "127.0.0.1", int(settings["port"]), access)


def _stop_with_front() -> None:
    """Block until the front's end of stdin closes, then stop gracefully (SIGTERM to self)."""
    while sys.stdin.readline():
        pass
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
