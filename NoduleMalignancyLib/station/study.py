"""One reader's reading-study session at the station, in plain Python (docs/DESIGN.md §14, §15).

Why here and not in the page: signing in with a token, finding the reader's next case, the
rating form's fields and turning the form's values into a rating the store accepts are the
rules of the study; the trame page only shows them. Every rule stays in the store
(``study/store.py``: order, locking, when the model may be shown); this module never decides
them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..core.attributes import LIDC_WORDING
from ..study.design import load_study
from ..study.ratings import (
    CHARACTERISTICS,
    CONFIDENCE_RANGE,
    LUNG_RADS,
    SCALES,
    RatingError,
)
from ..study.store import Assignment, StudyStateError, StudyStore

__all__ = ["SCALE_WORDING", "StudySession", "open_store", "rating_form"]

# The LIDC wording of every rating, the presence scales included (LIDC-IDRI reader form).
SCALE_WORDING: dict[str, tuple[str, ...]] = {
    **LIDC_WORDING,
    "calcification": ("Popcorn", "Laminated", "Solid", "Non-central", "Central", "Absent"),
    "internal_structure": ("Soft tissue", "Fluid", "Fat", "Air"),
}


def open_store(study_file: str | Path, db_path: str | Path) -> StudyStore:
    """The study's store, after checking that the study file is the one it was made from."""
    study = load_study(study_file)
    store = StudyStore(db_path)
    if store.name != study.name or store.design != study.design or store.seed != study.seed:
        raise ValueError(
            f"{db_path} was made from another study file than {study_file} "
            f"(database: {store.name!r}, {store.design}, seed {store.seed})"
        )
    return store


def rating_form(required: tuple[str, ...]) -> list[dict]:
    """The form's fields: the nine LIDC characteristics with their wording, confidence 0-100,
    optional Lung-RADS and free text; ``required`` as the study says."""
    fields = []
    for name in CHARACTERISTICS:
        low, high = SCALES[name]
        words = SCALE_WORDING.get(name, ())
        fields.append(
            {
                "name": name,
                "label": name.replace("_", " ").capitalize(),
                "kind": "scale",
                "min": low,
                "max": high,
                "required": name in required,
                "choices": [
                    {"value": v, "title": f"{v}: {words[v - low]}" if words else str(v)}
                    for v in range(low, high + 1)
                ],
            }
        )
    low, high = CONFIDENCE_RANGE
    fields.append(
        {
            "name": "confidence",
            "label": "Confidence that the nodule is malignant (0-100)",
            "kind": "number",
            "min": low,
            "max": high,
            "required": "confidence" in required,
            "choices": [],
        }
    )
    fields.append(
        {
            "name": "lung_rads",
            "label": "Lung-RADS (optional)",
            "kind": "choice",
            "required": False,
            "choices": [{"value": c, "title": c} for c in LUNG_RADS],
        }
    )
    fields.append(
        {
            "name": "comment",
            "label": "Comment (optional)",
            "kind": "text",
            "required": False,
            "choices": [],
        }
    )
    return fields


def form_to_rating(values: Mapping, fields: list[dict]) -> dict:
    """The form's values (strings or numbers from the browser) -> a rating for ``submit``.

    Empty fields become absent; the store checks ranges and what is required.
    """
    rating: dict = {}
    for field in fields:
        value = values.get(field["name"])
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            if field["kind"] == "scale":
                number = float(value)
                if number != int(number):
                    raise ValueError
                rating[field["name"]] = int(number)
            elif field["kind"] == "number":
                rating[field["name"]] = float(value)
            else:
                rating[field["name"]] = str(value)
        except (TypeError, ValueError):
            raise RatingError(f"{field['label']}: {value!r} is not a valid value") from None
    return rating


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
            self.assignment = None
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
