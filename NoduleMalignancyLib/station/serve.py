"""``nodule-malignancy study serve``: one address for a whole reading study (docs/DESIGN.md §15).

Why a front and one station process per reader: trame keeps one state per server, shared by
every connection, so a station can serve one reader only. The front is the ParaViewWeb/trame
launcher pattern: a reader signs in at the front (their link's ``?token=`` shows "Sign in as
<reader>", a POST from the front's own page signs in: ``front_pages.py``; or the form), the
front checks the token against the store, starts a station process for that reader
(``station/reader_station.py``) on a private 127.0.0.1 port with its own websocket secret, and
proxies the reader's page and websocket to it under ``/r/<session>/``.

Who may reach a station: only the browser that signed in (an HttpOnly, SameSite=Strict cookie
scoped to its ``/r/<session>/`` path, checked on every request) from a page of the front's own
origin (the websocket's ``Origin``); a process that bypasses the front must also know that
station's secret. A reader who signs in again (another tab, another browser) replaces their
session: the old one's station stops. A station that died (killed, crashed) is started again on
the reader's next request with the same secret: every rating it acknowledged is in the database
(the store commits before it answers), and the reader resumes at their next step; a token
revoked or reset meanwhile gets a page that says so (403), a station that will not start one
that says why (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import ClientError, ClientSession, WSMsgType, web

from ..study.store import StudyStore
from .access import local_origins
from .front_pages import confirm_page, message_page, sign_in_page
from .ports import free_port
from .reader_station import READY

__all__ = ["ReaderSession", "StudyFront", "run_front"]

START_TIMEOUT_S = 300.0  # a station loads Slicer's runtime and the ensemble (tens of seconds)
COOKIE = "nm_reader"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "cookie"}


@dataclass
class ReaderSession:
    """One signed-in reader: their cookie, their station process and its secret and port."""

    sid: str
    cookie: str
    reader: str
    token: str
    secret: str
    port: int = 0
    process: subprocess.Popen | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class StudyFront:
    """The front's state and its aiohttp application.

    :param db_path: the study database.
    :param host, port: the front's address (its origin is the only one allowed).
    :param models_dir, device: passed to every station.
    """

    def __init__(
        self,
        db_path: str | Path,
        host: str,
        port: int,
        *,
        models_dir: str | None = None,
        device: str = "auto",
    ):
        self.db_path = Path(db_path)
        self.store = StudyStore(self.db_path)
        self.host, self.port = host, port
        self.origins = local_origins(host, port)
        self.models_dir, self.device = models_dir, device
        self.sessions: dict[str, ReaderSession] = {}
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/", self.sign_in_page),
                web.post("/sign-in", self.sign_in),
                web.route("*", "/r/{sid}/{tail:.*}", self.proxy),
            ]
        )
        self.app.on_cleanup.append(self._stop_all)

    # Sign-in ---------------------------------------------------------------------------------
    async def sign_in_page(self, request: web.Request) -> web.StreamResponse:
        """The token form; a reader's link (``?token=``) asks "Sign in as <reader>" first:
        a link from anywhere must not sign this browser in as someone else unseen."""
        token = request.query.get("token", "").strip()
        if not token:
            return self._page()
        try:
            reader = self.store.progress(token).reader
        except PermissionError as exc:
            return self._page(str(exc), status=403)
        return confirm_page(self.store.name, reader, token)

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in self.origins:
            return self._page("sign-in refused: the form came from another site", status=403)
        form = await request.post()
        return await self._start_session(str(form.get("token", "")))

    def _page(self, error: str = "", status: int = 200) -> web.Response:
        return sign_in_page(self.store.name, error, status)

    async def _start_session(self, token: str) -> web.StreamResponse:
        token = token.strip()
        try:
            reader = self.store.progress(token).reader
        except PermissionError as exc:
            return self._page(str(exc), status=403)
        for old in [s for s in self.sessions.values() if s.reader == reader]:
            await self._stop(old)  # one live session per reader: the new sign-in replaces it
        session = ReaderSession(
            sid=secrets.token_urlsafe(12),
            cookie=secrets.token_urlsafe(32),
            reader=reader,
            token=token,
            secret=secrets.token_urlsafe(32),
        )
        self.sessions[session.sid] = session
        try:
            await self._ensure_station(session)
        except RuntimeError as exc:
            del self.sessions[session.sid]
            return self._page(str(exc), status=503)
        response = web.HTTPSeeOther(self._page_address(session))
        response.set_cookie(
            COOKIE,
            session.cookie,
            path=f"/r/{session.sid}/",
            httponly=True,
            samesite="Strict",
        )
        return response

    @staticmethod
    def _page_address(session: ReaderSession) -> str:
        return f"/r/{session.sid}/index.html?{urlencode({'secret': session.secret})}"

    # Stations --------------------------------------------------------------------------------
    async def _ensure_station(self, session: ReaderSession) -> None:
        """Start the reader's station unless it runs (again after it died, same secret)."""
        async with session.lock:
            if session.alive:
                return
            session.port = free_port()
            settings = {
                "db": str(self.db_path),
                "token": session.token,
                "secret": session.secret,
                "port": session.port,
                "models": self.models_dir,
                "device": self.device,
            }
            process = subprocess.Popen(
                [sys.executable, "-m", "NoduleMalignancyLib.station.reader_station"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            process.stdin.write(json.dumps(settings) + "\n")
            process.stdin.flush()  # stdin stays open: the station stops when it closes
            session.process = process
            lines = await asyncio.get_running_loop().run_in_executor(
                None, _wait_ready, process, START_TIMEOUT_S
            )
            if not session.alive or not lines or READY not in lines[-1]:
                await self._stop(session, forget=False)
                raise RuntimeError(
                    f"the reading station for {session.reader} did not start: "
                    + " ".join(lines[-5:]).strip()
                )
            print(
                f"reader {session.reader}: station pid {process.pid} on port {session.port}",
                flush=True,
            )

    async def _stop(self, session: ReaderSession, forget: bool = True) -> None:
        if forget:
            self.sessions.pop(session.sid, None)
        process = session.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()  # the station stops itself
        try:
            await asyncio.get_running_loop().run_in_executor(None, process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    async def _stop_all(self, _app=None) -> None:
        await asyncio.gather(*(self._stop(s) for s in list(self.sessions.values())))

    # Proxy -----------------------------------------------------------------------------------
    async def proxy(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["sid"])
        cookie = request.cookies.get(COOKIE, "")
        if session is None or not secrets.compare_digest(cookie, session.cookie):
            raise web.HTTPForbidden(text="not your reading session: sign in at the study's address")
        tail = request.match_info["tail"]
        if tail in ("", "index.html") and "secret" not in request.query:
            raise web.HTTPSeeOther(self._page_address(session))  # a reload: the secret again
        if not session.alive and (revoked := await self._revoked(session)):
            return revoked  # started again only for a token that still works
        try:
            await self._ensure_station(session)
        except RuntimeError as exc:
            return message_page(self.store.name, f"{exc}. Reload this page to try again.", 503)
        if tail == "ws":
            return await self._proxy_websocket(request, session)
        return await self._proxy_http(request, session, tail)

    async def _proxy_http(self, request, session: ReaderSession, tail: str) -> web.Response:
        url = f"http://127.0.0.1:{session.port}/{tail}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            async with ClientSession(auto_decompress=False) as client:
                async with client.request(
                    request.method,
                    url,
                    params=request.query,
                    headers=headers,
                    data=await request.read(),
                    allow_redirects=False,
                ) as upstream:
                    body = await upstream.read()
                    kept = {
                        k: v
                        for k, v in upstream.headers.items()
                        if k.lower() not in _HOP_HEADERS | {"content-length", "set-cookie"}
                    }
                    return web.Response(body=body, status=upstream.status, headers=kept)
        except ClientError:  # it died (is dying) after the check: started again on a reload
            return await self._revoked(session) or message_page(
                self.store.name,
                f"The reading station of {session.reader} stopped. Reload this page: it starts "
                "again where you left off (every committed rating is kept).",
                503,
            )

    async def _revoked(self, session: ReaderSession) -> web.Response | None:
        """The page for a session whose token no longer works (the owner revoked or reset it),
        which is then forgotten and its station stopped; ``None`` while the token works."""
        try:
            self.store.progress(session.token)
        except PermissionError as exc:
            await self._stop(session)
            return message_page(
                self.store.name,
                f"Signed out: the study owner revoked or reset your reader token ({exc}).",
                403,
            )
        return None

    async def _proxy_websocket(self, request, session: ReaderSession) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        if origin.rstrip("/") not in self.origins:
            raise web.HTTPForbidden(text="websocket refused: this page's origin is not allowed")
        browser = web.WebSocketResponse(max_msg_size=0)
        await browser.prepare(request)
        station_origin = f"http://127.0.0.1:{session.port}"
        async with ClientSession() as client:
            try:
                station = await client.ws_connect(
                    f"ws://127.0.0.1:{session.port}/ws",
                    headers={"Origin": station_origin},
                    max_msg_size=0,
                )
            except OSError:
                await browser.close(message=b"the reading station is not reachable")
                return browser
            async with station:
                await asyncio.gather(_relay(browser, station), _relay(station, browser))
        return browser

    # Running ---------------------------------------------------------------------------------
    def address(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{shown}:{self.port}/"


async def _relay(source, target) -> None:
    """Copy messages from one websocket to the other until either closes."""
    try:
        async for message in source:
            if message.type == WSMsgType.BINARY:
                await target.send_bytes(message.data)
            elif message.type == WSMsgType.TEXT:
                await target.send_str(message.data)
            else:
                break
    finally:
        await target.close()


def _wait_ready(process: subprocess.Popen, timeout_s: float) -> list[str]:
    """The station's output lines up to its ready line (or its end, or the timeout); the rest
    of its output is drained in the background so it never blocks on a full pipe."""
    import threading

    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            if not ready.is_set():
                lines.append(line.rstrip())
                if READY in line:
                    ready.set()
        ready.set()

    threading.Thread(target=read, name="station-output", daemon=True).start()
    ready.wait(timeout_s)
    return lines


def run_front(front: StudyFront) -> None:
    """Serve until SIGINT or SIGTERM; every station stops with the front. The address is
    printed once the front listens (a busy port raises ``OSError`` before)."""

    async def main() -> None:
        runner = web.AppRunner(front.app)
        await runner.setup()
        try:
            await web.TCPSite(runner, front.host, front.port).start()
            print(f"reading study {front.store.name} on {front.address()}", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()  # stops every station (on_cleanup)

    asyncio.run(main())
