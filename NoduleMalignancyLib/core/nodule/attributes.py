"""LIDC attribute scales: soft targets from reader ratings and the LIDC wording for display."""

from __future__ import annotations

import numpy as np

from ..config import ATTRIBUTES, ORDINAL_ATTRIBUTES, PRESENCE_ATTRIBUTES

# LIDC-IDRI rating wording, index = rating - 1.
LIDC_WORDING: dict[str, tuple[str, ...]] = {
    "subtlety": (
        "Extremely subtle",
        "Moderately subtle",
        "Fairly subtle",
        "Moderately obvious",
        "Obvious",
    ),
    "sphericity": ("Linear", "Ovoid/linear", "Ovoid", "Ovoid/round", "Round"),
    "margin": ("Poorly defined", "Near poorly defined", "Medium margin", "Near sharp", "Sharp"),
    "lobulation": (
        "No lobulation",
        "Nearly no lobulation",
        "Medium lobulation",
        "Near marked lobulation",
        "Marked lobulation",
    ),
    "spiculation": (
        "No spiculation",
        "Nearly no spiculation",
        "Medium spiculation",
        "Near marked spiculation",
        "Marked spiculation",
    ),
    "texture": ("Non-solid/GGO", "Non-solid/mixed", "Part solid/mixed", "Solid/mixed", "Solid"),
    "malignancy": (
        "Highly unlikely",
        "Moderately unlikely",
        "Indeterminate",
        "Moderately suspicious",
        "Highly suspicious",
    ),
}
# Rating that means "absent" for the presence attributes (LIDC scales).
ABSENT_RATING = {"calcification": 6, "internal_structure": 1}
# reader_labels.csv column stem of each attribute.
READER_COLUMN = {name: name for name in ATTRIBUTES} | {"internal_structure": "internalStructure"}


def parse_ratings(text: str | None) -> np.ndarray:
    """'3;4;3' (a reader_labels.csv "<attribute>_readers" cell) -> [3.0, 4.0, 3.0].

    Blanks and non-numbers are dropped: some nodules were rated by fewer readers.
    """
    values = []
    for part in (text or "").split(";"):
        try:
            values.append(float(part))
        except ValueError:
            continue
    return np.asarray(values, dtype=float)


def reader_ratings(row: dict, attribute: str) -> np.ndarray:
    """One nodule's per-reader ratings of an attribute (a reader_labels.csv row)."""
    return parse_ratings(row.get(f"{READER_COLUMN[attribute]}_readers"))


def ordinal_target(mean_rating: float) -> float:
    """Soft target in [0, 1] from the mean reader rating on the 1-5 scale."""
    return float(np.clip((mean_rating - 1.0) / 4.0, 0.0, 1.0))


def presence_target(ratings, attribute: str) -> float:
    """Fraction of readers who rated the attribute as present (not "absent"/"soft tissue")."""
    ratings = np.asarray(ratings, dtype=float)
    return float(np.mean(ratings != ABSENT_RATING[attribute])) if len(ratings) else float("nan")


def score_from_probability(p: float) -> float:
    """Map an ordinal head's probability back to the LIDC 1-5 scale."""
    return 1.0 + 4.0 * float(p)


def wording(attribute: str, score: float) -> str:
    """LIDC wording of the rating nearest to a 1-5 score."""
    words = LIDC_WORDING[attribute]
    return words[int(np.clip(round(score), 1, 5)) - 1]


__all__ = [
    "ATTRIBUTES",
    "ORDINAL_ATTRIBUTES",
    "PRESENCE_ATTRIBUTES",
    "LIDC_WORDING",
    "READER_COLUMN",
    "ordinal_target",
    "parse_ratings",
    "reader_ratings",
    "presence_target",
    "score_from_probability",
    "wording",
]
