"""What a reader rates per case and modality, and its checks (docs/DESIGN.md §14).

The nine LIDC characteristics on their LIDC scales (the project's attribute names,
``core/config.py``), a 0-100 confidence that the nodule is malignant, an optional Lung-RADS
category and optional free text. One module so the store, the study file and the browser form
agree on names and ranges.
"""

from __future__ import annotations

from ..core.config import ATTRIBUTES
from ..core.errors import InputError

# LIDC scales (inclusive): calcification 6 and internal_structure 1 mean "absent"/"soft tissue".
SCALES: dict[str, tuple[int, int]] = {
    "subtlety": (1, 5),
    "internal_structure": (1, 4),
    "calcification": (1, 6),
    "sphericity": (1, 5),
    "margin": (1, 5),
    "lobulation": (1, 5),
    "spiculation": (1, 5),
    "texture": (1, 5),
    "malignancy": (1, 5),
}
# In the order of the project's attribute heads, so tables list them as everywhere else.
CHARACTERISTICS: tuple[str, ...] = tuple(a for a in ATTRIBUTES if a in SCALES)
CONFIDENCE_RANGE = (0.0, 100.0)
LUNG_RADS = ("1", "2", "3", "4A", "4B", "4X")
MAX_COMMENT = 4000
# The fields a study may require; malignancy and confidence are required always (the scores).
RATING_FIELDS: tuple[str, ...] = (*CHARACTERISTICS, "confidence")
ALWAYS_REQUIRED = ("malignancy", "confidence")
OPTIONAL_FIELDS = ("lung_rads", "comment")


class RatingError(InputError):
    """A submitted rating with a missing, unknown or out-of-range field (named in the message)."""


def validate_required(required: object) -> tuple[str, ...]:
    """The study's required fields, checked; malignancy and confidence are always added."""
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError("expected a list of rating field names")
    unknown = [r for r in required if r not in RATING_FIELDS]
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(RATING_FIELDS)})")
    wanted = set(required) | set(ALWAYS_REQUIRED)
    return tuple(f for f in RATING_FIELDS if f in wanted)


def validate_rating(rating: dict, required: tuple[str, ...] = RATING_FIELDS) -> dict:
    """A clean copy of ``rating`` with every field present (None where not given).

    Integers for the characteristics (a bool or 3.5 is refused, never rounded), a number in
    0-100 for confidence, one of 1 2 3 4A 4B 4X for lung_rads, text for comment.
    """
    if not isinstance(rating, dict):
        raise RatingError("rating: expected an object of fields")
    unknown = sorted(set(rating) - set(RATING_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise RatingError(
            f"rating: unknown field {unknown[0]!r} "
            f"(known: {', '.join(RATING_FIELDS + OPTIONAL_FIELDS)})"
        )
    clean: dict = {}
    for name, (low, high) in SCALES.items():
        value = rating.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high
        ):
            raise RatingError(f"rating: {name} must be an integer {low}-{high}, got {value!r}")
        clean[name] = value
    confidence = rating.get("confidence")
    if confidence is not None:
        low, high = CONFIDENCE_RANGE
        if (
            not isinstance(confidence, (int, float))
            or isinstance(confidence, bool)
            or not low <= confidence <= high  # also refuses NaN
        ):
            raise RatingError(f"rating: confidence must be a number 0-100, got {confidence!r}")
        confidence = float(confidence)
    clean["confidence"] = confidence
    missing = [f for f in required if clean.get(f) is None]
    if missing:
        raise RatingError(f"rating: {missing[0]} is required (missing: {', '.join(missing)})")
    lung_rads = rating.get("lung_rads")
    if lung_rads is not None:
        lung_rads = str(lung_rads).upper() if isinstance(lung_rads, (str, int)) else lung_rads
        if lung_rads not in LUNG_RADS:
            raise RatingError(
                f"rating: lung_rads must be one of {', '.join(LUNG_RADS)}, "
                f"got {rating['lung_rads']!r}"
            )
    clean["lung_rads"] = lung_rads
    comment = rating.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise RatingError(f"rating: comment must be text, got {type(comment).__name__}")
        if len(comment) > MAX_COMMENT:
            raise RatingError(f"rating: comment is longer than {MAX_COMMENT} characters")
        comment = comment.strip() or None
    clean["comment"] = comment
    return clean
