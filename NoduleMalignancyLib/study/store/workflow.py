"""The reading study's workflow rules: which case and step a reader is due, and when.

The rules (the design, ``study/design.py``): every committed rating is locked; in the
sequential design the aided rating of a case needs its unaided one first, and with
``hide_model_until_commit`` the model is visible only after the unaided commit; in the
independent design session 2 starts when session 1 is complete and the study file's
``washout_days`` have passed since it finished (before that, :class:`WashoutError` says when).
Time comes from the store's ``clock`` (tests pass a fake one).

Skips: a skipped case is not offered to that reader in that session again and counts as
done-but-skipped in their progress. In the sequential design a skip at the unaided step skips the
aided one too (the aided rating needs the unaided one).

Why a class apart from the store: the store (``study_store.py``) opens the connections, checks
the tokens and writes; these rules only read one connection's state and say what is due.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from ...core.errors import StudyError
from ..design import MODALITIES
from .schema import iso_time


class StudyStateError(StudyError):
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
            f"session 2 ({modality}) opens on {readable_time(opens_at)}: the washout of "
            f"{washout_days:g} days after session 1 (finished {readable_time(finished)}) is not over"
        )


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


def readable_time(epoch: float) -> str:
    """A time as readers read it in messages: 2026-12-09 14:03 UTC."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def public_rating(record: dict) -> dict:
    """A rating as the reader and the UI see it (no internal ids, booleans as booleans)."""
    out = {k: v for k, v in record.items() if k not in ("id", "reader_id")}
    out["case"] = out.pop("case_id")
    out["model_visible"] = bool(out["model_visible"])
    return out


class Workflow:
    """The study's rules over one connection's state (every method reads; none commits)."""

    def __init__(
        self,
        design: str,
        hide_model_until_commit: bool,
        washout_days: float,
        clock: Callable[[], float],
    ) -> None:
        self.design = design
        self.hide_model_until_commit = hide_model_until_commit
        self.washout_days = washout_days
        self.clock = clock

    def session_modality(self, con, reader_id: int, session: int) -> str:
        return con.execute(
            "SELECT modality FROM sessions WHERE reader_id = ? AND session = ?",
            (reader_id, session),
        ).fetchone()[0]

    def first_unrated(self, con, reader_id: int, session: int, modality: str):
        return con.execute(
            "SELECT o.case_id FROM case_order o WHERE o.reader_id = ? AND o.session = ? "
            "AND NOT EXISTS (SELECT 1 FROM ratings g WHERE g.reader_id = o.reader_id "
            "AND g.case_id = o.case_id AND g.modality = ?) "
            "AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.reader_id = o.reader_id "
            "AND k.case_id = o.case_id AND k.session = o.session) ORDER BY o.position LIMIT 1",
            (reader_id, session, modality),
        ).fetchone()

    def has(self, con, reader_id: int, case: str, modality: str) -> bool:
        return (
            con.execute(
                "SELECT 1 FROM ratings WHERE reader_id = ? AND case_id = ? AND modality = ?",
                (reader_id, case, modality),
            ).fetchone()
            is not None
        )

    def skipped(self, con, reader_id: int, case: str, session: int) -> bool:
        return (
            con.execute(
                "SELECT 1 FROM skips WHERE reader_id = ? AND case_id = ? AND session = ?",
                (reader_id, case, session),
            ).fetchone()
            is not None
        )

    def skipped_steps(self, con, reader_id: int) -> dict[str, int]:
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

    def step(self, con, reader_id: int) -> tuple[int, str, str] | None:
        """(session, modality, case) of the reader's next rating, or None when finished."""
        if self.design == "sequential":
            row = self.first_unrated(con, reader_id, 1, "aided")
            if row is None:
                return None
            case = row[0]
            return 1, "aided" if self.has(con, reader_id, case, "unaided") else "unaided", case
        for session in (1, 2):
            modality = self.session_modality(con, reader_id, session)
            row = self.first_unrated(con, reader_id, session, modality)
            if row is not None:
                return session, modality, row[0]
        return None

    def current_case_step(self, con, reader_id: int, case: str) -> tuple[int, str] | None:
        """(session, modality) due for this case now; None when its every step is rated."""
        if con.execute("SELECT 1 FROM cases WHERE id = ?", (case,)).fetchone() is None:
            raise StudyStateError(f"case {case!r} is not in this study")
        if self.design == "sequential":
            if self.skipped(con, reader_id, case, 1):
                return None
            if not self.has(con, reader_id, case, "unaided"):
                return 1, "unaided"
            return None if self.has(con, reader_id, case, "aided") else (1, "aided")
        step = self.step(con, reader_id)
        if step is None:
            return None
        session, modality, _ = step
        self.check_washout(con, reader_id, session)
        if self.has(con, reader_id, case, modality) or self.skipped(con, reader_id, case, session):
            return None
        return session, modality

    def case_step(self, con, reader_id: int, case: str, submitting: str | None = None):
        """The due step of ``case``, or a StudyStateError saying why nothing is due."""
        if submitting and self.has(con, reader_id, case, submitting):
            raise StudyStateError(f"case {case}: the {submitting} rating is committed and locked")
        step = self.current_case_step(con, reader_id, case)
        if step is None:
            raise StudyStateError(f"case {case}: nothing is due now (rated or skipped)")
        return step

    def out_of_turn(self, case: str, session: int, expected: str, modality: str) -> str:
        if self.design == "sequential":
            return f"case {case}: the aided rating needs the committed unaided one first"
        return (
            f"case {case}: this reader's session {session} is {expected}; the {modality} "
            "ratings belong to their other session (session 2 starts when session 1 is complete)"
        )

    def washout_end(self, con, reader_id: int, session: int) -> tuple[float, str] | None:
        """(epoch when session 2 opens, when session 1 finished) while the washout runs."""
        if session != 2 or not self.washout_days:
            return None
        finished = con.execute(
            "SELECT finished_at FROM sessions WHERE reader_id = ? AND session = 1", (reader_id,)
        ).fetchone()[0]
        opens = datetime.fromisoformat(finished).timestamp() + 86400.0 * self.washout_days
        return (opens, finished) if self.clock() < opens else None

    def check_washout(self, con, reader_id: int, session: int) -> None:
        """Raise :class:`WashoutError` while the reader's session 2 waits for the washout."""
        waiting = self.washout_end(con, reader_id, session)
        if waiting is not None:
            modality = self.session_modality(con, reader_id, session)
            raise WashoutError(waiting[0], waiting[1], self.washout_days, modality)

    def visible(self, modality: str) -> bool:
        """Aided steps show the model; the sequential unaided step only if the study says so."""
        if self.design == "independent":
            return modality == "aided"
        return modality == "aided" or not self.hide_model_until_commit

    @staticmethod
    def step_columns(con, reader_id: int, case: str, session: int, modality: str) -> dict:
        """The columns that place a rating or a skip: reader, case, session, step and the case's
        position in the reader's shuffled order of that session."""
        order_index = con.execute(
            "SELECT position FROM case_order WHERE reader_id = ? AND session = ? AND case_id = ?",
            (reader_id, session, case),
        ).fetchone()[0]
        return {
            "reader_id": reader_id,
            "case_id": case,
            "session": session,
            "modality": modality,
            "order_index": order_index,
        }

    def finish_session_if_done(self, con, reader_id: int, session: int, now: float) -> None:
        """Stamp the session finished once every case is rated or skipped (a rating or skip
        was just written in this transaction)."""
        if self.session_done(con, reader_id, session):
            con.execute(
                "UPDATE sessions SET finished_at = ? WHERE reader_id = ? AND session = ?",
                (iso_time(now), reader_id, session),
            )

    def session_done(self, con, reader_id: int, session: int) -> bool:
        modality = self.session_modality(con, reader_id, session)
        last = "aided" if modality == "both" else modality
        return self.first_unrated(con, reader_id, session, last) is None

    def assignment(self, con, reader_id: int, session: int, modality: str, case: str):
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
            unaided = public_rating(dict(found))
        return Assignment(
            case=case,
            ct_path=row["ct_path"],
            points=json.loads(row["points_json"]),
            session=session,
            modality=modality,
            order_index=row["position"],
            total=row["total"],
            model_visible=self.visible(modality),
            unaided=unaided,
        )
