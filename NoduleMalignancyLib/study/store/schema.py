"""The study database's tables, its schema version and the migrations between versions.

Why SQLite in WAL mode with ``synchronous=FULL``: a reader's rating is the study's data; each
``submit`` is one transaction committed (and fsynced) before it returns, so a killed server or a
power cut loses at most the rating being typed. Every call opens its own connection
(:func:`connect`), so one store serves a threaded web server and a second process (the owner's
export) at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from ...core.errors import InputError

# 2: the skips table; 3: the identity of the CT each rating was made on (older databases gain
# them when opened for writing: migrate).
SCHEMA_VERSION = 3
# Added in schema version 3: the series UID, patient ID and study date of the CT the station
# showed when the rating was committed ("" for a file without DICOM headers, NULL for ratings
# committed before version 3). Why: a rating must say which CT it was made on (issue 28).
IDENTITY_COLUMNS = ("series_uid", "patient_id", "study_date")

# Added in schema version 2 (version 1 databases gain it when opened).
SKIPS_TABLE = """CREATE TABLE skips (
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

TABLES = (
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
        series_uid TEXT,
        patient_id TEXT,
        study_date TEXT,
        UNIQUE (reader_id, case_id, modality),
        FOREIGN KEY (reader_id, session, case_id)
            REFERENCES case_order(reader_id, session, case_id))""",
    SKIPS_TABLE,
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        reader_id INTEGER REFERENCES readers(id),
        case_id TEXT REFERENCES cases(id),
        modality TEXT,
        detail TEXT)""",
)


def iso_time(epoch: float) -> str:
    """A time as the database stores it: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def connect_read_only(db_path: Path) -> sqlite3.Connection:
    """A connection that cannot write (``mode=ro``): the owner's export and analysis, and the
    identity check of a file before anything changes it.

    A WAL database in a folder nobody may write (an archived study) cannot get its ``-shm``
    index, so ``mode=ro`` fails there; it is then opened ``immutable`` (no locks, no index),
    which is right only while nothing writes it: refused when a write-ahead log is left over,
    whose ratings the main file does not hold yet.
    """
    uri = f"file:{quote(str(Path(db_path).absolute()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=15.0, isolation_level=None)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        wal = Path(f"{db_path}-wal")
        if wal.exists() and wal.stat().st_size:
            raise InputError(
                f"{db_path}: cannot be read where it is ({exc}), and its write-ahead log "
                f"{wal.name} holds ratings not yet in the file: open it once in a folder the "
                "study may write"
            ) from None
        con = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    con.row_factory = sqlite3.Row
    return con


def check_study_file(db_path: Path) -> None:
    """Refuse a file that is not a study database before anything writes to it (no WAL
    switch, no migration): a corrupt file, or another application's SQLite database."""
    try:
        con = connect_read_only(db_path)
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{db_path} is not a study database ({exc})") from None
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = None
        if {"meta", "study"} <= tables:
            found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = found[0] if found else None
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{db_path} is not a study database ({exc})") from None
    finally:
        con.close()
    if version is None:
        raise InputError(
            f"{db_path} is not a study database (an SQLite file without the study's tables: "
            "another application's?); nothing was changed"
        )


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection in WAL mode, fsyncing every commit, with foreign keys enforced."""
    con = sqlite3.connect(str(db_path), timeout=15.0, isolation_level=None)
    con.row_factory = sqlite3.Row
    mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        con.close()
        raise RuntimeError(f"{db_path}: SQLite refused WAL mode (got {mode}); use a local disk")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    return con


def create_tables(con: sqlite3.Connection, created_at: str) -> None:
    """Every table of the current schema and its ``meta`` rows (inside the caller's transaction)."""
    for statement in TABLES:
        con.execute(statement)
    con.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("schema_version", str(SCHEMA_VERSION)), ("created_at", created_at)],
    )


def migrate(con: sqlite3.Connection, log_event: Callable[[str], None]) -> None:
    """Bring an older database to :data:`SCHEMA_VERSION`, one version at a time; every rating
    stays as it is. 1 -> 2: the (empty) skips table; 2 -> 3: the ratings' identity columns
    (NULL for the ratings already there).

    ``con`` holds the write lock; a second process that migrated first leaves nothing to do.
    ``log_event(detail)`` records each step in the events table.
    """
    version = int(con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    if version == 1:
        con.execute(SKIPS_TABLE)
        log_event("schema 1 -> 2: skips table")
        version = 2
    if version == 2:
        have = {r[1] for r in con.execute("PRAGMA table_info(ratings)")}
        for column in IDENTITY_COLUMNS:
            if column not in have:
                con.execute(f"ALTER TABLE ratings ADD COLUMN {column} TEXT")
        log_event("schema 2 -> 3: the ratings' series UID, patient ID and study date")
        version = 3
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))


def insert(con: sqlite3.Connection, table: str, record: dict) -> None:
    """One row of ``record``'s columns (names are the store's own, never user input)."""
    columns, marks = ", ".join(record), ", ".join("?" * len(record))
    con.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(record.values()))
