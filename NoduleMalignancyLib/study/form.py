"""The rating form of a reading study: its fields and the form's values to a rating.

Why one module: the browser station and the Slicer module's study panel show the same form
(docs/DESIGN.md §14, §15), built from ``study/ratings.py``: the nine LIDC characteristics with
the LIDC wording, confidence 0-100, optional Lung-RADS and free text. The store checks ranges
and what is required; this module only turns what a form holds into a rating.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..core.nodule.attributes import LIDC_WORDING
from .ratings import CHARACTERISTICS, CONFIDENCE_RANGE, LUNG_RADS, SCALES, RatingError

__all__ = [
    "SCALE_WORDING",
    "choice_titles",
    "entries_from_form",
    "form_from_entries",
    "form_to_rating",
    "rating_form",
]

# The LIDC wording of every rating, the presence scales included (LIDC-IDRI reader form).
SCALE_WORDING: dict[str, tuple[str, ...]] = {
    **LIDC_WORDING,
    "calcification": ("Popcorn", "Laminated", "Solid", "Non-central", "Central", "Absent"),
    "internal_structure": ("Soft tissue", "Fluid", "Fat", "Air"),
}


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


# A desktop form (the Slicer panel) holds a drop-down per choice field and a text box otherwise.
def choice_titles(field: dict) -> list[str]:
    """A choice field's drop-down entries: "" (not given) first, then every choice's title."""
    return ["", *(c["title"] for c in field["choices"])]


def form_from_entries(fields: list[dict], entries: Mapping) -> dict:
    """A desktop form's entries -> the form's values: a choice field gives the index of its
    drop-down (0: not given, see :func:`choice_titles`), any other field its text."""
    values: dict = {}
    for field in fields:
        entry = entries.get(field["name"])
        if field["choices"]:
            index = int(entry or 0)
            if not 0 <= index <= len(field["choices"]):
                raise RatingError(f"{field['label']}: no choice {index}")
            values[field["name"]] = field["choices"][index - 1]["value"] if index else None
        else:
            values[field["name"]] = "" if entry is None else str(entry)
    return values


def entries_from_form(fields: list[dict], values: Mapping) -> dict:
    """The inverse of :func:`form_from_entries`: start values -> drop-down indexes and texts."""
    entries: dict = {}
    for field in fields:
        value = values.get(field["name"])
        if field["choices"]:
            found = [i for i, c in enumerate(field["choices"], 1) if c["value"] == value]
            entries[field["name"]] = found[0] if found else 0
        elif value is None:
            entries[field["name"]] = ""
        else:  # 70.0 -> "70"
            entries[field["name"]] = f"{value:g}" if isinstance(value, float) else str(value)
    return entries
