"""Lung-RADS v2022 on a follow-up screen: a nodule's category from its change since the prior
(new, growing, slow growth, stable, decreased), after the baseline suggestion of
core/clinical/lung_rads.py; the rows are those of core/clinical/lung_rads_table.py (docs/DESIGN.md §16).

Why a prior *measurement* and not a prior CT: the rules need the prior mean diameter (and solid
component) and the interval only, whether a reader typed them in or a registration measured
them; so they are unit-tested at every threshold without any image. Growth is an increase of
the mean diameter by more than 1.5 mm within 12 months, sizes rounded to 0.1 mm first; over a
longer interval the increase is taken pro rata, and an increase that is growth in total but
not per 12 months is "slow growth". A part solid nodule grows by its solid component. Stable
and decreased nodules step down as v2022 says (4A at follow-up -> 3, 3 -> 2); 4B stays 4B
until proven benign. 4X stays the reader's call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .lung_rads import (
    GROUND_GLASS,
    PART_SOLID,
    LungRadsSuggestion,
    SizeTable,
    features_supporting_4x,
    juxtapleural_note,
    round_mm,
    suggest_lung_rads,
)

__all__ = [
    "DECREASED",
    "GROWING",
    "GROWTH_MM",
    "NEW",
    "SLOW_GROWTH",
    "STABLE",
    "YEAR_DAYS",
    "PriorMeasurement",
    "change_behavior",
    "followup_lung_rads",
]

GROWTH_MM = 1.5  # growth: mean diameter increase > 1.5 mm within 12 months
YEAR_DAYS = 365.25
NEW = "new"
GROWING = "growing"
SLOW_GROWTH = "slow growth"
STABLE = "stable"
DECREASED = "decreased"
SCREEN = "follow-up screen"


@dataclass(frozen=True)
class PriorMeasurement:
    """The nodule on the prior CT: its mean diameter (and solid component, for a part solid
    nodule; ``None`` when not measured), texture class, and the days between the two CTs
    (``None`` when a date is missing)."""

    mean_diameter_mm: float
    solid_mean_diameter_mm: float | None = None
    texture_class: str | None = None
    interval_days: float | None = None


def change_behavior(prior_mm: float, current_mm: float, interval_days: float | None) -> str:
    """growing, slow growth, stable or decreased, from two mean diameters (rounded to 0.1 mm
    first) and the interval (``None``: taken as within 12 months)."""
    change = round_mm(round_mm(current_mm) - round_mm(prior_mm))
    if change <= GROWTH_MM:
        return DECREASED if change < 0 else STABLE
    if interval_days is None or interval_days <= YEAR_DAYS:
        return GROWING
    per_year = round_mm(change * YEAR_DAYS / float(interval_days))
    return GROWING if per_year > GROWTH_MM else SLOW_GROWTH


def _interval_text(interval_days: float | None) -> str:
    if interval_days is None:
        return "interval unknown (a date is missing): taken as within 12 months; check the dates"
    return f"interval {interval_days:.0f} days ({interval_days / YEAR_DAYS * 12:.1f} months)"


NEW_TABLE = SizeTable(
    solid=(
        (4.0, "2", "new solid nodule < 4 mm"),
        (6.0, "3", "new solid nodule 4 to < 6 mm"),
        (8.0, "4A", "new solid nodule 6 to < 8 mm"),
        (math.inf, "4B", "new solid nodule >= 8 mm"),
    ),
    part_solid=(
        (4.0, "4A", "new part solid nodule with a solid component < 4 mm"),
        (math.inf, "4B", "new part solid nodule with a solid component >= 4 mm"),
    ),
    ground_glass=(
        (30.0, "2", "new non solid nodule (GGN) < 30 mm"),
        (math.inf, "3", "new non solid nodule (GGN) >= 30 mm"),
    ),
    part_solid_small=("3", "new part solid nodule < 6 mm total mean diameter"),
)
GROWING_TABLE = SizeTable(
    solid=(
        (8.0, "4A", "growing solid nodule < 8 mm"),
        (math.inf, "4B", "growing solid nodule >= 8 mm"),
    ),
    part_solid=(
        (4.0, "4A", "part solid nodule with a growing solid component < 4 mm"),
        (math.inf, "4B", "part solid nodule with a growing solid component >= 4 mm"),
    ),
    ground_glass=(
        (30.0, "2", "growing non solid nodule (GGN) < 30 mm"),
        (
            math.inf,
            "3",
            "growing non solid nodule (GGN) >= 30 mm: category 2 covers one >= 30 mm only "
            "when stable or slowly growing, so suggested as a new one >= 30 mm",
        ),
    ),
)


def _stepped_category(prior: LungRadsSuggestion, texture: str) -> tuple[str, str]:
    """A stable (or decreased, or slowly growing) nodule: v2022's stepped management from the
    category of the prior measurement (its baseline table row)."""
    before = prior.category
    if texture == GROUND_GLASS:
        return "2", "non solid nodule (GGN), stable or slowly growing: category 2 at any size"
    if before == "4A":
        return "3", "category 4A at the prior, stable or decreased: category 3"
    if before in ("3", "2", "1"):
        return "2", f"category {before} at the prior, stable or decreased: category 2"
    return "4B", "category 4B at the prior and not proven benign: stays 4B"


def _solid_growth(
    current: LungRadsSuggestion, prior: PriorMeasurement
) -> tuple[str | None, str | None]:
    """Whether a part solid nodule's solid component grew (its behavior and a reason), or
    ``(None, None)`` when it cannot be told (the prior's solid component was not measured)."""
    if prior.solid_mean_diameter_mm is None:
        if prior.texture_class == GROUND_GLASS:
            return GROWING, "a solid component appeared in a non solid nodule (new solid component)"
        return None, None
    behavior = change_behavior(
        prior.solid_mean_diameter_mm, current.solid_mean_diameter_mm, prior.interval_days
    )
    change = round_mm(current.solid_mean_diameter_mm - round_mm(prior.solid_mean_diameter_mm))
    return behavior, (
        f"solid component {round_mm(prior.solid_mean_diameter_mm):.1f} -> "
        f"{current.solid_mean_diameter_mm:.1f} mm ({change:+.1f} mm): {behavior}"
    )


def followup_lung_rads(
    current: LungRadsSuggestion, prior: PriorMeasurement | None, new: bool = False
) -> LungRadsSuggestion:
    """The follow-up category of a nodule whose baseline suggestion is ``current``: ``new``
    when it was not on the prior CT; else ``prior`` is its measurement there. Category 1
    (benign calcification) stays 1."""
    if new == (prior is not None):
        raise ValueError("a follow-up nodule is either new (no prior) or has a prior measurement")
    texture = current.texture_class
    mean_mm, solid_mm = current.mean_diameter_mm, current.solid_mean_diameter_mm
    # The baseline's own notes go: "need a prior", and the juxtapleural rule (baseline or new).
    dropped = juxtapleural_note(texture, mean_mm, current.category)
    reasons = [r for r in current.reasons if "need a prior CT" not in r and r not in dropped]
    if new:
        behavior = NEW
        category, rule = NEW_TABLE.category(texture, mean_mm, solid_mm)
        reasons.append("not on the prior CT: new")
    else:
        change = round_mm(mean_mm - round_mm(prior.mean_diameter_mm))
        behavior = change_behavior(prior.mean_diameter_mm, mean_mm, prior.interval_days)
        reasons.append(
            f"mean diameter {round_mm(prior.mean_diameter_mm):.1f} -> {mean_mm:.1f} mm "
            f"({change:+.1f} mm), {_interval_text(prior.interval_days)}: {behavior} (growth: "
            f"> {GROWTH_MM} mm within 12 months)"
        )
        if texture == PART_SOLID:
            solid_behavior, text = _solid_growth(current, prior)
            if text:
                reasons.append(text + " (a part solid nodule grows by its solid component)")
            if solid_behavior is not None:
                behavior = solid_behavior
        before = suggest_lung_rads(
            prior.mean_diameter_mm,
            prior.texture_class or texture,
            prior.solid_mean_diameter_mm or 0.0,
            0.0,
            current.spiculation_score,
            solid_measured=prior.solid_mean_diameter_mm is not None,
        )
        if behavior == GROWING:
            category, rule = GROWING_TABLE.category(texture, mean_mm, solid_mm)
        else:
            category, rule = _stepped_category(before, texture)
            if behavior == SLOW_GROWTH and texture != GROUND_GLASS:
                reasons.append(
                    "growth over the interval but not > 1.5 mm per 12 months: slow growth; "
                    "4B if it grew over multiple screening exams (compare the earlier ones)"
                )
    reasons.append(f"{rule} -> {category}")
    if current.category == "1":
        reasons.append(f"benign calcification: category 1 instead of {category}")
        category = "1"
    if behavior == NEW:
        reasons.extend(juxtapleural_note(texture, mean_mm, category))
    supports = features_supporting_4x(category, current.spiculation_score)
    return replace(
        current,
        category=category,
        reasons=reasons,
        supports_4x=supports,
        screen=SCREEN,
        behavior=behavior,
    )
