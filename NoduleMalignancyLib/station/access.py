"""Who may talk to a station process: its websocket secret and the pages' origins.

Why (docs/DESIGN.md §15): a station's page drives the study store through a websocket, and a
browser lets any page it shows open a websocket to 127.0.0.1, as any local process can. trame
uses wslink's fixed default secret (``wslink-secret``) and checks no Origin, so this module
gives every station process its own random secret (the browser gets it in the address the
owner or the ``study serve`` front hands out; trame's client reads ``?secret=`` and removes it
from the address bar) and refuses a websocket upgrade whose ``Origin`` is not the station's own
address (or the front's). Every wslink call, ``trame.state.get`` and ``trame.trigger`` included,
needs the secret: wslink refuses every method of a connection that did not pass ``hello``.

:func:`current_client` names the connection whose call is running, so a study page can bind a
signed-in reader to one connection and refuse the calls of any other.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from urllib.parse import urlencode

__all__ = [
    "StationAccess",
    "current_client",
    "install_access",
    "local_origins",
    "new_secret",
    "station_address",
]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def new_secret() -> str:
    """A 256-bit URL-safe random secret (one per station process)."""
    return secrets.token_urlsafe(32)


def local_origins(host: str, port: int) -> set[str]:
    """The origins of pages a station on ``host:port`` serves itself (loopback spellings too)."""
    names = {host, *LOOPBACK_NAMES} if host in (*LOOPBACK_NAMES, "0.0.0.0", "::") else {host}
    return {f"http://{name}:{port}" for name in names}


def station_address(host: str, port: int, secret: str, path: str = "/") -> str:
    """The page's address with the secret (what the station prints for its owner)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}{path}?{urlencode({'secret': secret})}"


class StationAccess:
    """The secret and the allowed origins of one station process.

    :param secret: the websocket secret (default: a new random one).
    :param origins: the origins whose pages may open the websocket.
    """

    def __init__(self, secret: str | None = None, origins: Iterable[str] = ()):
        self.secret = secret or new_secret()
        self.origins = set(origins)

    def origin_allowed(self, origin: str | None) -> bool:
        """Only a listed origin: a browser always sends one with a websocket upgrade."""
        return bool(origin) and origin.rstrip("/") in self.origins

    def secret_matches(self, candidate) -> bool:
        return isinstance(candidate, str) and hmac.compare_digest(
            candidate.encode("utf-8"), self.secret.encode("utf-8")
        )


def install_access(server, access: StationAccess, ws_path: str = "/ws") -> None:
    """Make a trame server check ``access`` (call before ``server.start``)."""
    from aiohttp import web
    from wslink.websocket import LinkProtocol

    class _SecretCheck(LinkProtocol):
        async def validateToken(self, token, client_id):  # noqa: N802 (wslink's name)
            return access.secret_matches(token)

    @web.middleware
    async def origin_check(request, handler):
        if request.path == ws_path and not access.origin_allowed(request.headers.get("Origin")):
            raise web.HTTPForbidden(text="websocket refused: this page's origin is not allowed")
        return await handler(request)

    server.add_protocol_to_configure(lambda root: root.registerLinkProtocol(_SecretCheck()))
    server.controller.on_server_bind.add(
        lambda web_server: web_server.app.middlewares.append(origin_check)
    )


def current_client(server) -> str | None:
    """The id of the websocket connection whose call is running (wslink records it before it
    calls a method; trame's triggers run inside that call)."""
    web_server = getattr(server, "_server", None)
    return getattr(web_server, "last_active_client_id", None)
