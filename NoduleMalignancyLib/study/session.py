"""One reader's reading-study session, in plain Python (docs/DESIGN.md §14, §15).

Why here and not in a page or a panel: signing in with a token, finding the reader's next case,
the rating form, skipping a case whose CT did not load and submitting are the rules of the study;
the browser station (``station/study_app.py``) and the Slicer module's study panel
(``study/scene_reading.py``) only show them. Every rule stays in the store (``study/store.py``:
order, locking, washout, when the model may be shown); this module never decides them itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .design import load_study
from .form import form_to_rating, rating_form
from .ratings import RatingError
from .store import Assignment, StudyStateError, StudyStore

__all__ = ["StudySession", "open_store"]


def open_store(
    study_file: str | Path, db_path: str | Path, clock: Callable[[], float] = time.time
) -> StudyStore:
    """The study's store, after checking that the study file is the one it was made from."""
    study = load_study(study_file)
    store = StudyStore(db_path, clock=clock)
    if store.name != study.name or store.design != study.design or store.seed != study.seed:
        raise ValueError(
            f"{db_path} was made from another study file than {study_file} "
            f"(database: {store.name!r}, {store.design}, seed {store.seed})"
        )
    return store


class StudySession:
    """A signed-in reader: their current case and step, their form and their progress.

    :raises PermissionError: a token the store does not know.
    """

    def __init__(self, store: StudyStore, token: str):
        self.store = store
        self.token = token
        self.reader = store.progress(token).reader  # checks the token
        self.fields = rating_form(store.required)
        self.assignment: Assignment | None = None
        self.load_error = ""  # why the current case's CT did not load ("" while it did)

    def open_next(self) -> Assignment | None:
        """Open the reader's next step (recording when it was opened); ``None``: all done.

        :raises WashoutError: session 2 is due but its washout is not over (the message says
            when it opens).
        """
        self.assignment, self.load_error = None, ""
        upcoming = self.store.next_case(self.token)
        if upcoming is None:
            return None
        self.assignment = self.store.open_case(self.token, upcoming.case)
        return self.assignment

    def ct_failed(self, message: str) -> None:
        """The current case's CT did not load (``message`` names the problem): the reader may
        skip the case now."""
        self.load_error = str(message).strip() or "the CT did not load"

    def skip(self) -> dict:
        """Skip the current case because its CT did not load; the store records it with the
        message. Only such a case can be skipped: a reader never skips a case they can see."""
        if self.assignment is None:
            raise StudyStateError("nothing to skip: every case is done")
        if not self.load_error:
            raise StudyStateError(
                f"case {self.assignment.case}: only a case whose CT did not load can be skipped"
            )
        return self.store.skip(self.token, self.assignment.case, self.load_error)

    def model_visible(self) -> bool:
        """Whether the model's output may be shown now (the store decides)."""
        if self.assignment is None or self.load_error:
            return False
        return self.store.model_visible(self.token, self.assignment.case)

    def initial_values(self) -> dict:
        """Start values of the form: the locked unaided rating at the sequential aided step."""
        start = dict.fromkeys((f["name"] for f in self.fields), None)
        unaided = self.assignment.unaided if self.assignment is not None else None
        if unaided:
            start.update({k: unaided.get(k) for k in start if unaided.get(k) is not None})
        return start

    def submit(self, values: Mapping) -> dict:
        """Commit the current step's rating (locked once this returns)."""
        if self.assignment is None:
            raise RatingError("nothing to rate: every case is done")
        if self.load_error:
            raise RatingError(f"the CT of this case did not load ({self.load_error}): skip it")
        rating = form_to_rating(values, self.fields)
        return self.store.submit(self.token, self.assignment.case, self.assignment.modality, rating)

    def progress(self) -> dict:
        return self.store.progress(self.token).to_dict()

    def snapshot(self) -> dict:
        """What the study panel shows (no truth: the store never gives it to readers)."""
        a = self.assignment
        return {
            "reader": self.reader,
            "progress": self.progress(),
            "load_error": self.load_error,
            "case": None
            if a is None
            else {
                "case": a.case,
                "session": a.session,
                "modality": a.modality,
                "order_index": a.order_index,
                "total": a.total,
                "model_visible": self.model_visible(),
                "points": a.points,
            },
        }
