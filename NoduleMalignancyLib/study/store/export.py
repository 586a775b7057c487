"""What the study owner takes away: the rating, score and skip tables and their CSV files.

``ratings.csv`` holds every field of every rating (with reader, truth, order and times),
``scores.csv`` the long table ``reader,case,modality,score,truth`` the MRMC analysis reads
(``study/mrmc``), ``skipped.csv`` every skipped case with its reason. Every cell goes through
``files/csv_cells.py``: a reader's comment ``=HYPERLINK(...)`` is text, not a formula.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from ...files.csv_cells import write_csv
from ..design import Study
from ..ratings import CHARACTERISTICS
from .schema import IDENTITY_COLUMNS

SCORES = ("malignancy", "confidence")
SCORE_COLUMNS = ("reader", "case", "modality", "score", "truth")
# Which reading a row is: the reader, the case and its truth, the session, step and position.
_READING_COLUMNS = (
    "reader",
    "reader_index",
    "case",
    "truth",
    "session",
    "modality",
    "order_index",
)
RATING_COLUMNS = (
    *_READING_COLUMNS,
    "order_seed",
    *CHARACTERISTICS,
    "confidence",
    "lung_rads",
    "comment",
    "model_visible",
    "opened_at",
    "submitted_at",
    "reading_time_s",
    *IDENTITY_COLUMNS,  # the CT the rating was made on (empty before schema version 3)
)
SKIP_COLUMNS = (
    *_READING_COLUMNS,
    "reason",
    "skipped_at",
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


def reader_rows(con: sqlite3.Connection) -> list[dict]:
    rows = con.execute(
        "SELECT r.name, r.reader_index, r.created_at, "
        "sum(g.modality = 'unaided') AS unaided, sum(g.modality = 'aided') AS aided, "
        "(SELECT count(*) FROM skips k WHERE k.reader_id = r.id) AS skipped "
        "FROM readers r LEFT JOIN ratings g ON g.reader_id = r.id "
        "GROUP BY r.id ORDER BY r.reader_index"
    ).fetchall()
    return [{**dict(r), "unaided": r["unaided"] or 0, "aided": r["aided"] or 0} for r in rows]


def skip_rows(con: sqlite3.Connection) -> list[dict]:
    rows = con.execute(
        'SELECT r.name AS reader, r.reader_index, k.case_id AS "case", c.truth, k.session, '
        "k.modality, k.order_index, k.reason, k.skipped_at "
        "FROM skips k JOIN readers r ON r.id = k.reader_id JOIN cases c ON c.id = k.case_id "
        "ORDER BY r.reader_index, c.position, k.session"
    ).fetchall()
    return [dict(r) for r in rows]


def rating_rows(con: sqlite3.Connection) -> list[dict]:
    have = {r[1] for r in con.execute("PRAGMA table_info(ratings)")}
    identity = ", ".join(  # a version 2 archive, read as it is, has no identity columns
        f"g.{c}" if c in have else f"NULL AS {c}" for c in IDENTITY_COLUMNS
    )
    rows = con.execute(
        'SELECT r.name AS reader, r.reader_index, g.case_id AS "case", c.truth, '
        "g.session, g.modality, g.order_index, s.order_seed, "
        f"{', '.join('g.' + f for f in CHARACTERISTICS)}, g.confidence, g.lung_rads, "
        f"g.comment, g.model_visible, g.opened_at, g.submitted_at, g.reading_time_s, {identity} "
        "FROM ratings g JOIN readers r ON r.id = g.reader_id "
        "JOIN cases c ON c.id = g.case_id "
        "JOIN sessions s ON s.reader_id = g.reader_id AND s.session = g.session "
        "ORDER BY r.reader_index, c.position, g.modality = 'aided'"
    ).fetchall()
    return [dict(r) for r in rows]


def score_rows(ratings: list[dict], score: str, known_truth_only: bool) -> list[dict]:
    return [
        {k: r[k] for k in ("reader", "case", "modality", "truth")} | {"score": r[score]}
        for r in ratings
        if r["truth"] is not None or not known_truth_only
    ]


def _cell(value):
    return "" if value is None else value


def check_score(score: str) -> None:
    """Refuse a score name that is not one of :data:`SCORES`."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


def write_ratings_csv(path: str | Path, ratings: list[dict]) -> Path:
    """Every field of every rating as CSV, atomically."""
    return write_csv(path, ratings, RATING_COLUMNS, _cell)


def write_exports(
    out_dir: Path, ratings: list[dict], skips: list[dict], score: str
) -> tuple[dict[str, Path], int]:
    """``ratings.csv``, ``scores.csv`` (cases with truth only) and ``skipped.csv`` in ``out_dir``;
    returns their paths by kind and the number of score rows."""
    scores = score_rows(ratings, score, known_truth_only=True)
    paths = {
        "ratings": write_ratings_csv(out_dir / "ratings.csv", ratings),
        "scores": write_csv(out_dir / "scores.csv", scores, SCORE_COLUMNS, _cell),
        "skipped": write_csv(out_dir / "skipped.csv", skips, SKIP_COLUMNS, _cell),
    }
    return paths, len(scores)
