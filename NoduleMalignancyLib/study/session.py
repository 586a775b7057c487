"""One reader's reading-study session, in plain Python (docs/DESIGN.md §14, §15).

Why here and not in a page or a panel: signing in with a token, finding the reader's next case,
the rating form, skipping a case whose CT did not load and submitting are the rules of the study;
the browser station (``station/study_app.py``) and the Slicer module's study panel
(``study/scene_reading.py``) only show them. Every rule stays in the store (``study/store.py``:
order, locking, washout, when the model may be shown); this module never decides them itself.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from .design import load_study
from .form import form_to_rating, rating_form
from .ratings import RatingError
from .store import Assignment, StudyStateError, StudyStore

__all__ = ["FormStep", "StaleFormError", "StudySession", "open_store"]


class StaleFormError(StudyStateError):
    """A submit that names another step than the one shown now (a double-click, a repeat, a
    form left open in another tab): refused, nothing is written."""


@dataclass(frozen=True)
class FormStep:
    """What a rating form answers: the case, the step (modality) and the form's nonce.

    Why: a server that applied a submit to whatever step is current when it arrives stored a
    double-click's second submit as the next step's rating (issue 28). The nonce is drawn each
    time a step is shown, so a submit can be matched to the one form it came from.
    """

    case: str
    modality: str
    nonce: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_value(cls, value) -> FormStep:
        """From the page's plain ``{"case", "modality", "nonce"}``; a clear error otherwise."""
        if isinstance(value, FormStep):
            return value
        if not isinstance(value, Mapping) or not all(
            isinstance(value.get(k), str) for k in ("case", "modality", "nonce")
        ):
            raise StaleFormError("the submit does not name its case, step and form")
        return cls(value["case"], value["modality"], value["nonce"])


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
        self.step: FormStep | None = None  # the step shown now and its form's nonce

    def open_next(self) -> Assignment | None:
        """Open the reader's next step (recording when it was opened); ``None``: all done.

        :raises WashoutError: session 2 is due but its washout is not over (the message says
            when it opens).
        """
        self.assignment, self.load_error, self.step = None, "", None
        upcoming = self.store.next_case(self.token)
        if upcoming is None:
            return None
        self.assignment = self.store.open_case(self.token, upcoming.case)
        self.step = FormStep(
            self.assignment.case, self.assignment.modality, secrets.token_urlsafe(16)
        )
        return self.assignment

    def check_step(self, step) -> FormStep:
        """The form's step if it is the one shown now; :class:`StaleFormError` otherwise."""
        named = FormStep.from_value(step)
        current = self.step
        if current is None:
            raise StaleFormError(f"case {named.case} ({named.modality}): no step is open now")
        if (named.case, named.modality) != (current.case, current.modality):
            raise StaleFormError(
                f"this form was for case {named.case} ({named.modality}), which is no longer "
                f"open (a repeated submit?); nothing was saved: the step open now is case "
                f"{current.case} ({current.modality})"
            )
        if not secrets.compare_digest(named.nonce, current.nonce):
            raise StaleFormError(
                f"case {named.case} ({named.modality}): this form was already committed or "
                "replaced (a repeated submit)"
            )
        return current

    def ct_failed(self, message: str) -> None:
        """The current case's CT did not load (``message`` names the problem): the reader may
        skip the case now."""
        self.load_error = str(message).strip() or "the CT did not load"

    def skip(self, step=None) -> dict:
        """Skip the current case because its CT did not load; the store records it with the
        message. Only such a case can be skipped: a reader never skips a case they can see.

        ``step``: the :class:`FormStep` the page showed (checked like a submit's).
        """
        if self.assignment is None:
            raise StudyStateError("nothing to skip: every case is done")
        if step is not None:
            self.check_step(step)
        if not self.load_error:
            raise StudyStateError(
                f"case {self.assignment.case}: only a case whose CT did not load can be skipped"
            )
        record = self.store.skip(self.token, self.assignment.case, self.load_error)
        self.step = None  # a repeat of this skip names a closed step
        return record

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

    def submit(self, values: Mapping, step=None, identity: Mapping[str, str] | None = None) -> dict:
        """Commit the current step's rating (locked once this returns).

        ``step``: the :class:`FormStep` of the form the values come from (the page and the
        Slicer panel always give it); a form of another step, or one already committed, raises
        :class:`StaleFormError`. Without it the step open now is meant (scripts and tests).
        ``identity``: series UID, patient ID and study date of the CT shown, kept with the
        rating (``mrml/identity.py``).
        """
        if self.assignment is None:
            raise RatingError("nothing to rate: every case is done")
        current = self.check_step(step) if step is not None else self.step
        if self.load_error:
            raise RatingError(f"the CT of this case did not load ({self.load_error}): skip it")
        rating = form_to_rating(values, self.fields)
        case, modality = self.assignment.case, self.assignment.modality
        if current is not None:
            case, modality = current.case, current.modality
        record = self.store.submit(self.token, case, modality, rating, dict(identity or {}))
        self.step = None  # committed: a repeat of this form is refused
        return record

    def progress(self) -> dict:
        return self.store.progress(self.token).to_dict()

    def snapshot(self) -> dict:
        """What the study panel shows (no truth: the store never gives it to readers)."""
        a = self.assignment
        return {
            "reader": self.reader,
            "progress": self.progress(),
            "load_error": self.load_error,
            "step": None if self.step is None else self.step.to_dict(),
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
