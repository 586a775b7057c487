"""Ports for the station and the ``study serve`` front: a free one, or why one cannot be used.

Why checked before anything starts: a busy port used to show up as a traceback after the
station had printed its address (issue 28); the check names the port and what to do, and the
server's own bind error is still caught (another process may take the port in between).
"""

from __future__ import annotations

import errno
import socket

__all__ = ["free_port", "port_problem"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the system says is free on ``host`` now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served now (a message for the user), or ``None``."""
    if not 0 < port < 65536:
        return f"port {port}: use 1-65535 (or 0 for any free port)"
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        return bind_message(host, port, exc)
    return None


def bind_message(host: str, port: int, exc: OSError) -> str:
    """The user's message for a failed bind."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use by another program: choose another with --port"
    if exc.errno == errno.EACCES:
        return f"port {port} on {host} needs privileges: use a port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine (--host)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
