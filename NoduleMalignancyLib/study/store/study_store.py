"""The SQLite store of a reading study: readers, case orders and every rating (docs/DESIGN.md §14).

Why SQLite in WAL mode with ``synchronous=FULL``: a reader's rating is the study's data; each
``submit`` is one transaction committed (and fsynced) before it returns, so a killed server or a
power cut loses at most the rating being typed. Every call opens its own connection, so one
store object serves a threaded web server and a second process (the owner's export) at once.

Credentials: the owner token (made with the study) manages readers and exports; each reader
has their own token and sees and changes only their own ratings. Tokens are 256-bit random
strings; only their SHA-256 is stored (enough for high-entropy tokens, and it lets the store
look a reader up by hash). A wrong token raises ``PermissionError``.

Workflow rules (the design, ``study/design.py``): every committed rating is locked; in the
sequential design the aided rating of a case needs its unaided one first, and with
``hide_model_until_commit`` the model is visible only after the unaided commit; in the
independent design session 2 starts when session 1 is complete and the study file's
``washout_days`` have passed since it finished (before that, :class:`WashoutError` says when).
Time comes from the store's ``clock`` (tests pass a fake one).

Skips: a case whose CT will not load must not stall a reader. :meth:`StudyStore.skip` records
who skipped which case, in which session and at which step, why and when (one transaction);
the case is not offered to that reader in that session again and counts as done-but-skipped in
their progress. In the sequential design a skip at the unaided step skips the aided one too (the
aided rating needs the unaided one). The owner's export lists every skip (``skipped.csv``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

from ..core.atomic import write_csv
from .design import (
    MODALITIES,
    SESSIONS,
    Study,
    case_order,
    load_study,
    order_seed,
    parse_study,
    session_modality,
)
from .ratings import CHARACTERISTICS, validate_rating

SCHEMA_VERSION = 2  # 2: the skips table (version 1 databases gain it when opened)
DEFAULT_PORT = 8080  # the browser station's default (trame's)
SCORES = ("malignancy", "confidence")
SCORE_COLUMNS = ("reader", "case", "modality", "score", "truth")
RATING_COLUMNS = (
    "reader",
    "reader_index",
    "case",
    "truth",
    "session",
    "modality",
    "order_index",
    "order_seed",
    *CHARACTERISTICS,
    "confidence",
    "lung_rads",
    "comment",
    "model_visible",
    "opened_at",
    "submitted_at",
    "reading_time_s",
)
SKIP_COLUMNS = (
    "reader",
    "reader_index",
    "case",
    "truth",
    "session",
    "modality",
    "order_index",
    "reason",
    "skipped_at",
)
MAX_REASON = 2000
READER_NAME = re.compile(r"^[^\s,;\"'\x00-\x1f][^,;\"'\x00-\x1f]{0,63}$")

# Added in schema version 2 (version 1 databases gain it when opened).
_SKIPS_TABLE = """CREATE TABLE skips (
        reader_id INTEGER NOT NULL REFERENCES readers(id),
        case_id TEXT NOT NULL REFERENCES cases(id),
        session INTEGER NOT NULL,
        modality TEXT NOT NULL CHECK (modality IN ('unaided', 'aided')),
        order_index INTEGER NOT NULL,
        reason TEXT NOT NULL,
        skipped_at TEXT NOT NULL,
        PRIMARY KEY (reader_id, case_id, session),
        FOREIGN KEY (reader_id, session, case_id)
            REFERENCES case_order(reader_id, session, case_id))"""

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE study (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        design TEXT NOT NULL CHECK (design IN ('sequential', 'independent')),
        seed INTEGER NOT NULL,
        hide_model_until_commit INTEGER NOT NULL,
        required TEXT NOT NULL,
        study_file TEXT NOT NULL,
        study_json TEXT NOT NULL,
        study_sha256 TEXT NOT NULL,
        owner_token_hash TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE cases (
        id TEXT PRIMARY KEY,
        position INTEGER NOT NULL UNIQUE,
        ct TEXT NOT NULL,
        ct_path TEXT NOT NULL,
        points_json TEXT NOT NULL,
        truth INTEGER CHECK (truth IN (0, 1)))""",
    """CREATE TABLE readers (
        id INTEGER PRIMARY KEY,
        reader_index INTEGER NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE sessions (
        reader_id INTEGER NOT NULL REFERENCES readers(id),
        session INTEGER NOT NULL CHECK (session IN (1, 2)),
        modality TEXT NOT NULL CHECK (modality IN ('both', 'unaided', 'aided')),
        order_seed INTEGER NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        PRIMARY KEY (reader_id, session))""",
    """CREATE TABLE case_order (
        reader_id INTEGER NOT NULL,
        session INTEGER NOT NULL,
        position INTEGER NOT NULL,
        case_id TEXT NOT NULL REFERENCES cases(id),
        PRIMARY KEY (reader_id, session, position),
        UNIQUE (reader_id, session, case_id),
        FOREIGN KEY (reader_id, session) REFERENCES sessions(reader_id, session))""",
    """CREATE TABLE opens (
        reader_id INTEGER NOT NULL REFERENCES readers(id),
        case_id TEXT NOT NULL REFERENCES cases(id),
        modality TEXT NOT NULL CHECK (modality IN ('unaided', 'aided')),
        session INTEGER NOT NULL,
        opened_epoch REAL NOT NULL,
        opened_at TEXT NOT NULL,
        PRIMARY KEY (reader_id, case_id, modality))""",
    """CREATE TABLE ratings (
        id INTEGER PRIMARY KEY,
        reader_id INTEGER NOT NULL REFERENCES readers(id),
        case_id TEXT NOT NULL REFERENCES cases(id),
        session INTEGER NOT NULL,
        modality TEXT NOT NULL CHECK (modality IN ('unaided', 'aided')),
        order_index INTEGER NOT NULL,
        subtlety INTEGER CHECK (subtlety BETWEEN 1 AND 5),
        internal_structure INTEGER CHECK (internal_structure BETWEEN 1 AND 4),
        calcification INTEGER CHECK (calcification BETWEEN 1 AND 6),
        sphericity INTEGER CHECK (sphericity BETWEEN 1 AND 5),
        margin INTEGER CHECK (margin BETWEEN 1 AND 5),
        lobulation INTEGER CHECK (lobulation BETWEEN 1 AND 5),
        spiculation INTEGER CHECK (spiculation BETWEEN 1 AND 5),
        texture INTEGER CHECK (texture BETWEEN 1 AND 5),
        malignancy INTEGER NOT NULL CHECK (malignancy BETWEEN 1 AND 5),
        confidence REAL NOT NULL CHECK (confidence BETWEEN 0 AND 100),
        lung_rads TEXT CHECK (lung_rads IN ('1', '2', '3', '4A', '4B', '4X')),
        comment TEXT,
        model_visible INTEGER NOT NULL,
        opened_at TEXT NOT NULL,
        submitted_at TEXT NOT NULL,
        reading_time_s REAL NOT NULL,
        UNIQUE (reader_id, case_id, modality),
        FOREIGN KEY (reader_id, session, case_id)
            REFERENCES case_order(reader_id, session, case_id))""",
    _SKIPS_TABLE,
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        reader_id INTEGER REFERENCES readers(id),
        case_id TEXT REFERENCES cases(id),
        modality TEXT,
        detail TEXT)""",
)


class StudyStateError(ValueError):
    """The study's workflow does not allow this now (a locked rating, aided before unaided...)."""


class WashoutError(StudyStateError):
    """The reader's session 2 is due but opens only after the washout: ``opens_at`` says when.

    Why an error and not "no case": the reader is not finished, and must be told when to come
    back (the station and the Slicer panel show the message).
    """

    def __init__(self, opens_at: float, finished_at: str, washout_days: float, modality: str):
        self.opens_at = opens_at  # epoch seconds
        finished = datetime.fromisoformat(finished_at).timestamp()
        super().__init__(
            f"session 2 ({modality}) opens on {_readable(opens_at)}: the washout of "
            f"{washout_days:g} days after session 1 (finished {_readable(finished)}) is not over"
        )


@dataclass(frozen=True)
class Snapshot:
    """The study file, the readers and every rating as one read saw them (for the analysis).

    Why one read: the exported files and the summary computed from them must show the same
    ratings while readers keep submitting.
    """

    study: Study  # parsed from the study file's text recorded at creation
    readers: list[dict]  # name, reader_index, created_at, unaided, aided, skipped (counts)
    ratings: list[dict]  # the rows of ratings.csv (RATING_COLUMNS)
    skips: list[dict] = field(default_factory=list)  # the rows of skipped.csv (SKIP_COLUMNS)


@dataclass(frozen=True)
class Assignment:
    """A case as one reader should see it now: no truth, the step to rate, whether the model shows.

    ``unaided`` holds the reader's own locked unaided rating at the sequential aided step, so the
    form can start from it.
    """

    case: str
    ct_path: str
    points: list[dict]
    session: int
    modality: str
    order_index: int
    total: int
    model_visible: bool
    unaided: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """Where a reader stands: ratings committed and steps skipped per modality, and the current
    step (None: done). A skipped step counts as done: it will never be rated."""

    reader: str
    design: str
    cases: int
    rated: dict[str, int]
    finished: bool
    session: int | None
    modality: str | None
    opens_at: str | None = None  # session 2 waits for the washout until then (ISO, UTC)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(self.rated.values()) + sum(self.skipped.values())

    @property
    def total(self) -> int:
        return len(MODALITIES) * self.cases

    def to_dict(self) -> dict:
        return {**asdict(self), "done": self.done, "total": self.total}


def new_token() -> str:
    """A 256-bit URL-safe token that never starts with "-".

    Why: tokens are pasted after ``--owner-token`` on the command line, where argparse reads a
    leading "-" as an option (1 token in 64 would break the command).
    """
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def hash_token(token: str) -> str:
    """SHA-256 hex of a token: what the store keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def reader_link(token: str, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> str:
    """The browser station's address that signs a reader in (the token is URL-safe already)."""
    return f"http://{host}:{port}/?{urlencode({'token': token})}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def _readable(epoch: float) -> str:
    """A time as readers read it in messages: 2026-12-09 14:03 UTC."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _connect(db_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(db_path), timeout=15.0, isolation_level=None)
    con.row_factory = sqlite3.Row
    mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        con.close()
        raise RuntimeError(f"{db_path}: SQLite refused WAL mode (got {mode}); use a local disk")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    return con


def create_study(
    db_path: str | Path,
    study_file: str | Path,
    check_files: bool = False,
    clock: Callable[[], float] = time.time,
) -> str:
    """A new study database from a study file; returns the owner token (shown once, never stored).

    Refuses an existing database: a study's ratings are never overwritten.
    """
    db_path = Path(db_path)
    study = load_study(study_file, check_files=check_files)
    if db_path.exists():
        raise FileExistsError(f"{db_path} exists: a study database is never overwritten")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    text = Path(study_file).read_text(encoding="utf-8")
    owner_token = new_token()
    now = _iso(clock())
    con = _connect(db_path)
    try:
        con.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            con.execute(statement)
        con.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("schema_version", str(SCHEMA_VERSION)), ("created_at", now)],
        )
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
    """One study database: the owner's and the readers' operations (each call one connection)."""

    def __init__(self, db_path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.db_path = Path(db_path)
        self.clock = clock
        if not self.db_path.is_file():
            raise FileNotFoundError(f"no study database at {self.db_path} (study create makes one)")
        with self._read() as con:
            try:
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                row = con.execute("SELECT * FROM study").fetchone()
            except sqlite3.DatabaseError as exc:
                raise ValueError(f"{self.db_path} is not a study database ({exc})") from None
        if meta.get("schema_version") == "1":
            self._migrate_from_1()
            meta["schema_version"] = str(SCHEMA_VERSION)
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise ValueError(
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

    def _migrate_from_1(self) -> None:
        """Version 1 -> 2: add the (empty) skips table; every rating stays as it is."""
        with self._write() as con:
            if (
                con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
                == "1"
            ):
                con.execute(_SKIPS_TABLE)
                con.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
                self._event(con, "migrate", detail="schema 1 -> 2: skips table")

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = _connect(self.db_path)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, taken with the write lock (checks and writes see one state)."""
        con = _connect(self.db_path)
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
            (_iso(self.clock()), kind, reader_id, case, modality, detail),
        )

    # -- credentials -------------------------------------------------------------------------

    @staticmethod
    def _owner(con: sqlite3.Connection, owner_token: str) -> None:
        stored = con.execute("SELECT owner_token_hash FROM study").fetchone()[0]
        if not isinstance(owner_token, str) or not hmac.compare_digest(
            stored, hash_token(owner_token)
        ):
            raise PermissionError("wrong owner token: reader management and export need it")

    @staticmethod
    def _reader(con: sqlite3.Connection, token: str) -> sqlite3.Row:
        row = None
        if isinstance(token, str) and token:
            row = con.execute(
                "SELECT * FROM readers WHERE token_hash = ?", (hash_token(token),)
            ).fetchone()
        if row is None:
            raise PermissionError("unknown reader token: ask the study owner for your link")
        return row

    # -- owner -------------------------------------------------------------------------------

    def add_reader(self, owner_token: str, name: str) -> str:
        """Register a reader, draw and record their case orders; returns their token (once)."""
        if not isinstance(name, str) or not READER_NAME.match(name.strip()):
            raise ValueError(
                f"reader name {name!r}: 1-64 characters, no commas, semicolons, quotes or "
                "control characters"
            )
        name = name.strip()
        token = new_token()
        with self._write() as con:
            self._owner(con, owner_token)
            if con.execute("SELECT 1 FROM readers WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"a reader named {name!r} exists (reset_token gives a new link)")
            index = con.execute("SELECT count(*) FROM readers").fetchone()[0]
            reader_id = con.execute(
                "INSERT INTO readers (reader_index, name, token_hash, created_at) "
                "VALUES (?, ?, ?, ?)",
                (index, name, hash_token(token), _iso(self.clock())),
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
            self._owner(con, owner_token)
            row = con.execute("SELECT id FROM readers WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ValueError(f"no reader named {name!r}")
            con.execute(
                "UPDATE readers SET token_hash = ? WHERE id = ?", (hash_token(token), row[0])
            )
            self._event(con, "reset_token", row[0])
        return token

    def readers(self, owner_token: str) -> list[dict]:
        """Every reader with their index and how many ratings they committed per modality."""
        with self._read() as con:
            self._owner(con, owner_token)
            return _reader_rows(con)

    def snapshot(self, owner_token: str) -> Snapshot:
        """The study file, readers and ratings in one read (the owner's: it holds the truth)."""
        with self._read() as con:
            self._owner(con, owner_token)
            row = con.execute("SELECT study_file, study_json FROM study").fetchone()
            readers, ratings, skips = _reader_rows(con), _rating_rows(con), _skip_rows(con)
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
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        return _score_rows(self._rating_rows(owner_token), score, known_truth_only)

    def export_csv(self, owner_token: str, path: str | Path) -> Path:
        """Every field of every rating (with reader, truth, order and times) as CSV, atomically."""
        return write_csv(path, self._rating_rows(owner_token), RATING_COLUMNS, _cell)

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
        ratings it analyses); by default a new read.
        """
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        out_dir = Path(out_dir)
        with self._read() as con:  # one read: every file shows the same ratings
            self._owner(con, owner_token)
            if snapshot is None:
                ratings, skips = _rating_rows(con), _skip_rows(con)
            else:
                ratings, skips = snapshot.ratings, snapshot.skips
        scores = _score_rows(ratings, score, known_truth_only=True)
        paths = {
            "ratings": write_csv(out_dir / "ratings.csv", ratings, RATING_COLUMNS, _cell),
            "scores": write_csv(out_dir / "scores.csv", scores, SCORE_COLUMNS, _cell),
            "skipped": write_csv(out_dir / "skipped.csv", skips, SKIP_COLUMNS, _cell),
        }
        with self._write() as con:
            self._event(con, "export", detail=json.dumps({"score": score, "rows": len(scores)}))
        return paths

    def _rating_rows(self, owner_token: str) -> list[dict]:
        with self._read() as con:
            self._owner(con, owner_token)
            return _rating_rows(con)

    # -- reader ------------------------------------------------------------------------------

    def next_case(self, token: str) -> Assignment | None:
        """The reader's current case and step (resumes after any restart); None when done."""
        with self._read() as con:
            reader = self._reader(con, token)
            step = self._step(con, reader["id"])
            if step is None:
                return None
            self._check_washout(con, reader["id"], step[0])
            return self._assignment(con, reader["id"], *step)

    def open_case(self, token: str, case: str) -> Assignment:
        """Record when the reader opened ``case`` for its current step (the first open counts)."""
        with self._write() as con:
            reader = self._reader(con, token)
            session, modality = self._case_step(con, reader["id"], case)
            now = self.clock()
            new = con.execute(
                "INSERT OR IGNORE INTO opens VALUES (?, ?, ?, ?, ?, ?)",
                (reader["id"], case, modality, session, now, _iso(now)),
            ).rowcount
            con.execute(
                "UPDATE sessions SET started_at = ? "
                "WHERE reader_id = ? AND session = ? AND started_at IS NULL",
                (_iso(now), reader["id"], session),
            )
            self._event(con, "open", reader["id"], case, modality, "first" if new else "again")
            return self._assignment(con, reader["id"], session, modality, case)

    def submit(self, token: str, case: str, modality: str, rating: dict) -> dict:
        """Validate and commit one rating; it is on disk when this returns, and locked."""
        with self._write() as con:
            reader = self._reader(con, token)  # a wrong token hears nothing about the rating
            if modality not in MODALITIES:
                raise ValueError(
                    f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}"
                )
            clean = validate_rating(rating, self.required)
            rid = reader["id"]
            session, expected = self._case_step(con, rid, case, submitting=modality)
            if modality != expected:
                raise StudyStateError(self._out_of_turn(case, session, expected, modality))
            opened = con.execute(
                "SELECT opened_epoch, opened_at FROM opens "
                "WHERE reader_id = ? AND case_id = ? AND modality = ?",
                (rid, case, modality),
            ).fetchone()
            if opened is None:
                raise StudyStateError(f"case {case}: open it (open_case) before submitting")
            now = self.clock()
            visible = self._visible(modality)
            order_index = self._order_index(con, rid, session, case)
            record = {
                "reader_id": rid,
                "case_id": case,
                "session": session,
                "modality": modality,
                "order_index": order_index,
                **clean,
                "model_visible": int(visible),
                "opened_at": opened["opened_at"],
                "submitted_at": _iso(now),
                "reading_time_s": round(max(0.0, now - opened["opened_epoch"]), 3),
            }
            _insert(con, "ratings", record)
            if self.design == "sequential" and modality == "unaided":
                # The model appears now: the aided reading time runs from this commit.
                con.execute(
                    "INSERT OR IGNORE INTO opens VALUES (?, ?, 'aided', ?, ?, ?)",
                    (rid, case, session, now, _iso(now)),
                )
            self._event(con, "submit", rid, case, modality)
            self._finish_session_if_done(con, rid, session, now)
        return _public(record)

    def skip(self, token: str, case: str, reason: str) -> dict:
        """Record that the reader cannot read ``case`` at its current step (e.g. its CT will not
        load) and move on: committed when this returns, never offered again in this session.

        ``reason``: what went wrong, as the reader was told it (required, up to 2000 characters).
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("skip: give the reason (e.g. the message of the CT that did not load)")
        reason = reason.strip()[:MAX_REASON]
        with self._write() as con:
            reader = self._reader(con, token)
            rid = reader["id"]
            session, modality = self._case_step(con, rid, case)
            now = self.clock()
            order_index = self._order_index(con, rid, session, case)
            record = {
                "reader_id": rid,
                "case_id": case,
                "session": session,
                "modality": modality,
                "order_index": order_index,
                "reason": reason,
                "skipped_at": _iso(now),
            }
            _insert(con, "skips", record)
            self._event(con, "skip", rid, case, modality, reason)
            self._finish_session_if_done(con, rid, session, now)
        out = {k: v for k, v in record.items() if k != "reader_id"}
        out["case"] = out.pop("case_id")
        return out

    def model_visible(self, token: str, case: str) -> bool:
        """Whether the reader may see the model's output for ``case`` now."""
        with self._read() as con:
            reader = self._reader(con, token)
            try:
                step = self._current_case_step(con, reader["id"], case)
            except WashoutError:  # nothing is open to read now
                return False
            if step is None:  # every step of this case is rated (shown) or skipped (not)
                return not con.execute(
                    "SELECT 1 FROM skips WHERE reader_id = ? AND case_id = ?",
                    (reader["id"], case),
                ).fetchone()
            return self._visible(step[1])

    def progress(self, token: str) -> Progress:
        """Committed ratings per modality and the current session and step."""
        with self._read() as con:
            reader = self._reader(con, token)
            counts = dict(
                con.execute(
                    "SELECT modality, count(*) FROM ratings WHERE reader_id = ? GROUP BY modality",
                    (reader["id"],),
                ).fetchall()
            )
            skipped = self._skipped_steps(con, reader["id"])
            n_cases = con.execute("SELECT count(*) FROM cases").fetchone()[0]
            step = self._step(con, reader["id"])
            opens = None if step is None else self._washout_end(con, reader["id"], step[0])
        return Progress(
            reader=reader["name"],
            design=self.design,
            cases=n_cases,
            rated={m: counts.get(m, 0) for m in MODALITIES},
            finished=step is None,
            session=None if step is None else step[0],
            modality=None if step is None else step[1],
            opens_at=None if opens is None else _iso(opens[0]),
            skipped=skipped,
        )

    def my_ratings(self, token: str) -> list[dict]:
        """The reader's own committed ratings, in the order they were submitted."""
        with self._read() as con:
            reader = self._reader(con, token)
            rows = con.execute(
                "SELECT * FROM ratings WHERE reader_id = ? ORDER BY id", (reader["id"],)
            ).fetchall()
        return [_public(dict(r)) for r in rows]

    # -- workflow state ----------------------------------------------------------------------

    def _session_modality(self, con, reader_id: int, session: int) -> str:
        return con.execute(
            "SELECT modality FROM sessions WHERE reader_id = ? AND session = ?",
            (reader_id, session),
        ).fetchone()[0]

    def _first_unrated(self, con, reader_id: int, session: int, modality: str):
        return con.execute(
            "SELECT o.case_id FROM case_order o WHERE o.reader_id = ? AND o.session = ? "
            "AND NOT EXISTS (SELECT 1 FROM ratings g WHERE g.reader_id = o.reader_id "
            "AND g.case_id = o.case_id AND g.modality = ?) "
            "AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.reader_id = o.reader_id "
            "AND k.case_id = o.case_id AND k.session = o.session) ORDER BY o.position LIMIT 1",
            (reader_id, session, modality),
        ).fetchone()

    def _has(self, con, reader_id: int, case: str, modality: str) -> bool:
        return (
            con.execute(
                "SELECT 1 FROM ratings WHERE reader_id = ? AND case_id = ? AND modality = ?",
                (reader_id, case, modality),
            ).fetchone()
            is not None
        )

    def _skipped(self, con, reader_id: int, case: str, session: int) -> bool:
        return (
            con.execute(
                "SELECT 1 FROM skips WHERE reader_id = ? AND case_id = ? AND session = ?",
                (reader_id, case, session),
            ).fetchone()
            is not None
        )

    def _skipped_steps(self, con, reader_id: int) -> dict[str, int]:
        """Steps per modality that will never be rated because of a skip."""
        counts = dict(
            con.execute(
                "SELECT modality, count(*) FROM skips WHERE reader_id = ? GROUP BY modality",
                (reader_id,),
            ).fetchall()
        )
        skipped = {m: counts.get(m, 0) for m in MODALITIES}
        if self.design == "sequential":  # an unaided skip leaves the aided step unreadable too
            skipped["aided"] += skipped["unaided"]
        return skipped

    def _step(self, con, reader_id: int) -> tuple[int, str, str] | None:
        """(session, modality, case) of the reader's next rating, or None when finished."""
        if self.design == "sequential":
            row = self._first_unrated(con, reader_id, 1, "aided")
            if row is None:
                return None
            case = row[0]
            return 1, "aided" if self._has(con, reader_id, case, "unaided") else "unaided", case
        for session in (1, 2):
            modality = self._session_modality(con, reader_id, session)
            row = self._first_unrated(con, reader_id, session, modality)
            if row is not None:
                return session, modality, row[0]
        return None

    def _current_case_step(self, con, reader_id: int, case: str) -> tuple[int, str] | None:
        """(session, modality) due for this case now; None when its every step is rated."""
        if con.execute("SELECT 1 FROM cases WHERE id = ?", (case,)).fetchone() is None:
            raise StudyStateError(f"case {case!r} is not in this study")
        if self.design == "sequential":
            if self._skipped(con, reader_id, case, 1):
                return None
            if not self._has(con, reader_id, case, "unaided"):
                return 1, "unaided"
            return None if self._has(con, reader_id, case, "aided") else (1, "aided")
        step = self._step(con, reader_id)
        if step is None:
            return None
        session, modality, _ = step
        self._check_washout(con, reader_id, session)
        if self._has(con, reader_id, case, modality) or self._skipped(
            con, reader_id, case, session
        ):
            return None
        return session, modality

    def _case_step(self, con, reader_id: int, case: str, submitting: str | None = None):
        """The due step of ``case``, or a StudyStateError saying why nothing is due."""
        if submitting and self._has(con, reader_id, case, submitting):
            raise StudyStateError(f"case {case}: the {submitting} rating is committed and locked")
        step = self._current_case_step(con, reader_id, case)
        if step is None:
            raise StudyStateError(f"case {case}: nothing is due now (rated or skipped)")
        return step

    def _out_of_turn(self, case: str, session: int, expected: str, modality: str) -> str:
        if self.design == "sequential":
            return f"case {case}: the aided rating needs the committed unaided one first"
        return (
            f"case {case}: this reader's session {session} is {expected}; the {modality} "
            "ratings belong to their other session (session 2 starts when session 1 is complete)"
        )

    def _washout_end(self, con, reader_id: int, session: int) -> tuple[float, str] | None:
        """(epoch when session 2 opens, when session 1 finished) while the washout runs."""
        if session != 2 or not self.washout_days:
            return None
        finished = con.execute(
            "SELECT finished_at FROM sessions WHERE reader_id = ? AND session = 1", (reader_id,)
        ).fetchone()[0]
        opens = datetime.fromisoformat(finished).timestamp() + 86400.0 * self.washout_days
        return (opens, finished) if self.clock() < opens else None

    def _check_washout(self, con, reader_id: int, session: int) -> None:
        """Raise :class:`WashoutError` while the reader's session 2 waits for the washout."""
        waiting = self._washout_end(con, reader_id, session)
        if waiting is not None:
            modality = self._session_modality(con, reader_id, session)
            raise WashoutError(waiting[0], waiting[1], self.washout_days, modality)

    def _visible(self, modality: str) -> bool:
        """Aided steps show the model; the sequential unaided step only if the study says so."""
        if self.design == "independent":
            return modality == "aided"
        return modality == "aided" or not self.hide_model_until_commit

    @staticmethod
    def _order_index(con, reader_id: int, session: int, case: str) -> int:
        """The case's position in the reader's shuffled order of that session."""
        return con.execute(
            "SELECT position FROM case_order WHERE reader_id = ? AND session = ? AND case_id = ?",
            (reader_id, session, case),
        ).fetchone()[0]

    def _finish_session_if_done(self, con, reader_id: int, session: int, now: float) -> None:
        """Stamp the session finished once every case is rated or skipped (a rating or skip
        was just written in this transaction)."""
        if self._session_done(con, reader_id, session):
            con.execute(
                "UPDATE sessions SET finished_at = ? WHERE reader_id = ? AND session = ?",
                (_iso(now), reader_id, session),
            )

    def _session_done(self, con, reader_id: int, session: int) -> bool:
        modality = self._session_modality(con, reader_id, session)
        last = "aided" if modality == "both" else modality
        return self._first_unrated(con, reader_id, session, last) is None

    def _assignment(self, con, reader_id: int, session: int, modality: str, case: str):
        row = con.execute(
            "SELECT c.ct_path, c.points_json, o.position, "
            "(SELECT count(*) FROM case_order WHERE reader_id = o.reader_id "
            "AND session = o.session) AS total "
            "FROM cases c JOIN case_order o ON o.case_id = c.id "
            "WHERE o.reader_id = ? AND o.session = ? AND c.id = ?",
            (reader_id, session, case),
        ).fetchone()
        unaided = None
        if self.design == "sequential" and modality == "aided":
            found = con.execute(
                "SELECT * FROM ratings WHERE reader_id = ? AND case_id = ? "
                "AND modality = 'unaided'",
                (reader_id, case),
            ).fetchone()
            unaided = _public(dict(found))
        return Assignment(
            case=case,
            ct_path=row["ct_path"],
            points=json.loads(row["points_json"]),
            session=session,
            modality=modality,
            order_index=row["position"],
            total=row["total"],
            model_visible=self._visible(modality),
            unaided=unaided,
        )


def _reader_rows(con: sqlite3.Connection) -> list[dict]:
    rows = con.execute(
        "SELECT r.name, r.reader_index, r.created_at, "
        "sum(g.modality = 'unaided') AS unaided, sum(g.modality = 'aided') AS aided, "
        "(SELECT count(*) FROM skips k WHERE k.reader_id = r.id) AS skipped "
        "FROM readers r LEFT JOIN ratings g ON g.reader_id = r.id "
        "GROUP BY r.id ORDER BY r.reader_index"
    ).fetchall()
    return [{**dict(r), "unaided": r["unaided"] or 0, "aided": r["aided"] or 0} for r in rows]


def _skip_rows(con: sqlite3.Connection) -> list[dict]:
    rows = con.execute(
        'SELECT r.name AS reader, r.reader_index, k.case_id AS "case", c.truth, k.session, '
        "k.modality, k.order_index, k.reason, k.skipped_at "
        "FROM skips k JOIN readers r ON r.id = k.reader_id JOIN cases c ON c.id = k.case_id "
        "ORDER BY r.reader_index, c.position, k.session"
    ).fetchall()
    return [dict(r) for r in rows]


def _rating_rows(con: sqlite3.Connection) -> list[dict]:
    rows = con.execute(
        'SELECT r.name AS reader, r.reader_index, g.case_id AS "case", c.truth, '
        "g.session, g.modality, g.order_index, s.order_seed, "
        f"{', '.join('g.' + f for f in CHARACTERISTICS)}, g.confidence, g.lung_rads, "
        "g.comment, g.model_visible, g.opened_at, g.submitted_at, g.reading_time_s "
        "FROM ratings g JOIN readers r ON r.id = g.reader_id "
        "JOIN cases c ON c.id = g.case_id "
        "JOIN sessions s ON s.reader_id = g.reader_id AND s.session = g.session "
        "ORDER BY r.reader_index, c.position, g.modality = 'aided'"
    ).fetchall()
    return [dict(r) for r in rows]


def _score_rows(ratings: list[dict], score: str, known_truth_only: bool) -> list[dict]:
    return [
        {k: r[k] for k in ("reader", "case", "modality", "truth")} | {"score": r[score]}
        for r in ratings
        if r["truth"] is not None or not known_truth_only
    ]


def _insert(con, table: str, record: dict) -> None:
    """One row of ``record``'s columns (names are this module's own, never user input)."""
    columns, marks = ", ".join(record), ", ".join("?" * len(record))
    con.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(record.values()))


def _public(record: dict) -> dict:
    """A rating as the reader and the UI see it (no internal ids, booleans as booleans)."""
    out = {k: v for k, v in record.items() if k not in ("id", "reader_id")}
    out["case"] = out.pop("case_id")
    out["model_visible"] = bool(out["model_visible"])
    return out


def _cell(value):
    return "" if value is None else value
