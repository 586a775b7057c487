"""The study store's operations: create a study, then the owner's and the readers' calls.

One :class:`StudyStore` is one study database (docs/DESIGN.md §14); every call opens its own
connection (``schema.py``) and each change is one transaction, so a rating is on disk when
``submit`` returns. The credentials are in ``tokens.py``, the rules of what is due in
``workflow.py``, the owner's tables and files in ``export.py``.

Skips: a case whose CT will not load must not stall a reader. :meth:`StudyStore.skip` records
who skipped which case, in which session and at which step, why and when (one transaction).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ...core.errors import InputError, MissingFileError, OutputExistsError
from ..design import (
    MODALITIES,
    SESSIONS,
    case_order,
    load_study,
    order_seed,
    parse_study,
    session_modality,
)
from ..ratings import validate_rating
from .export import (
    Snapshot,
    check_score,
    rating_rows,
    reader_rows,
    score_rows,
    skip_rows,
    write_exports,
    write_ratings_csv,
)
from .schema import (
    IDENTITY_COLUMNS,
    SCHEMA_VERSION,
    check_study_file,
    connect,
    connect_read_only,
    create_tables,
    insert,
    iso_time,
    migrate,
)
from .tokens import check_owner, find_reader, hash_token, new_token
from .workflow import Assignment, Progress, StudyStateError, WashoutError, Workflow, public_rating

MAX_REASON = 2000
_OLDER_VERSIONS = ("1", "2")  # migrated when opened for writing (schema.migrate)
_READ_ONLY_VERSIONS = ("2",)  # read as they are when opened read-only (an archive)
READER_NAME = re.compile(r"^[^\s,;\"'\x00-\x1f][^,;\"'\x00-\x1f]{0,63}$")


def create_study(
    db_path: str | Path,
    study_file: str | Path,
    check_files: bool = False,
    clock: Callable[[], float] = time.time,
) -> str:
    """A new study database from a study file; returns the owner token (shown once, never stored).

    Refuses an existing database: a study's ratings are never overwritten. The file is made
    readable by its owner only (0600; SQLite gives its ``-wal`` and ``-shm`` the same mode): it
    holds the truth labels.
    """
    db_path = Path(db_path)
    study = load_study(study_file, check_files=check_files)
    exists = OutputExistsError(f"{db_path} exists: a study database is never overwritten")
    if db_path.exists():
        raise exists
    db_path.parent.mkdir(parents=True, exist_ok=True)
    text = Path(study_file).read_text(encoding="utf-8")
    owner_token = new_token()
    now = iso_time(clock())
    try:
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise exists from None
    con = connect(db_path)
    try:
        con.execute("BEGIN IMMEDIATE")
        create_tables(con, now)
        con.execute(
            "INSERT INTO study VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                study.name,
                study.design,
                study.seed,
                int(study.hide_model_until_commit),
                json.dumps(list(study.required)),
                str(study.path),
                text,
                hashlib.sha256(text.encode("utf-8")).hexdigest(),
                hash_token(owner_token),
                now,
            ),
        )
        con.executemany(
            "INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    c.id,
                    i,
                    c.ct,
                    str(c.ct_path),
                    json.dumps([{"name": p.name, "point": list(p.lps)} for p in c.points]),
                    c.truth,
                )
                for i, c in enumerate(study.cases)
            ],
        )
        con.execute("INSERT INTO events (at, kind, detail) VALUES (?, 'create', ?)", (now, text))
        con.execute("COMMIT")
    except BaseException:
        con.close()
        for leftover in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            leftover.unlink(missing_ok=True)
        raise
    con.close()
    return owner_token


class StudyStore:
    """One study database: the owner's and the readers' operations (each call one connection).

    ``read_only``: never write (the owner's export and analysis; an archived study in a folder
    nobody may write): every connection is ``mode=ro`` and a change raises ``InputError``.
    A file that is not a study database is refused before anything is written to it.
    """

    def __init__(
        self,
        db_path: str | Path,
        clock: Callable[[], float] = time.time,
        *,
        read_only: bool = False,
    ) -> None:
        self.db_path = Path(db_path)
        self.clock = clock
        self.read_only = read_only
        if not self.db_path.is_file():
            raise MissingFileError(f"no study database at {self.db_path} (study create makes one)")
        check_study_file(self.db_path)
        with self._read() as con:
            try:
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                row = con.execute("SELECT * FROM study").fetchone()
            except sqlite3.DatabaseError as exc:
                raise InputError(f"{self.db_path} is not a study database ({exc})") from None
        version = meta.get("schema_version")
        if version in _OLDER_VERSIONS and not read_only:
            self._migrate()
            version = meta["schema_version"] = str(SCHEMA_VERSION)
        # An archive cannot be migrated: one that has the skips table is read as it is.
        readable = (str(SCHEMA_VERSION), *(_READ_ONLY_VERSIONS if read_only else ()))
        if version not in readable:
            raise InputError(
                f"{self.db_path}: schema version {meta.get('schema_version')} "
                f"(this code reads version {SCHEMA_VERSION})"
            )
        self.design: str = row["design"]
        self.seed: int = row["seed"]
        self.hide_model_until_commit = bool(row["hide_model_until_commit"])
        self.required: tuple[str, ...] = tuple(json.loads(row["required"]))
        self.name: str = row["name"]
        source = row["study_file"]  # the recorded study file holds what has no column
        recorded = parse_study(json.loads(row["study_json"]), Path(source).parent, source=source)
        self.washout_days: float = recorded.washout_days
        self.rules = Workflow(self.design, self.hide_model_until_commit, self.washout_days, clock)

    def _migrate(self) -> None:
        with self._write() as con:
            migrate(con, lambda detail: self._event(con, "migrate", detail=detail))

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = connect_read_only(self.db_path) if self.read_only else connect(self.db_path)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, taken with the write lock (checks and writes see one state)."""
        if self.read_only:
            raise InputError(f"{self.db_path} is open read-only: this would change it")
        con = connect(self.db_path)
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def _event(self, con, kind: str, reader_id=None, case=None, modality=None, detail=None):
        con.execute(
            "INSERT INTO events (at, kind, reader_id, case_id, modality, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (iso_time(self.clock()), kind, reader_id, case, modality, detail),
        )

    # -- owner -------------------------------------------------------------------------------

    def add_reader(self, owner_token: str, name: str) -> str:
        """Register a reader, draw and record their case orders; returns their token (once)."""
        if not isinstance(name, str) or not READER_NAME.match(name.strip()):
            raise InputError(
                f"reader name {name!r}: 1-64 characters, no commas, semicolons, quotes or "
                "control characters"
            )
        name = name.strip()
        token = new_token()
        with self._write() as con:
            check_owner(con, owner_token)
            if con.execute("SELECT 1 FROM readers WHERE name = ?", (name,)).fetchone():
                raise InputError(f"a reader named {name!r} exists (reset_token gives a new link)")
            index = con.execute("SELECT count(*) FROM readers").fetchone()[0]
            reader_id = con.execute(
                "INSERT INTO readers (reader_index, name, token_hash, created_at) "
                "VALUES (?, ?, ?, ?)",
                (index, name, hash_token(token), iso_time(self.clock())),
            ).lastrowid
            case_ids = [
                r[0] for r in con.execute("SELECT id FROM cases ORDER BY position").fetchall()
            ]
            for session in SESSIONS[self.design]:
                seed = order_seed(self.seed, reader_id, session)
                con.execute(
                    "INSERT INTO sessions (reader_id, session, modality, order_seed) "
                    "VALUES (?, ?, ?, ?)",
                    (reader_id, session, session_modality(self.design, index, session), seed),
                )
                con.executemany(
                    "INSERT INTO case_order VALUES (?, ?, ?, ?)",
                    [(reader_id, session, i, c) for i, c in enumerate(case_order(case_ids, seed))],
                )
            self._event(con, "add_reader", reader_id)
        return token

    def reset_token(self, owner_token: str, name: str) -> str:
        """A new token for a reader who lost their link; the old one stops working."""
        token = new_token()
        with self._write() as con:
            check_owner(con, owner_token)
            row = con.execute("SELECT id FROM readers WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise InputError(f"no reader named {name!r}")
            con.execute(
                "UPDATE readers SET token_hash = ? WHERE id = ?", (hash_token(token), row[0])
            )
            self._event(con, "reset_token", row[0])
        return token

    def readers(self, owner_token: str) -> list[dict]:
        """Every reader with their index and how many ratings they committed per modality."""
        with self._read() as con:
            check_owner(con, owner_token)
            return reader_rows(con)

    def snapshot(self, owner_token: str) -> Snapshot:
        """The study file, readers and ratings in one read (the owner's: it holds the truth)."""
        with self._read() as con:
            check_owner(con, owner_token)
            row = con.execute("SELECT study_file, study_json FROM study").fetchone()
            readers, ratings, skips = reader_rows(con), rating_rows(con), skip_rows(con)
        source = row["study_file"]
        study = parse_study(json.loads(row["study_json"]), Path(source).parent, source=source)
        return Snapshot(study, readers, ratings, skips)

    def export_rows(
        self, owner_token: str, score: str = "malignancy", known_truth_only: bool = True
    ) -> list[dict]:
        """The long table ``reader,case,modality,score,truth`` the MRMC analysis reads.

        ``score``: "malignancy" (the reader's 1-5 rating, the default: the LIDC scale the model
        is trained on) or "confidence" (0-100, finer-grained, fewer ties for AUROC). Cases
        without truth cannot enter an ROC analysis and are left out unless asked for.
        """
        check_score(score)
        return score_rows(self._rating_rows(owner_token), score, known_truth_only)

    def export_csv(self, owner_token: str, path: str | Path) -> Path:
        """Every field of every rating (with reader, truth, order and times) as CSV, atomically."""
        return write_ratings_csv(path, self._rating_rows(owner_token))

    def export(
        self,
        owner_token: str,
        out_dir: str | Path,
        score: str = "malignancy",
        snapshot: Snapshot | None = None,
    ) -> dict:
        """``ratings.csv`` (every field), ``scores.csv`` (the long MRMC table) and
        ``skipped.csv`` (every skipped case with its reason) in ``out_dir``.

        ``snapshot``: write the ratings of that earlier read (the analysis exports exactly the
        ratings it analyzes); by default a new read.
        """
        check_score(score)
        out_dir = Path(out_dir)
        with self._read() as con:  # one read: every file shows the same ratings
            check_owner(con, owner_token)
            if snapshot is None:
                ratings, skips = rating_rows(con), skip_rows(con)
            else:
                ratings, skips = snapshot.ratings, snapshot.skips
        paths, _ = write_exports(out_dir, ratings, skips, score)
        return paths  # nothing is written to the database: an archived study exports too

    def _rating_rows(self, owner_token: str) -> list[dict]:
        with self._read() as con:
            check_owner(con, owner_token)
            return rating_rows(con)

    # -- reader ------------------------------------------------------------------------------

    def next_case(self, token: str) -> Assignment | None:
        """The reader's current case and step (resumes after any restart); None when done."""
        with self._read() as con:
            reader = find_reader(con, token)
            step = self.rules.step(con, reader["id"])
            if step is None:
                return None
            self.rules.check_washout(con, reader["id"], step[0])
            return self.rules.assignment(con, reader["id"], *step)

    def open_case(self, token: str, case: str) -> Assignment:
        """Record when the reader was shown ``case`` at its current step: its reading time runs
        from there (the first showing counts; the sequential aided step too, not the unaided
        commit: a station restarted in between must not add its downtime)."""
        with self._write() as con:
            reader = find_reader(con, token)
            session, modality = self.rules.case_step(con, reader["id"], case)
            now = self.clock()
            new = con.execute(
                "INSERT OR IGNORE INTO opens VALUES (?, ?, ?, ?, ?, ?)",
                (reader["id"], case, modality, session, now, iso_time(now)),
            ).rowcount
            con.execute(
                "UPDATE sessions SET started_at = ? "
                "WHERE reader_id = ? AND session = ? AND started_at IS NULL",
                (iso_time(now), reader["id"], session),
            )
            self._event(con, "open", reader["id"], case, modality, "first" if new else "again")
            return self.rules.assignment(con, reader["id"], session, modality, case)

    def submit(
        self,
        token: str,
        case: str,
        modality: str,
        rating: dict,
        identity: dict | None = None,
    ) -> dict:
        """Validate and commit one rating; it is on disk when this returns, and locked.

        ``identity``: the series UID, patient ID and study date of the CT shown (the station's
        reading of it; ``files/ct_input.input_identity``), stored with the rating.
        """
        with self._write() as con:
            reader = find_reader(con, token)  # a wrong token hears nothing about the rating
            if modality not in MODALITIES:
                raise InputError(
                    f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}"
                )
            clean = validate_rating(rating, self.required)
            rid = reader["id"]
            session, expected = self.rules.case_step(con, rid, case, submitting=modality)
            if modality != expected:
                raise StudyStateError(self.rules.out_of_turn(case, session, expected, modality))
            opened = con.execute(
                "SELECT opened_epoch, opened_at FROM opens "
                "WHERE reader_id = ? AND case_id = ? AND modality = ?",
                (rid, case, modality),
            ).fetchone()
            if opened is None:
                raise StudyStateError(f"case {case}: open it (open_case) before submitting")
            now = self.clock()
            record = {
                **self.rules.step_columns(con, rid, case, session, modality),
                **clean,
                "model_visible": int(self.rules.visible(modality)),
                "opened_at": opened["opened_at"],
                "submitted_at": iso_time(now),
                "reading_time_s": round(max(0.0, now - opened["opened_epoch"]), 3),
                **{c: str((identity or {}).get(c) or "") for c in IDENTITY_COLUMNS},
            }
            insert(con, "ratings", record)
            self._event(con, "submit", rid, case, modality)
            self.rules.finish_session_if_done(con, rid, session, now)
        return public_rating(record)

    def skip(self, token: str, case: str, reason: str) -> dict:
        """Record that the reader cannot read ``case`` at its current step (e.g. its CT will not
        load) and move on: committed when this returns, never offered again in this session.

        ``reason``: what went wrong, as the reader was told it (required, up to 2000 characters).
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InputError("skip: give the reason (e.g. the message of the CT that did not load)")
        reason = reason.strip()[:MAX_REASON]
        with self._write() as con:
            reader = find_reader(con, token)
            rid = reader["id"]
            session, modality = self.rules.case_step(con, rid, case)
            now = self.clock()
            record = {
                **self.rules.step_columns(con, rid, case, session, modality),
                "reason": reason,
                "skipped_at": iso_time(now),
            }
            insert(con, "skips", record)
            self._event(con, "skip", rid, case, modality, reason)
            self.rules.finish_session_if_done(con, rid, session, now)
        out = {k: v for k, v in record.items() if k != "reader_id"}
        out["case"] = out.pop("case_id")
        return out

    def model_visible(self, token: str, case: str) -> bool:
        """Whether the reader may see the model's output for ``case`` now."""
        with self._read() as con:
            reader = find_reader(con, token)
            try:
                step = self.rules.current_case_step(con, reader["id"], case)
            except WashoutError:  # nothing is open to read now
                return False
            if step is None:  # every step of this case is rated (shown) or skipped (not)
                return not con.execute(
                    "SELECT 1 FROM skips WHERE reader_id = ? AND case_id = ?",
                    (reader["id"], case),
                ).fetchone()
            return self.rules.visible(step[1])

    def progress(self, token: str) -> Progress:
        """Committed ratings per modality and the current session and step."""
        with self._read() as con:
            reader = find_reader(con, token)
            counts = dict(
                con.execute(
                    "SELECT modality, count(*) FROM ratings WHERE reader_id = ? GROUP BY modality",
                    (reader["id"],),
                ).fetchall()
            )
            skipped = self.rules.skipped_steps(con, reader["id"])
            n_cases = con.execute("SELECT count(*) FROM cases").fetchone()[0]
            step = self.rules.step(con, reader["id"])
            opens = None if step is None else self.rules.washout_end(con, reader["id"], step[0])
        return Progress(
            reader=reader["name"],
            design=self.design,
            cases=n_cases,
            rated={m: counts.get(m, 0) for m in MODALITIES},
            finished=step is None,
            session=None if step is None else step[0],
            modality=None if step is None else step[1],
            opens_at=None if opens is None else iso_time(opens[0]),
            skipped=skipped,
        )

    def my_ratings(self, token: str) -> list[dict]:
        """The reader's own committed ratings, in the order they were submitted."""
        with self._read() as con:
            reader = find_reader(con, token)
            rows = con.execute(
                "SELECT * FROM ratings WHERE reader_id = ? ORDER BY id", (reader["id"],)
            ).fetchall()
        return [public_rating(dict(r)) for r in rows]
