"""The station's reading-study mode (docs/DESIGN.md §14, §15): the reader's session without a
browser, the controller keeping the model hidden, and the page in chromium.

A sequential study of one case (LIDC-IDRI-0001's nodule): the unaided rating is committed
with the model hidden, then the model appears and the aided rating is committed.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from NoduleMalignancyLib.study.ratings import CHARACTERISTICS, RatingError
from NoduleMalignancyLib.study.store import StudyStore, create_study

NODULE_LPS = [56.17, 86.2, -115.86]
FORM = {
    "subtlety": "4",
    "internal_structure": 1,
    "calcification": "6",
    "sphericity": 3,
    "margin": 3,
    "lobulation": 2,
    "spiculation": 2,
    "texture": 5,
    "malignancy": "4",
    "confidence": "70",
    "lung_rads": "4b",
    "comment": "",
}


@pytest.fixture
def study_owned(tmp_path, ct_0001_path):
    """(study file, database, reader token, owner token) of a one-case sequential study."""
    study_file = tmp_path / "study.json"
    study_file.write_text(
        json.dumps(
            {
                "version": 1,
                "name": "station-test",
                "design": "sequential",
                "seed": 7,
                "cases": [
                    {
                        "id": "c1",
                        "ct": str(ct_0001_path),
                        "points": [{"name": "n0", "point": NODULE_LPS}],
                        "truth": 1,
                    }
                ],
            }
        )
    )
    db = tmp_path / "study.db"
    owner = create_study(db, study_file)
    token = StudyStore(db).add_reader(owner, "alice")
    return study_file, db, token, owner


@pytest.fixture
def study(study_owned):
    """(study file, database, reader token) of a one-case sequential study."""
    return study_owned[:3]


def test_the_form_has_the_lidc_scales_with_their_wording():
    from NoduleMalignancyLib.study.form import rating_form

    fields = {f["name"]: f for f in rating_form(("malignancy", "confidence"))}
    assert set(CHARACTERISTICS) | {"confidence", "lung_rads", "comment"} == set(fields)
    assert [c["title"] for c in fields["calcification"]["choices"]][-1] == "6: Absent"
    assert fields["malignancy"]["choices"][4]["title"] == "5: Highly suspicious"
    assert fields["malignancy"]["required"] and not fields["margin"]["required"]
    assert fields["confidence"]["kind"] == "number" and fields["confidence"]["max"] == 100


def test_a_reader_session_rates_unaided_then_aided(study):
    from NoduleMalignancyLib.study.session import StudySession, open_store

    study_file, db, token = study
    store = open_store(study_file, db)
    with pytest.raises(PermissionError):
        StudySession(store, "not-a-token")
    session = StudySession(store, token)
    assignment = session.open_next()
    assert (assignment.case, assignment.modality) == ("c1", "unaided")
    assert not session.model_visible(), "the model is hidden until the unaided commit"
    assert session.snapshot()["case"]["points"][0]["point"] == NODULE_LPS
    with pytest.raises(RatingError, match="(?i)malignancy"):
        session.submit({**FORM, "malignancy": "4.5"})
    session.submit(FORM)
    assignment = session.open_next()
    assert assignment.modality == "aided" and session.model_visible()
    assert session.initial_values()["malignancy"] == 4, "the aided form starts from unaided"
    session.submit({**FORM, "malignancy": 5, "confidence": 85})
    assert session.open_next() is None
    progress = session.progress()
    assert progress["done"] == progress["total"] == 2 and progress["finished"]
    rows = store.my_ratings(token)
    assert [(r["modality"], r["malignancy"], r["model_visible"]) for r in rows] == [
        ("unaided", 4, False),
        ("aided", 5, True),
    ]
    assert rows[0]["lung_rads"] == "4B" and rows[0]["comment"] is None


def test_a_database_of_another_study_is_refused(study, tmp_path):
    from NoduleMalignancyLib.study.session import open_store

    study_file, db, _ = study
    other = tmp_path / "other.json"
    other.write_text(study_file.read_text().replace("station-test", "another"))
    with pytest.raises(ValueError, match="another study file"):
        open_store(other, db)


def test_the_controller_keeps_the_model_hidden(slicer_runtime, mrml_scene, ct_0001_path):
    import concurrent.futures

    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic
    from NoduleMalignancyLib.mrml.selftest import random_test_ensemble
    from NoduleMalignancyLib.station.controller import StationController

    executor = concurrent.futures.ThreadPoolExecutor(1)
    controller = StationController(
        NoduleMalignancyLogic(ensemble=random_test_ensemble()), device="cpu", executor=executor
    )
    try:
        controller.model_allowed = False
        controller.load_ct(ct_0001_path)
        controller.add_point_lps(NODULE_LPS, "n0")
        controller.poll()
        snap = controller.snapshot()
        assert (
            not snap["busy"] and snap["panel"] is None and snap["nodules"][0]["status"] == "placed"
        )
        assert "hidden" in snap["message"]
    finally:
        controller.shutdown()
        executor.shutdown()


SKIPPING_READER = """
import json, sys
from NoduleMalignancyLib.station.study_app import StudyStationApp
from NoduleMalignancyLib.study.ratings import RatingError
from NoduleMalignancyLib.study.store import StudyStateError
study_file, db, models, token = sys.argv[1:]
app = StudyStationApp(study_file, db, models_dir=models, device="cpu")
assert app.sign_in(token)
seen = []
while app.server.state.study["load_error"]:
    study = app.server.state.study
    assert app.controller.volume is None and app.controller.snapshot()["status"] == "error"
    assert not app.submit({"malignancy": 3, "confidence": 50}), "no rating without the CT"
    seen.append({"case": study["case"]["case"], "message": app.controller.snapshot()["message"]})
    assert app.skip()
case = app.server.state.study["case"]["case"]
assert app.controller.volume is not None and not app.skip(), "a case that loads is not skipped"
print(json.dumps({"skipped": seen, "loaded": case, "study": app.server.state.study}))
"""


def test_the_station_lets_a_reader_skip_cases_whose_ct_will_not_load(tmp_path, data_dir):
    """Missing, unreadable and not-CT files: the message names the problem, the reader skips,
    the store records it, and the case that loads is offered (the station in a child process:
    trame-slicer's scene must be the first the process makes)."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk

    from NoduleMalignancyLib.core.model.ensemble import write_random_ensemble

    (tmp_path / "garbage.nrrd").write_text("not an image")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.full((8, 16, 16), 100, np.uint8)), str(tmp_path / "8bit.nrrd")
    )
    voi = data_dir / "lidc_vois" / "image" / "LIDC-IDRI-0001_R_1.nii.gz"
    cases = [("missing", "nowhere.nrrd"), ("garbage", "garbage.nrrd"), ("not-ct", "8bit.nrrd")]
    study_file = tmp_path / "study.json"
    study_file.write_text(
        json.dumps(
            {
                "design": "sequential",
                "seed": 3,
                "cases": [{"id": i, "ct": ct, "truth": 0} for i, ct in cases]
                + [{"id": "voi", "ct": str(voi), "truth": 1}],
            }
        )
    )
    db = tmp_path / "study.db"
    owner = create_study(db, study_file)
    token = StudyStore(db).add_reader(owner, "alice")
    write_random_ensemble(tmp_path / "models")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    argv = [
        sys.executable,
        "-c",
        SKIPPING_READER,
        str(study_file),
        str(db),
        str(tmp_path / "models"),
    ]
    done = subprocess.run(
        [*argv, token], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loaded"] == "voi"
    messages = {s["case"]: s["message"] for s in out["skipped"]}
    assert set(messages) == {"missing", "garbage", "not-ct"}
    assert "No CT at" in messages["missing"] and "nowhere.nrrd" in messages["missing"]
    assert "Cannot read the CT" in messages["garbage"]
    assert "not a CT" in messages["not-ct"] and "8-bit" in messages["not-ct"]
    assert out["study"]["progress"]["done"] == 6 and out["study"]["progress"]["total"] == 8
    skips = StudyStore(db).snapshot(owner).skips
    assert {(k["reader"], k["case"], k["modality"]) for k in skips} == {
        ("alice", case, "unaided") for case in messages
    }
    assert {k["case"]: k["reason"] for k in skips} == {
        c: m.removeprefix(f"Case {c}: ") for c, m in messages.items()
    }


def test_browser_study_sign_in_rate_and_see_the_model_after_commit(study, tiny_dir, tmp_path):
    """The page signs in from ?token=, hides the model, commits, then shows it (about 35 s)."""
    from test_station import CHROMIUM, run_station

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    study_file, db, token = study
    status = "() => document.querySelector('#station-status')?.dataset.status"
    with run_station(["--study", str(study_file), "--db", str(db)], tiny_dir) as (url, _):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{url}&token={token}")
                page.wait_for_selector("#study-case", timeout=60_000)
                assert "token" not in page.url, "the token leaves the address bar"
                assert "secret" not in page.url, "so does the websocket secret"
                assert "unaided reading" in page.locator("#study-case").inner_text()
                assert page.locator("#station-patient-id").inner_text() == "LIDC-IDRI-0001"
                assert page.locator("#station-results").count() == 0
                page.evaluate("(f) => window.trame.state.set('form', f)", FORM)
                page.click("#study-submit")
                page.wait_for_function(
                    "() => document.querySelector('#study-progress')?.innerText.includes('1 of 2')",
                    timeout=30_000,
                )
                page.wait_for_function(f"() => ({status})() === 'done'", timeout=120_000)
                text = page.locator("#station-malignancy").inner_text()
                assert re.fullmatch(r"Malignancy \d{1,3}\.\d %", text.strip()), text
                page.screenshot(path=str(tmp_path / "study.png"))
                page.click("#study-submit")
                page.wait_for_selector("#study-finished", timeout=30_000)
            finally:
                browser.close()
    rows = StudyStore(db).my_ratings(token)
    assert [(r["modality"], r["model_visible"]) for r in rows] == [
        ("unaided", False),
        ("aided", True),
    ]
    assert {r["patient_id"] for r in rows} == {"LIDC-IDRI-0001"}, "the CT each was made on"


def test_a_station_serves_one_reader_on_one_connection(study_owned, tiny_dir):
    """``app --study`` over raw websockets (issue 28, finding 2): the default secret gets
    nothing, a trigger before sign-in does nothing, the reader's token never enters the shared
    state, another connection cannot act for the signed-in reader, and the station cannot be
    re-signed as another reader."""
    from urllib.parse import parse_qs, urlparse

    import msgpack
    import wslink_client as ws
    from test_station import run_station

    study_file, db, token, owner = study_owned
    store = StudyStore(db)
    with run_station(["--study", str(study_file), "--db", str(db)], tiny_dir) as (url, _):
        address = urlparse(url)
        origin = f"http://{address.netloc}"
        socket_url = f"ws://{address.netloc}/ws"
        secret = parse_qs(address.query)["secret"][0]
        state_get = ("trame.state.get", [])

        def trigger(name, *args):
            return ("trame.trigger", [name, list(args), {}])

        assert all(
            ws.refused(r) for r in ws.call(socket_url, origin, ws.DEFAULT_SECRET, [state_get])
        )
        with pytest.raises(ws.RefusedError):
            ws.call(socket_url, "http://evil.example", secret, [state_get])
        _, early = ws.call(socket_url, origin, secret, [trigger("study_submit", FORM, {})])
        assert early["result"] is False, "a trigger before sign-in"
        _, signed, state = ws.call(
            socket_url, origin, secret, [trigger("study_sign_in", token), state_get]
        )
        assert signed["result"] is True
        assert token.encode() not in msgpack.packb(state["result"]), "the token is not in state"
        step = state["result"]["state"]["study"]["step"]
        _, other = ws.call(socket_url, origin, secret, [trigger("study_submit", FORM, step)])
        assert other["result"] is False, "another connection acts for the signed-in reader"
        second = store.add_reader(owner, "mallory")
        _, resign = ws.call(socket_url, origin, secret, [trigger("study_sign_in", second)])
        assert resign["result"] is False, "re-signed as another reader"
    assert store.my_ratings(token) == [] and store.my_ratings(second) == []


FAILING_DATABASE = """
import json, os, subprocess, sys
from pathlib import Path
from NoduleMalignancyLib.station.study_app import StudyStationApp
from NoduleMalignancyLib.study.store import StudyStore
study_file, db, models, token, owner, form = sys.argv[1:]
folder, form = Path(db).parent, json.loads(form)


def frozen(on):  # unwritable even for root (chattr +i), else by its mode
    paths = [folder, *folder.iterdir()]
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True)
    else:
        for p in paths:
            p.chmod((0o555 if p.is_dir() else 0o444) if on else (0o755 if p.is_dir() else 0o600))


app = StudyStationApp(study_file, db, models_dir=models, device="cpu")
assert app.sign_in(token)
step = app.server.state.study["step"]
app.server.state.form = dict(form)
frozen(True)
try:
    refused = app.submit(dict(form), step)
finally:
    frozen(False)
study = app.server.state.study
out = {"read_only": [refused, study["error"], app.server.state.form, study["step"] == step]}
out["after"] = [app.submit(dict(form), step), app.server.state.study["error"]]
StudyStore(db).reset_token(owner, "alice")
revoked = app.submit(dict(form), app.server.state.study["step"])
study = app.server.state.study
out["revoked"] = [revoked, study["signed_in"], study["error"], app.controller.volume is None]
print(json.dumps(out))
"""


def test_a_failing_database_or_a_revoked_token_is_said_on_the_page(study_owned, tiny_dir):
    """Issue 28, finding 7: a read-only database gives "rating NOT saved: <reason>" with the
    form kept (the same form commits once the database is writable again); a token revoked
    while signed in signs the reader out and says why (the station in a child process)."""
    import subprocess
    import sys
    from pathlib import Path

    study_file, db, token, owner = study_owned
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", FAILING_DATABASE, str(study_file), str(db), str(tiny_dir), token,
         owner, json.dumps(FORM)],
        cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    refused, error, form, same_step = out["read_only"]
    assert refused is False and error.startswith("rating NOT saved: the study database failed")
    assert form == FORM and same_step, "the form is kept"
    assert out["after"][0] is True, out["after"]
    revoked, signed_in, error, closed = out["revoked"]
    assert revoked is False and not signed_in and closed
    assert error.startswith("signed out: rating NOT saved: unknown reader token")
    rows = StudyStore(db).my_ratings(StudyStore(db).reset_token(owner, "alice"))
    assert [r["modality"] for r in rows] == ["unaided"]
