"""A suggested Lung-RADS v2022 category for a baseline screen, from one time point.

Why a pure function of plain numbers: the category is a lookup in published size tables, and a
reader must be able to check it; so every input that produced it is kept with it, and every
edge of the tables is a unit test. Only the baseline categories apply to one CT ("new" and
"growing" need a prior), 4X stays the reader's call, and the category is always a suggestion
(docs/DESIGN.md §16).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from ..nodule.attributes import wording
from ..nodule.measurements import connected_components, nodule_size

SOLID = "solid"
PART_SOLID = "part-solid"
GROUND_GLASS = "ground-glass"
TEXTURE_CLASSES = (SOLID, PART_SOLID, GROUND_GLASS)
CATEGORIES = ("1", "2", "3", "4A", "4B")

# Texture class from the predicted LIDC texture score (1 non-solid/GGO, 2 non-solid/mixed,
# 3 part solid/mixed, 4 solid/mixed, 5 solid): the cut-offs are the midpoints between the
# ratings, so the class agrees with the rating the score rounds to (docs/DESIGN.md §16).
GROUND_GLASS_BELOW = 2.5  # ratings 1-2: non-solid
SOLID_FROM = 4.5  # rating 5: solid; ratings 3-4 (any ground glass left) are part-solid
# A solid component: segmented voxels at or above this attenuation (lung window), the
# threshold that detected a solid component best in a volumetry study (docs/DESIGN.md §16).
SOLID_COMPONENT_HU = -300.0
# Category 1 for benign calcification only when the calcification head is this sure.
HIGH_CALCIFICATION_PROBABILITY = 0.9
# Predicted spiculation (LIDC 1-5) from which it is shown as supporting 4X: the score rounds to
# "medium spiculation" or more; the head's scores shrink towards the mean (docs/DESIGN.md §16).
SPICULATION_SUPPORTS_4X = 2.5
CATEGORIES_ALLOWING_4X = ("3", "4A", "4B")
# Lung-RADS v2022 category 2 for a juxtapleural (perifissural) solid nodule below this size.
JUXTAPLEURAL_BELOW_MM = 10.0


@dataclass(frozen=True)
class LungRadsSuggestion:
    """The suggested category and the inputs that produced it (sizes to 0.1 mm)."""

    category: str  # "1", "2", "3", "4A", "4B"
    texture_class: str  # solid, part-solid, ground-glass
    mean_diameter_mm: float  # mean of the long and short axial axes, to 0.1 mm
    solid_mean_diameter_mm: float  # the solid component's, to 0.1 mm (used for part-solid)
    calcification_probability: float
    spiculation_score: float
    texture_score: float | None = None
    reasons: list[str] = field(default_factory=list)
    supports_4x: list[str] = field(default_factory=list)  # features a reader may weigh for 4X
    # "baseline screen", or "follow-up screen" with a prior (core/clinical/lung_rads_followup.py).
    screen: str = "baseline screen"
    # With a prior: new, growing, slow growth, stable, decreased (core/clinical/lung_rads_followup.py).
    behavior: str = ""

    @property
    def wording(self) -> str:
        return f"Suggested Lung-RADS {self.category} ({self.screen}) — the reader decides"

    def to_dict(self) -> dict:
        return asdict(self) | {"wording": self.wording}


def round_mm(value: float) -> float:
    """To 0.1 mm, halves up, as a reader rounds a shown value (5.95 -> 6.0, 5.85 -> 5.9)."""
    return float(Decimal(repr(float(value))).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def texture_class(texture_score: float) -> str:
    """Lung-RADS texture class of a predicted LIDC texture score (cut-offs above)."""
    if texture_score < GROUND_GLASS_BELOW:
        return GROUND_GLASS
    if texture_score < SOLID_FROM:
        return PART_SOLID
    return SOLID


def solid_component_mean_diameter_mm(
    hu_zyx: np.ndarray,
    mask_zyx: np.ndarray,
    spacing_zyx,
    threshold_hu: float = SOLID_COMPONENT_HU,
) -> float:
    """Mean axial diameter of the largest connected part of the segmentation at or above
    ``threshold_hu`` (0 when there is none), measured as the whole nodule is.

    The largest part, not all of them: a chord between two separate dense specks (vessels in
    ground glass) is no solid component.
    """
    solid = np.asarray(mask_zyx, dtype=bool) & (np.asarray(hu_zyx) >= threshold_hu)
    if not solid.any():
        return 0.0
    labels = connected_components(solid)
    largest = labels == np.bincount(labels.ravel())[1:].argmax() + 1  # ties: the first in C order
    return nodule_size(largest, spacing_zyx).mean_diameter_mm


def size_row(size_mm: float, rows) -> tuple[str, str]:
    """(category, row text) of the first of ``rows`` ``(below_mm, category, text)`` whose
    bound lies above ``size_mm`` (bounds exclusive, ascending; the last one ``inf``)."""
    return next((category, text) for below, category, text in rows if size_mm < below)


@dataclass(frozen=True)
class SizeTable:
    """One Lung-RADS size table by texture class: rows ``(below_mm, category, text)`` for a
    solid nodule (mean diameter), a part solid one (its solid component, once the total is >= 6
    mm; ``part_solid_small`` below that, ``None`` where the table has no such row) and a
    ground-glass one (mean diameter). The baseline table here; new and growing ones in
    core/clinical/lung_rads_followup.py."""

    solid: tuple
    part_solid: tuple
    ground_glass: tuple
    part_solid_small: tuple[str, str] | None = None

    def category(self, texture: str, mean_mm: float, solid_mm: float) -> tuple[str, str]:
        """The category and the row that gave it (sizes already rounded)."""
        if texture == SOLID:
            return size_row(mean_mm, self.solid)
        if texture == PART_SOLID:
            if self.part_solid_small is not None and mean_mm < 6.0:
                return self.part_solid_small
            return size_row(solid_mm, self.part_solid)
        if texture == GROUND_GLASS:
            return size_row(mean_mm, self.ground_glass)
        raise ValueError(f"unknown texture class {texture!r}; use one of {TEXTURE_CLASSES}")


BASELINE = SizeTable(
    solid=(
        (6.0, "2", "solid, mean diameter < 6 mm"),
        (8.0, "3", "solid, mean diameter 6 to < 8 mm"),
        (15.0, "4A", "solid, mean diameter 8 to < 15 mm"),
        (math.inf, "4B", "solid, mean diameter >= 15 mm"),
    ),
    part_solid=(
        (6.0, "3", "part-solid, total >= 6 mm with solid component < 6 mm"),
        (8.0, "4A", "part-solid, solid component 6 to < 8 mm"),
        (math.inf, "4B", "part-solid, solid component >= 8 mm"),
    ),
    ground_glass=(
        (30.0, "2", "ground-glass (non-solid), mean diameter < 30 mm"),
        (math.inf, "3", "ground-glass (non-solid), mean diameter >= 30 mm"),
    ),
    part_solid_small=("2", "part-solid, total mean diameter < 6 mm"),
)


def suggest_lung_rads(
    mean_diameter_mm: float,
    texture_class: str,
    solid_mean_diameter_mm: float,
    calcification_probability: float,
    spiculation_score: float,
    texture_score: float | None = None,
    solid_measured: bool = True,
) -> LungRadsSuggestion:
    """Lung-RADS v2022 baseline category from plain inputs (docs/DESIGN.md §16).

    ``solid_measured``: the solid component was measured (a 0 then means none: a part-solid
    texture is read as ground glass); ``False`` for a typed-in prior without one.

    Sizes are rounded to 0.1 mm first, as Lung-RADS does. Category 1 (benign calcification)
    only with a calcification probability of at least ``HIGH_CALCIFICATION_PROBABILITY``, and
    the reasons then name the size category it replaces.
    """
    mean_mm = round_mm(mean_diameter_mm)
    solid_mm = round_mm(solid_mean_diameter_mm)
    # A part-solid texture score with no solid component measured (no segmented voxel at or
    # above SOLID_COMPONENT_HU) is read as ground glass: Lung-RADS' part-solid rows need one.
    no_solid_part = solid_measured and texture_class == PART_SOLID and solid_mm == 0.0
    if no_solid_part:
        texture_class = GROUND_GLASS
    size_category, row = BASELINE.category(texture_class, mean_mm, solid_mm)
    texture_text = (
        f"texture score {texture_score:.2f} on the LIDC 1-5 scale ({wording('texture', texture_score)}) "
        f"-> {texture_class} (ground-glass < {GROUND_GLASS_BELOW}, solid >= {SOLID_FROM})"
        if texture_score is not None
        else f"texture {texture_class}"
    )
    reasons = [
        f"mean axial diameter {mean_mm:.1f} mm (long and short axis, to 0.1 mm)",
        texture_text,
    ]
    if no_solid_part:
        reasons.append(
            f"no solid component (no segmented voxel >= {SOLID_COMPONENT_HU:.0f} HU): "
            f"read as {GROUND_GLASS}"
        )
    if texture_class == PART_SOLID:
        reasons.append(
            f"solid component {solid_mm:.1f} mm (segmented voxels >= {SOLID_COMPONENT_HU:.0f} HU)"
        )
    reasons.append(f"baseline table: {row} -> {size_category}")
    category = size_category
    p = float(calcification_probability)
    if p >= HIGH_CALCIFICATION_PROBABILITY:
        category = "1"
        reasons.append(
            f"calcification probability {p:.2f} >= {HIGH_CALCIFICATION_PROBABILITY:.2f}: "
            f"category 1 (benign calcification) instead of {size_category}; it holds only for a "
            "benign pattern (diffuse, central, laminated, popcorn) or fat: check it"
        )
    elif p >= 0.5:
        reasons.append(
            f"calcification probability {p:.2f}: possibly calcified, below "
            f"{HIGH_CALCIFICATION_PROBABILITY:.2f} for category 1; a benign pattern would make it 1"
        )
    reasons.extend(juxtapleural_note(texture_class, mean_mm, category))
    reasons.append("baseline screen: 'new' and 'growing' need a prior CT")
    return LungRadsSuggestion(
        category=category,
        texture_class=texture_class,
        mean_diameter_mm=mean_mm,
        solid_mean_diameter_mm=solid_mm,
        calcification_probability=p,
        spiculation_score=float(spiculation_score),
        texture_score=None if texture_score is None else float(texture_score),
        reasons=reasons,
        supports_4x=features_supporting_4x(category, spiculation_score),
    )


def features_supporting_4x(category: str, spiculation_score: float) -> list[str]:
    """What a reader may weigh for 4X in a category 3, 4A or 4B nodule: a predicted
    spiculation from ``SPICULATION_SUPPORTS_4X`` on."""
    if category in CATEGORIES_ALLOWING_4X and spiculation_score >= SPICULATION_SUPPORTS_4X:
        return [
            f"spiculation {spiculation_score:.2f} on the LIDC 1-5 scale "
            f"({wording('spiculation', spiculation_score)})"
        ]
    return []


def juxtapleural_note(texture: str, mean_mm: float, category: str) -> list[str]:
    """v2022 makes a solid nodule < 10 mm against the pleura or a fissure with smooth margins
    and an oval, lentiform or triangular shape category 2 (at baseline or new); the model
    locates neither the pleura nor the fissures, so a 3 or 4A it could apply to says so."""
    if texture == SOLID and mean_mm < JUXTAPLEURAL_BELOW_MM and category in ("3", "4A"):
        return [
            "category 2 if juxtapleural or perifissural with smooth margins and an oval, "
            "lentiform or triangular shape (solid, < 10 mm): the model does not locate the "
            "pleura or the fissures, the reader decides"
        ]
    return []
