"""The reading-study data layer: study file, case orders, the SQLite store (docs/DESIGN.md §14).

Why these tests: a reading study's ratings are its data. They must survive a killed server,
stay locked where the design locks them, stay private to their reader, and come out as the
long table the MRMC analysis reads.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from NoduleMalignancyLib.core.config import ATTRIBUTES
from NoduleMalignancyLib.study.design import (
    StudyFileError,
    case_order,
    check_ct_files,
    load_study,
    order_seed,
    session_modality,
)
from NoduleMalignancyLib.study.ratings import CHARACTERISTICS, SCALES, RatingError, validate_rating
from NoduleMalignancyLib.study.store import (
    SCORE_COLUMNS,
    StudyStateError,
    StudyStore,
    WashoutError,
    create_study,
    hash_token,
    new_token,
    reader_link,
)

ROOT = Path(__file__).resolve().parent.parent
RATING = {name: low for name, (low, _) in SCALES.items()} | {"confidence": 50}


def study_dict(n: int = 6, design: str = "sequential", **extra) -> dict:
    cases = [
        {
            "id": f"LIDC-IDRI-{i:04d}_n1",
            "ct": f"ct/{i:04d}.nrrd",
            "points": [{"name": "n1", "point": [1.0 * i, -2.0, 3.5]}],
            "truth": i % 2 if i < n - 1 else None,  # the last case's truth is unknown
        }
        for i in range(n)
    ]
    return {"design": design, "seed": 1234, "cases": cases, **extra}


def write_study(folder: Path, data: dict) -> Path:
    path = folder / "study.json"
    path.write_text(json.dumps(data))
    return path


def new_store(tmp_path: Path, clock=None, **kwargs) -> tuple[StudyStore, str]:
    db = tmp_path / "study.sqlite"
    owner = create_study(db, write_study(tmp_path, study_dict(**kwargs)))
    return (StudyStore(db, clock=clock) if clock else StudyStore(db)), owner


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def rate(store: StudyStore, token: str, modality: str, **fields) -> dict:
    """Open the reader's next case and submit ``modality`` for it."""
    step = store.next_case(token)
    assert step.modality == modality
    store.open_case(token, step.case)
    return store.submit(token, step.case, modality, RATING | fields)


# -- the study file --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.update(design="crossover"), "design"),
        (lambda d: d.pop("seed"), "seed"),
        (lambda d: d.update(seed=-1), "seed"),
        (lambda d: d.update(cases=[]), "cases"),
        (lambda d: d.update(hide_model_until_commit="yes"), "hide_model_until_commit"),
        (lambda d: d.update(desing="sequential"), "desing"),
        (lambda d: d["cases"][2].update(truth=2), "cases[2].truth"),
        (lambda d: d["cases"][1].update(id="a,b"), "cases[1].id"),
        (lambda d: d["cases"][3].update(id=d["cases"][0]["id"]), "cases[3].id"),
        (lambda d: d["cases"][0].pop("ct"), "cases[0].ct"),
        (lambda d: d["cases"][0]["points"][0].update(point=[1, 2]), "cases[0].points[0].point"),
        (lambda d: d["cases"][0].update(nodule="x"), "cases[0].nodule"),
        (lambda d: d.update(required=["malignancy", "size"]), "required"),
        (lambda d: d.update(washout_days=-1), "washout_days"),
        (lambda d: d.update(washout_days="7"), "washout_days"),
        (lambda d: d.update(washout_days=True), "washout_days"),
        (lambda d: d.update(washout_days=7), "washout_days"),  # sequential: one session
    ],
)
def test_a_bad_study_file_is_refused_naming_the_field(tmp_path, change, field):
    data = study_dict()
    change(data)
    with pytest.raises(StudyFileError, match=re.escape(f"{field}:")):
        load_study(write_study(tmp_path, data))


def test_ct_paths_resolve_against_the_study_file_and_can_be_checked(tmp_path):
    data = study_dict(3)
    data["cases"][2]["ct"] = str(tmp_path / "elsewhere.nrrd")
    study = load_study(write_study(tmp_path, data))
    assert study.cases[0].ct_path == tmp_path / "ct" / "0000.nrrd"
    assert study.cases[2].ct_path == tmp_path / "elsewhere.nrrd"
    assert study.cases[0].points[0].lps == (0.0, -2.0, 3.5) and study.cases[-1].truth is None
    with pytest.raises(FileNotFoundError, match="3 CT file.*LIDC-IDRI-0000_n1"):
        load_study(study.path, check_files=True)
    for case in study.cases:
        case.ct_path.parent.mkdir(exist_ok=True)
        case.ct_path.touch()
    check_ct_files(study)
    with pytest.raises(FileNotFoundError, match="study file"):
        load_study(tmp_path / "missing.json")


def test_case_orders_are_reproducible_per_reader_and_session(tmp_path):
    ids = [f"c{i}" for i in range(30)]
    assert case_order(ids, order_seed(7, 1, 1)) == case_order(ids, order_seed(7, 1, 1))
    orders = {(r, s): tuple(case_order(ids, order_seed(7, r, s))) for r in (1, 2) for s in (1, 2)}
    assert len(set(orders.values())) == 4, "readers and sessions get different orders"
    assert sorted(orders[1, 1]) == sorted(ids)
    # The store records the order it drew, from the recorded seed.
    store, owner = new_store(tmp_path, n=12, design="independent")
    store.add_reader(owner, "A")
    con = sqlite3.connect(store.db_path)
    seed = con.execute("SELECT order_seed FROM sessions WHERE session = 2").fetchone()[0]
    stored = [
        r[0]
        for r in con.execute("SELECT case_id FROM case_order WHERE session = 2 ORDER BY position")
    ]
    study_ids = [c["id"] for c in study_dict(12)["cases"]]
    assert seed == order_seed(1234, 1, 2) and stored == case_order(study_ids, seed)


# -- ratings ---------------------------------------------------------------------------------


def test_the_scales_name_the_projects_nine_attributes():
    assert set(SCALES) == set(ATTRIBUTES) and len(CHARACTERISTICS) == 9
    assert SCALES["calcification"] == (1, 6) and SCALES["internal_structure"] == (1, 4)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"malignancy": 6}, "malignancy must be an integer 1-5"),
        ({"calcification": 0}, "calcification must be an integer 1-6"),
        ({"internal_structure": 5}, "internal_structure must be an integer 1-4"),
        ({"margin": 3.5}, "margin must be an integer"),
        ({"texture": True}, "texture must be an integer"),
        ({"confidence": 101}, "confidence must be a number 0-100"),
        ({"confidence": float("nan")}, "confidence must be a number"),
        ({"lung_rads": "5"}, "lung_rads must be one of"),
        ({"size_mm": 4}, "unknown field 'size_mm'"),
        ({"spiculation": None}, "spiculation is required"),
        ({"comment": 3}, "comment must be text"),
    ],
)
def test_a_bad_rating_is_refused_naming_the_field(fields, message):
    with pytest.raises(RatingError, match=message):
        validate_rating(RATING | fields)


def test_optional_fields_and_a_study_that_requires_less():
    clean = validate_rating(RATING | {"lung_rads": "4a", "comment": "  spiculated  "})
    assert clean["lung_rads"] == "4A" and clean["comment"] == "spiculated"
    assert validate_rating(RATING | {"lung_rads": 3})["lung_rads"] == "3"
    light = validate_rating({"malignancy": 4, "confidence": 80}, ("malignancy", "confidence"))
    assert light["subtlety"] is None and light["confidence"] == 80.0
    with pytest.raises(RatingError, match="confidence is required"):
        validate_rating({"malignancy": 4}, ("malignancy", "confidence"))


# -- the sequential design -------------------------------------------------------------------


def test_sequential_unaided_is_locked_before_the_model_shows(tmp_path):
    clock = Clock()
    store, owner = new_store(tmp_path, clock=clock, n=3)
    token = store.add_reader(owner, "Dr A")
    step = store.next_case(token)
    case = step.case
    assert (step.modality, step.session, step.order_index, step.total) == ("unaided", 1, 0, 3)
    assert not step.model_visible and not store.model_visible(token, case)
    with pytest.raises(StudyStateError, match="open it"):
        store.submit(token, case, "unaided", RATING)
    store.open_case(token, case)
    with pytest.raises(StudyStateError, match="needs the committed unaided one"):
        store.submit(token, case, "aided", RATING)
    clock.t += 42.5
    stored = store.submit(token, case, "unaided", RATING | {"malignancy": 2})
    assert stored["reading_time_s"] == 42.5 and stored["model_visible"] is False
    assert store.model_visible(token, case)
    with pytest.raises(StudyStateError, match="unaided rating is committed and locked"):
        store.submit(token, case, "unaided", RATING | {"malignancy": 5})
    aided = store.next_case(token)
    assert (aided.case, aided.modality, aided.model_visible) == (case, "aided", True)
    assert aided.unaided["malignancy"] == 2, "the form starts from the reader's own rating"
    clock.t += 10.0
    store.open_case(token, case)  # the aided step is shown now: its clock starts here
    clock.t += 5.0
    revised = store.submit(token, case, "aided", RATING | {"malignancy": 4, "lung_rads": "4B"})
    assert revised["reading_time_s"] == 5.0 and revised["model_visible"] is True
    with pytest.raises(StudyStateError, match="aided rating is committed and locked"):
        store.submit(token, case, "aided", RATING)
    with pytest.raises(StudyStateError, match="nothing is due"):
        store.open_case(token, case)
    with pytest.raises(StudyStateError, match="not in this study"):
        store.open_case(token, "LIDC-IDRI-9999")
    assert [r["malignancy"] for r in store.my_ratings(token)] == [2, 4]
    assert store.progress(token).rated == {"unaided": 1, "aided": 1}


def test_without_hiding_the_model_shows_at_the_unaided_step(tmp_path):
    store, owner = new_store(tmp_path, n=2, hide_model_until_commit=False)
    token = store.add_reader(owner, "A")
    step = store.next_case(token)
    assert step.model_visible and store.model_visible(token, step.case)
    store.open_case(token, step.case)
    assert store.submit(token, step.case, "unaided", RATING)["model_visible"] is True


def test_a_reader_resumes_at_the_right_case_after_reopening(tmp_path):
    store, owner = new_store(tmp_path, n=5)
    token = store.add_reader(owner, "A")
    done = [rate(store, token, "unaided")["case"]]
    rate(store, token, "aided")
    done.append(rate(store, token, "unaided")["case"])
    reopened = StudyStore(store.db_path)
    step = reopened.next_case(token)
    assert (step.case, step.modality) == (done[1], "aided")
    reopened.open_case(token, step.case)
    reopened.submit(token, step.case, "aided", RATING)
    order = [
        r[0]
        for r in sqlite3.connect(store.db_path).execute(
            "SELECT case_id FROM case_order ORDER BY position"
        )
    ]
    assert order[:2] == done
    assert StudyStore(store.db_path).next_case(token).case == order[2]
    progress = reopened.progress(token)
    assert (progress.done, progress.total, progress.finished) == (4, 10, False)
    for _ in range(3):
        rate(reopened, token, "unaided")
        rate(reopened, token, "aided")
    assert reopened.next_case(token) is None and reopened.progress(token).finished


# -- the independent design ------------------------------------------------------------------


def test_independent_sessions_are_counterbalanced_by_reader_index(tmp_path):
    assert [session_modality("independent", i, 1) for i in range(4)] == [
        "unaided",
        "aided",
        "unaided",
        "aided",
    ]
    store, owner = new_store(tmp_path, n=3, design="independent")
    first, second = store.add_reader(owner, "R0"), store.add_reader(owner, "R1")
    a, b = store.next_case(first), store.next_case(second)
    assert (a.session, a.modality, a.model_visible) == (1, "unaided", False)
    assert (b.session, b.modality, b.model_visible) == (1, "aided", True)
    store.open_case(first, a.case)
    with pytest.raises(StudyStateError, match="session 2 starts when session 1 is complete"):
        store.submit(first, a.case, "aided", RATING)
    rate(store, first, "unaided")
    assert store.progress(first).session == 1
    rate(store, first, "unaided")
    rate(store, first, "unaided")
    step = store.next_case(first)
    assert (step.session, step.modality, step.model_visible) == (2, "aided", True)
    assert store.progress(first).to_dict()["done"] == 3
    for _ in range(3):
        rate(store, first, "aided")
    assert store.next_case(first) is None
    con = sqlite3.connect(store.db_path)
    finished = con.execute("SELECT count(*) FROM sessions WHERE finished_at IS NOT NULL").fetchone()
    assert finished[0] == 2, "both sessions of the first reader are marked finished"
    assert store.next_case(second).modality == "aided"


def test_session_2_opens_only_after_the_washout_even_across_a_restart(tmp_path):
    from stepping import FakeClock

    clock = FakeClock()
    clock.now = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    store, owner = new_store(tmp_path, clock=clock, n=2, design="independent", washout_days=7)
    assert store.washout_days == 7.0
    token = store.add_reader(owner, "R0")
    rate(store, token, "unaided")
    clock.now += 3600.0
    rate(store, token, "unaided")  # session 1 finishes now
    finished = clock.now
    clock.now += 6 * 86400.0
    with pytest.raises(WashoutError, match=r"session 2 \(aided\) opens on 2023-11-21 23:13 UTC"):
        store.next_case(token)
    progress = store.progress(token)
    assert (progress.finished, progress.session, progress.modality) == (False, 2, "aided")
    assert progress.opens_at.startswith("2023-11-21T23:13:20") and progress.done == 2
    some_case = store.my_ratings(token)[0]["case"]
    with pytest.raises(WashoutError):
        store.open_case(token, some_case)
    assert not store.model_visible(token, some_case)
    clock.now = finished + 7 * 86400.0 - 1.0
    reopened = StudyStore(store.db_path, clock=clock)  # the wait is in the database
    with pytest.raises(WashoutError) as caught:
        reopened.next_case(token)
    assert caught.value.opens_at == pytest.approx(finished + 7 * 86400.0, abs=1e-3)
    clock.now += 1.0
    step = reopened.next_case(token)
    assert (step.session, step.modality) == (2, "aided")
    assert reopened.progress(token).opens_at is None
    rate(reopened, token, "aided")
    rate(reopened, token, "aided")
    assert reopened.next_case(token) is None and reopened.progress(token).finished


# -- skipped cases ---------------------------------------------------------------------------


def test_a_skipped_case_is_recorded_not_offered_again_and_counted_as_done(tmp_path):
    clock = Clock()
    store, owner = new_store(tmp_path, clock=clock, n=3)
    token = store.add_reader(owner, "A")
    step = store.next_case(token)
    store.open_case(token, step.case)
    with pytest.raises(ValueError, match="give the reason"):
        store.skip(token, step.case, "  ")
    clock.t += 5.0
    reason = f"No CT at /data/{step.case}.nrrd."
    skip = store.skip(token, step.case, reason)
    assert skip["reason"] == reason and skip["modality"] == "unaided" and skip["session"] == 1
    assert skip["skipped_at"].startswith("2023-11-14T22:13:25")
    with pytest.raises(StudyStateError, match="skipped"):
        store.skip(token, step.case, reason)
    with pytest.raises(StudyStateError, match="nothing is due"):
        store.submit(token, step.case, "unaided", RATING)
    assert not store.model_visible(token, step.case), "a skipped case never shows the model"
    progress = store.progress(token)
    assert progress.skipped == {"unaided": 1, "aided": 1}, "no aided step without the unaided"
    assert (progress.done, progress.total, progress.finished) == (2, 6, False)
    reopened = StudyStore(store.db_path, clock=clock)  # the skip is on disk
    offered = []
    while (upcoming := reopened.next_case(token)) is not None:
        offered.append(upcoming.case)
        rate(reopened, token, upcoming.modality)
    assert step.case not in offered and len(offered) == 4
    assert reopened.progress(token).finished
    assert [r["skipped"] for r in reopened.readers(owner)] == [1]
    paths = reopened.export(owner, tmp_path / "out")
    with open(paths["skipped"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["reader"], r["case"], r["modality"], r["reason"]) for r in rows] == [
        ("A", step.case, "unaided", reason)
    ]
    assert reopened.snapshot(owner).skips[0]["reason"] == reason
    con = sqlite3.connect(store.db_path)
    assert con.execute("SELECT count(*) FROM events WHERE kind = 'skip'").fetchone()[0] == 1


def test_a_skip_in_session_1_comes_back_in_session_2_and_can_finish_a_session(tmp_path):
    store, owner = new_store(tmp_path, n=2, design="independent")
    token = store.add_reader(owner, "R0")
    rate(store, token, "unaided")
    last = store.next_case(token)
    store.skip(token, last.case, "CT unreadable")  # finishes session 1
    con = sqlite3.connect(store.db_path)
    finished = con.execute("SELECT finished_at FROM sessions WHERE session = 1").fetchone()[0]
    assert finished is not None
    aided = [rate(store, token, "aided")["case"] for _ in range(2)]
    assert last.case in aided, "a skip holds for its session only"
    progress = store.progress(token)
    assert progress.finished and progress.skipped == {"unaided": 1, "aided": 0}


def test_a_version_1_database_gains_the_skips_table_and_keeps_its_ratings(tmp_path):
    store, owner = new_store(tmp_path, n=2)
    token = store.add_reader(owner, "A")
    rate(store, token, "unaided")
    con = sqlite3.connect(store.db_path)
    with con:
        con.execute("DROP TABLE skips")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    reopened = StudyStore(store.db_path)
    assert len(reopened.my_ratings(token)) == 1
    step = reopened.next_case(token)
    reopened.skip(token, step.case, "CT unreadable")
    con = sqlite3.connect(store.db_path)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"


IDENTITY = {
    "series_uid": "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192",
    "patient_id": "LIDC-IDRI-0001",
    "study_date": "20000101",
}


def test_a_rating_records_the_ct_it_was_made_on_and_the_export_carries_it(tmp_path):
    store, owner = new_store(tmp_path, n=2)
    token = store.add_reader(owner, "A")
    step = store.next_case(token)
    store.open_case(token, step.case)
    committed = store.submit(token, step.case, "unaided", RATING, IDENTITY)
    assert {k: committed[k] for k in IDENTITY} == IDENTITY
    assert {k: store.my_ratings(token)[0][k] for k in IDENTITY} == IDENTITY
    rate(store, token, "aided")  # no identity given (a file without DICOM headers): ""
    paths = store.export(owner, tmp_path / "out")
    with open(paths["ratings"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert {k: rows[0][k] for k in IDENTITY} == IDENTITY
    assert {k: rows[1][k] for k in IDENTITY} == dict.fromkeys(IDENTITY, "")


def test_a_version_2_database_gains_the_identity_columns_and_an_archive_is_read_as_it_is(
    tmp_path,
):
    """Schema 2 -> 3 (the ratings' series UID, patient ID, study date): opened for writing, an
    old database is migrated and its ratings kept (identity empty); opened read-only (an
    archive) it is read as it is."""
    store, owner = new_store(tmp_path, n=2)
    token = store.add_reader(owner, "A")
    rate(store, token, "unaided")
    con = sqlite3.connect(store.db_path)
    with con:
        for column in IDENTITY:
            con.execute(f"ALTER TABLE ratings DROP COLUMN {column}")
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    archived = StudyStore(store.db_path, read_only=True)
    rows = archived.snapshot(owner).ratings
    assert len(rows) == 1 and {k: rows[0][k] for k in IDENTITY} == dict.fromkeys(IDENTITY)
    reopened = StudyStore(store.db_path)
    assert len(reopened.my_ratings(token)) == 1
    step = reopened.next_case(token)
    reopened.open_case(token, step.case)
    reopened.submit(token, step.case, "aided", RATING, IDENTITY)
    con = sqlite3.connect(store.db_path)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    kept = con.execute("SELECT series_uid, patient_id FROM ratings ORDER BY id").fetchall()
    assert kept == [(None, None), (IDENTITY["series_uid"], IDENTITY["patient_id"])]
    details = [r[0] for r in con.execute("SELECT detail FROM events WHERE kind = 'migrate'")]
    assert details == ["schema 2 -> 3: the ratings' series UID, patient ID and study date"]


# -- credentials -----------------------------------------------------------------------------


def test_readers_reach_only_their_own_ratings_and_the_owner_token_guards_the_rest(tmp_path):
    store, owner = new_store(tmp_path, n=4)
    token_a, token_b = store.add_reader(owner, "A"), store.add_reader(owner, "B")
    rated = rate(store, token_a, "unaided", malignancy=5)
    assert store.my_ratings(token_b) == []
    # B rating the same case writes B's rating; A's stays as A committed it.
    store.open_case(token_b, rated["case"])
    store.submit(token_b, rated["case"], "unaided", RATING | {"malignancy": 1})
    assert [r["malignancy"] for r in store.my_ratings(token_a)] == [5]
    assert [r["malignancy"] for r in store.my_ratings(token_b)] == [1]
    for call in (
        lambda: store.next_case("not-a-token"),
        lambda: store.submit("", rated["case"], "aided", RATING),
        lambda: store.progress(owner),  # the owner is not a reader
    ):
        with pytest.raises(PermissionError, match="unknown reader token"):
            call()
    for call in (
        lambda: store.export_rows(token_a),
        lambda: store.export_csv(token_a, tmp_path / "x.csv"),
        lambda: store.add_reader(token_a, "C"),
        lambda: store.readers(token_b),
    ):
        with pytest.raises(PermissionError, match="owner token"):
            call()
    assert not (tmp_path / "x.csv").exists()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("study.sqlite*"))  # with any WAL
    for token in (owner, token_a, token_b):
        assert token.encode() not in raw, "tokens are never stored"
    assert hash_token(token_a).encode() in raw
    new_a = store.reset_token(owner, "A")
    with pytest.raises(PermissionError):
        store.next_case(token_a)
    assert store.progress(new_a).rated["unaided"] == 1
    with pytest.raises(ValueError, match="exists"):
        store.add_reader(owner, "B")
    with pytest.raises(ValueError, match="reader name"):
        store.add_reader(owner, "Smith, J")
    assert [(r["name"], r["unaided"]) for r in store.readers(owner)] == [("A", 1), ("B", 1)]
    assert reader_link("t0k-_", 9000) == "http://127.0.0.1:9000/?token=t0k-_"
    assert not any(new_token().startswith("-") for _ in range(2000)), "argparse takes -x as a flag"


# -- export ----------------------------------------------------------------------------------


def test_export_writes_the_long_mrmc_table_and_every_field(tmp_path):
    store, owner = new_store(tmp_path, n=4)
    token = store.add_reader(owner, "A")
    for _ in range(4):
        rate(store, token, "unaided", malignancy=2, confidence=30)
        rate(store, token, "aided", malignancy=4, confidence=70.5)
    rows = store.export_rows(owner)
    assert len(rows) == 6, "the case without truth is left out of the ROC table"
    assert set(rows[0]) == set(SCORE_COLUMNS) and {r["truth"] for r in rows} == {0, 1}
    assert {(r["modality"], r["score"]) for r in rows} == {("unaided", 2), ("aided", 4)}
    assert {r["score"] for r in store.export_rows(owner, score="confidence")} == {30.0, 70.5}
    assert len(store.export_rows(owner, known_truth_only=False)) == 8
    with pytest.raises(ValueError, match="score must be"):
        store.export_rows(owner, score="probability")
    paths = store.export(owner, tmp_path / "out")
    with open(paths["scores"], newline="") as f:
        scores = list(csv.DictReader(f))
    assert list(scores[0]) == list(SCORE_COLUMNS) and len(scores) == 6
    with open(paths["ratings"], newline="") as f:
        ratings = list(csv.DictReader(f))
    assert len(ratings) == 8 and {"opened_at", "reading_time_s", "order_seed"} <= set(ratings[0])
    assert set(CHARACTERISTICS) <= set(ratings[0]) and ratings[-1]["truth"] == ""


def test_a_database_is_never_overwritten_and_its_version_is_checked(tmp_path):
    store, _ = new_store(tmp_path, n=2)
    with pytest.raises(FileExistsError):
        create_study(store.db_path, tmp_path / "study.json")
    with pytest.raises(FileNotFoundError, match="no study database"):
        StudyStore(tmp_path / "none.sqlite")
    con = sqlite3.connect(store.db_path)
    with con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(ValueError, match="schema version 99"):
        StudyStore(store.db_path)
    con = sqlite3.connect(store.db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- durability ------------------------------------------------------------------------------

CHILD = """
import sys
from NoduleMalignancyLib.study.store import StudyStore
store, token = StudyStore(sys.argv[1]), sys.argv[2]
rating = {k: 1 for k in ("subtlety", "internal_structure", "calcification", "sphericity",
          "margin", "lobulation", "spiculation", "texture", "malignancy")} | {"confidence": 9}
while (step := store.next_case(token)) is not None:
    store.open_case(token, step.case)
    store.submit(token, step.case, step.modality, rating)
    print("ack", step.case, step.modality, flush=True)
"""


def test_every_acknowledged_rating_survives_sigkill(tmp_path):
    store, owner = new_store(tmp_path, n=200)
    token = store.add_reader(owner, "A")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store.db_path), token],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked = []
    try:
        for line in child.stdout:
            acked.append(tuple(line.split()[1:]))
            if len(acked) == 15:
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.wait(timeout=30)
    assert len(acked) == 15, child.stderr.read()
    assert child.returncode == -signal.SIGKILL
    con = sqlite3.connect(store.db_path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    reopened = StudyStore(store.db_path)
    committed = {(r["case"], r["modality"]) for r in reopened.my_ratings(token)}
    assert set(acked) <= committed and len(committed) >= 15
    step = reopened.next_case(token)  # the reader carries on where the killed server stopped
    assert (step.case, step.modality) not in committed


# -- the command line ------------------------------------------------------------------------


def test_the_study_commands_create_add_readers_and_export(tmp_path, capsys):
    from NoduleMalignancyLib.cli import main

    study_file, db = write_study(tmp_path, study_dict(3)), tmp_path / "db" / "s.sqlite"
    assert main(["study", "create", "--study", str(study_file), "--db", str(db)]) == 0
    owner = capsys.readouterr().out.split("owner token")[1].split(": ", 1)[1].split()[0]
    argv = ["study", "add-reader", "--db", str(db), "--owner-token", owner, "--name", "Dr A"]
    assert main([*argv, "--port", "8123"]) == 0
    out = capsys.readouterr().out
    token = out.split("token ")[1].split()[0]
    assert f"http://127.0.0.1:8123/?token={token}" in out
    store = StudyStore(db)
    for _ in range(3):
        rate(store, token, "unaided")
        rate(store, token, "aided")
    assert (
        main(["study", "add-reader", "--db", str(db), "--owner-token", token, "--name", "B"]) == 2
    )
    assert "owner token" in capsys.readouterr().err
    out_dir = tmp_path / "export"
    export = ["study", "export", "--db", str(db), "--owner-token", owner, "--out", str(out_dir)]
    assert main([*export, "--score", "confidence"]) == 0
    with open(out_dir / "scores.csv", newline="") as f:
        assert [r["score"] for r in csv.DictReader(f)] == ["50.0"] * 4  # 2 cases with truth
    assert (out_dir / "ratings.csv").exists()
    assert main(["study", "create", "--study", str(study_file), "--db", str(db)]) == 2
    assert "never overwritten" in capsys.readouterr().err
