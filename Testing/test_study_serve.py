"""``study serve``: one address for a study, one station process per reader (issue 28, 1-3).

Why these tests: a station's websocket had no access control (the default wslink secret, no
Origin check, the reader's token readable with ``trame.state.get``, triggers acting as the
signed-in reader without a token, a running station re-signed as another reader), and a
double-click committed the next step. Every attack here goes through the running front, as a
local process or a page in the reader's browser could send it (``wslink_client.py``); the
browser test signs two readers in at once through the one address, checks they cannot reach
each other's session, and kills one reader's station with SIGKILL.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import msgpack
import pytest
import wslink_client as ws
from served import served

from NoduleMalignancyLib.station.ports import free_port
from NoduleMalignancyLib.study.store import StudyStore, create_study

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FORM = {"malignancy": 4, "confidence": 70}
VOI = Path("lidc_vois") / "image" / "LIDC-IDRI-0001_R_1.nii.gz"


@contextlib.contextmanager
def run_front(db: Path, models_dir: Path, stop=signal.SIGINT):
    """``nodule-malignancy study serve`` on a free port; yields (address, output lines). On exit
    the front is stopped with ``stop`` and every station it started must be gone."""
    port = free_port()
    command = [
        sys.executable, "-m", "NoduleMalignancyLib.cli", "study", "serve", "--db", str(db),
        "--port", str(port), "--models", str(models_dir), "--device", "cpu",
    ]  # fmt: skip
    lines: list[str] = []
    try:
        with served(command, "reading study", 120, stop=stop) as lines:
            yield f"http://127.0.0.1:{port}", lines
    finally:
        for pid in station_pids(lines).values():
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not _alive(pid), f"station {pid} outlived its front"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie of ours counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    return True


def station_pids(lines: list[str]) -> dict[str, int]:
    """The last station pid the front printed per reader."""
    found = {}
    for line in lines:
        match = re.match(r"reader (\S+): station pid (\d+)", line)
        if match:
            found[match[1]] = int(match[2])
    return found


def request(front: str, method: str, path: str, body: dict | None = None, headers=None):
    """(status, headers, text) of one request to the front (a form body when ``body``)."""
    address = urlparse(front)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = urlencode(body)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    return response.status, response, response.read().decode("utf-8", "replace")


def sign_in(front: str, token: str) -> dict:
    """Sign in through the front like the reader's link does (its page, then "Sign in as"); the
    session's path, cookie and websocket secret (from the redirect)."""
    status, _, page = request(front, "GET", f"/?token={token}")
    assert status == 200 and 'id="sign-in-as"' in page, status
    status, response, _ = request(front, "POST", "/sign-in", {"token": token}, {"Origin": front})
    assert status == 303, status
    location = response.getheader("Location")
    cookie = response.getheader("Set-Cookie").split(";")[0].split("=", 1)[1]
    path = urlparse(location).path
    return {
        "path": path.rsplit("/", 1)[0] + "/",
        "cookie": {"nm_reader": cookie},
        "secret": parse_qs(urlparse(location).query)["secret"][0],
        "ws": front.replace("http", "ws") + path.rsplit("/", 1)[0] + "/ws",
    }


def get(front: str, path: str, cookie: dict | None = None) -> int:
    address = urlparse(front)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in (cookie or {}).items())}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


@pytest.fixture
def study(tmp_path, data_dir):
    """A two-case sequential study with readers alice and bob (the cases: a small VOI CT)."""
    folder = tmp_path
    study_file = folder / "study.json"
    cases = [{"id": f"c{i}", "ct": str(data_dir / VOI), "truth": i % 2} for i in range(2)]
    study_file.write_text(
        json.dumps(
            {"name": "serve-test", "design": "sequential", "seed": 3, "cases": cases}
            | {"required": ["malignancy", "confidence"]}
        )
    )
    db = folder / "study.db"
    owner = create_study(db, study_file)
    store = StudyStore(db)
    tokens = {name: store.add_reader(owner, name) for name in ("alice", "bob")}
    return {"db": db, "owner": owner, "tokens": tokens}


def test_the_raw_websocket_attacks_are_refused(study, tiny_dir):
    """Wrong origin, no cookie, the default secret, a foreign station port, ``state.get``,
    re-signing as another reader, a submit without its form, and three simultaneous submits."""
    tokens = study["tokens"]
    with run_front(study["db"], tiny_dir) as (front, lines):
        alice = sign_in(front, tokens["alice"])
        good = (front, alice["secret"], alice["cookie"])

        def attempt(origin, secret, cookie, calls, url=alice["ws"]):  # replies or HTTP status
            try:
                return ws.call(url, origin, secret, calls, cookies=cookie)
            except ws.RefusedError as exc:
                return exc.status

        state_get = [("trame.state.get", [])]
        assert attempt("http://evil.example", *good[1:], state_get) == 403, "wrong origin"
        assert attempt(None, *good[1:], state_get) == 403, "no origin"
        assert attempt(front, alice["secret"], None, state_get) == 403, "no cookie"
        assert get(front, alice["path"] + "index.html") == 403, "the page without the cookie"
        default = attempt(front, ws.DEFAULT_SECRET, alice["cookie"], state_get)
        assert all(ws.refused(r) for r in default), "the default wslink secret"
        # The station's own port, bypassing the front: its origin is allowed, not its secret.
        port = int(re.search(r"station pid \d+ on port (\d+)", "".join(lines))[1])
        station = f"ws://127.0.0.1:{port}/ws"
        direct = attempt(f"http://127.0.0.1:{port}", ws.DEFAULT_SECRET, None, state_get, station)
        assert all(ws.refused(r) for r in direct), "the station's port with the default secret"
        assert attempt(front, alice["secret"], None, state_get, station) == 403, "front origin"

        # With alice's own credentials: her state holds no token; bob's token cannot take over.
        hello, got = attempt(*good, state_get)
        assert "result" in hello
        state = got["result"]["state"]
        assert tokens["alice"].encode() not in msgpack.packb(state), "no token in the state"
        assert state.get("token_input", "") == ""
        step = state["study"]["step"]
        assert step["modality"] == "unaided"
        hello, signed = attempt(*good, [("trame.trigger", ["study_sign_in", [tokens["bob"]], {}])])
        assert signed["result"] is False, "re-signing alice's station as bob"
        hello, blind = attempt(*good, [("trame.trigger", ["study_submit", [FORM], {}])])
        assert blind["result"] is False, "a submit that does not name its form"
        assert StudyStore(study["db"]).my_ratings(tokens["alice"]) == []

        # Three connections submit the same form at once: one rating, at the step shown.
        import asyncio

        async def three():
            calls = [("trame.trigger", ["study_submit", [FORM, step], {}])]
            return await asyncio.gather(
                *(asyncio.to_thread(attempt, *good, calls) for _ in range(3))
            )

        results = [r[1]["result"] for r in asyncio.run(three())]
        assert sorted(results) == [False, False, True], results
        rows = StudyStore(study["db"]).my_ratings(tokens["alice"])
        assert [(r["case"], r["modality"]) for r in rows] == [(step["case"], "unaided")]
        assert StudyStore(study["db"]).my_ratings(tokens["bob"]) == []

        # The owner resets alice's token: her idle page signs out and says why.
        StudyStore(study["db"]).reset_token(study["owner"], "alice")
        deadline = time.monotonic() + 30  # the page checks every few seconds (TOKEN_CHECK_S)
        while (shown := attempt(*good, state_get)[1]["result"]["state"]["study"])["signed_in"]:
            assert time.monotonic() < deadline, "the revoked reader is still signed in"
            time.sleep(1)
        assert shown["error"].startswith("signed out: unknown reader token"), shown["error"]

        # Her station dies now: the next request says she was signed out (not a bare 503),
        # and her session is gone.
        pid = station_pids(lines)["alice"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        page = alice["path"] + f"index.html?secret={alice['secret']}"
        status, response, text = request(front, "GET", page, headers=cookies(alice))
        assert status == 403 and 'id="front-message"' in text, (status, text)
        assert "Signed out: the study owner revoked or reset your reader token" in text
        assert response.getheader("X-Frame-Options") == "DENY"
        assert get(front, page, alice["cookie"]) == 403, "the session is forgotten"
        assert len(station_pids(lines)) == 1, "no station was started for the revoked token"


def cookies(session: dict) -> dict:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in session["cookie"].items())}


def test_a_reader_s_link_asks_before_it_signs_the_browser_in(study, tiny_dir):
    """Login CSRF (issue 28): a link with a reader's token only shows "Sign in as <reader>"
    (no cookie, no station); the sign-in POST is refused from another site's page; a wrong
    token is said. No station starts in this test."""
    tokens = study["tokens"]
    with run_front(study["db"], tiny_dir) as (front, lines):
        status, response, page = request(front, "GET", f"/?token={tokens['bob']}")
        assert status == 200 and response.getheader("Set-Cookie") is None
        assert re.search(r'id="sign-in-as"[^>]*>Sign in as bob<', page), page
        assert f'value="{tokens["bob"]}"' in page, "the token goes with the form only"
        assert response.getheader("X-Frame-Options") == "DENY"
        assert "frame-ancestors 'none'" in response.getheader("Content-Security-Policy")
        assert response.getheader("Referrer-Policy") == "same-origin"
        for origin in ("http://evil.example", "null"):
            status, response, page = request(
                front, "POST", "/sign-in", {"token": tokens["bob"]}, {"Origin": origin}
            )
            assert status == 403 and response.getheader("Set-Cookie") is None, origin
            assert "the form came from another site" in page
        status, _, page = request(front, "GET", "/?token=not-a-token")
        assert status == 403 and "unknown reader token" in page
        assert station_pids(lines) == {} and "station pid" not in "".join(lines)


def test_another_site_cannot_sign_the_browser_in(study, tiny_dir):
    """Login CSRF in chromium: a page of another origin that posts a reader's token to the
    front is refused (no cookie, no station); the link itself stops at "Sign in as bob"."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    bob = study["tokens"]["bob"]
    with run_front(study["db"], tiny_dir) as (front, lines), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_content(
                f'<form id="f" method="post" action="{front}/sign-in">'
                f'<input name="token" value="{bob}"></form>'
            )
            with page.expect_navigation():
                page.evaluate("document.getElementById('f').submit()")
            assert "the form came from another site" in page.content()
            page.goto(f"{front}/?token={bob}")
            assert page.locator("#sign-in-as").inner_text() == "Sign in as bob"
            assert page.context.cookies() == [], "nothing signed in"
        finally:
            browser.close()
        assert "station pid" not in "".join(lines)


def test_no_station_outlives_a_killed_front(study, tiny_dir):
    """SIGKILL of the front (no cleanup runs): its stations stop by themselves."""
    with run_front(study["db"], tiny_dir, stop=signal.SIGKILL) as (front, lines):
        sign_in(front, study["tokens"]["alice"])
        # The front's output is read by a thread: its "station pid" line may trail the redirect.
        deadline = time.monotonic() + 30
        while not station_pids(lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert station_pids(lines), "a station was started"


def test_a_busy_port_is_a_message_not_a_traceback(study, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in (
            ["study", "serve", "--db", str(study["db"])],
            ["app", "--sample", "LIDC-IDRI-0001"],
        ):
            done = subprocess.run(
                [sys.executable, "-m", "NoduleMalignancyLib.cli", *command, "--port", str(port)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 2, done.stderr
            assert f"port {port} on 127.0.0.1 is in use" in done.stderr
            assert "Traceback" not in done.stderr and "reading" not in done.stdout


def test_two_readers_at_once_through_one_address(study, tiny_dir, tmp_path):
    """Two readers in two browser contexts (separate cookies and storage): each sees only their
    own reading; a double-click commits once; SIGKILL of alice's station loses none of her
    acknowledged ratings, leaves bob reading, and alice resumes at her next step."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    db, tokens = study["db"], study["tokens"]
    store = StudyStore(db)

    def progress(page, text):
        page.wait_for_function(
            f"() => document.querySelector('#study-progress')?.innerText.includes('{text}')",
            timeout=120_000,
        )

    def commit(page, double=False):
        page.evaluate("(f) => window.trame.state.set('form', Object.assign({}, f))", FORM)
        page.wait_for_timeout(300)
        page.dblclick("#study-submit") if double else page.click("#study-submit")

    with run_front(db, tiny_dir) as (front, lines), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            pages = {}
            for name in ("alice", "bob"):
                context = browser.new_context(viewport={"width": 1300, "height": 900})
                page = context.new_page()
                page.goto(f"{front}/?token={tokens[name]}")
                assert page.locator("#sign-in-as").inner_text() == f"Sign in as {name}"
                assert "token" not in page.url, "the link's token leaves the address bar"
                page.click("#sign-in-as")
                page.wait_for_selector("#study-case", timeout=180_000)
                assert "token" not in page.url and "secret" not in page.url
                assert f"Reader {name}" in page.locator("#study-progress").inner_text()
                pages[name] = page
            alice, bob = pages["alice"], pages["bob"]
            progress(alice, "0 of 4")
            # Isolation: alice's browser cannot open bob's session, nor his websocket.
            bob_path = urlparse(bob.url).path.rsplit("/", 1)[0] + "/"
            assert alice.request.get(f"{front}{bob_path}index.html").status == 403
            assert alice.request.get(f"{front}{bob_path}index.html?secret=x").status == 403

            commit(alice, double=True)
            progress(alice, "1 of 4")
            alice.wait_for_timeout(2000)  # the second click has been answered
            rows = store.my_ratings(tokens["alice"])
            assert [r["modality"] for r in rows] == ["unaided"]
            assert "aided reading" in alice.locator("#study-case").inner_text()

            os.kill(station_pids(lines)["alice"], signal.SIGKILL)
            commit(bob)
            progress(bob, "1 of 4")
            assert len(store.my_ratings(tokens["bob"])) == 1, "bob reads on"
            assert len(store.my_ratings(tokens["alice"])) == 1, "alice's rating survives"

            alice.reload()
            alice.wait_for_selector("#study-case", timeout=180_000)
            assert "aided reading" in alice.locator("#study-case").inner_text()
            progress(alice, "1 of 4")
            commit(alice)
            progress(alice, "2 of 4")
            alice.screenshot(path=str(tmp_path / "alice.png"))
        finally:
            browser.close()
    rows = store.my_ratings(tokens["alice"])
    assert [r["modality"] for r in rows] == ["unaided", "aided"]
    assert rows[1]["case"] == rows[0]["case"] and rows[1]["model_visible"]
