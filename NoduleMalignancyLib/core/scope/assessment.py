"""The answer's tier, decided once from the scope codes: refused, not assessed, flagged, assessed.

Why one rule: a click on chest-wall muscle used to get "Malignancy 87.7 %" and a Lung-RADS
category with its warnings in small boxes below the headline (issue 29). Every surface (the
``predict`` CSV, ``result.json``, the CLI print, the report image, the batch review page, the
DICOM SR, the LUNA25 log, the MRML table and status line, the station) reads the tier from
here and obeys it (docs/DESIGN.md §12):

* ``refused``: no numbers (:class:`~.validation.RefusedError`);
* ``not_assessed``: the point is probably not on a lung nodule, or outside what the model
  answers: no headline malignancy, no Lung-RADS suggestion; the reason leads;
* ``flagged``: the numbers, with the warning first;
* ``assessed``: the numbers.

Which codes make ``not_assessed`` was decided by measurement (docs/experiments/README.md,
"Scope"): those that fire on no more than 0.1 % of the 794 LIDC nodules clicked at their
centre and on most constructed clicks that are no nodule. ``exceeds_field_of_view`` (3.0 %)
and ``large_mass`` (2.6 %) fire on real LIDC nodules, so they stay flags.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..model.similar import summary_line as similar_summary_line
from ..result_schema import field, labelled, shown
from .validation import DESCRIPTIONS, REFUSALS, WARNINGS, Finding

__all__ = [
    "answer_lines",
    "ASSESSED",
    "ASSESSMENTS",
    "FLAGGED",
    "LABELS",
    "NOT_ASSESSED",
    "NOT_ASSESSED_CODES",
    "REFUSED",
    "Assessment",
    "assess",
    "assess_codes",
    "refused",
    "withheld",
]

REFUSED = "refused"
NOT_ASSESSED = "not_assessed"
FLAGGED = "flagged"
ASSESSED = "assessed"
ASSESSMENTS = (REFUSED, NOT_ASSESSED, FLAGGED, ASSESSED)
# How a person reads the tier (the CSV and result.json store the code): the schema's words.
LABELS = dict(field("assessment").words)
assert tuple(LABELS) == ASSESSMENTS

# The point is probably not on a lung nodule: beyond the pleura, on a vessel, beside the
# outline, or on an outline of nothing. Each fires on at most 1 of the 794 LIDC VOIs at their
# centres (docs/experiments/README.md; the last two need a full CT and fire on none).
NOT_ASSESSED_CODES = (
    "outside_lung",
    "vessel_at_point",
    "point_off_nodule",
    "no_contrast_at_centre",
)
assert set(NOT_ASSESSED_CODES) <= set(WARNINGS)


@dataclass(frozen=True)
class Assessment:
    """The tier and, in plain words, why (empty when assessed)."""

    tier: str
    reason: str = ""

    @property
    def label(self) -> str:
        return LABELS[self.tier]

    @property
    def answered(self) -> bool:
        """Whether a headline malignancy and a Lung-RADS suggestion are shown."""
        return self.tier in (FLAGGED, ASSESSED)


# What a surface withholds when a point is not assessed: the malignancy (its spread, its
# explanation, the malignancy rating), the Lung-RADS suggestion and the similar LIDC nodules
# ("4 rated suspicious" says malignancy too), by schema group.
WITHHELD_GROUPS = ("malignancy", "explanation", "lung_rads", "similar")


def withheld(name: str) -> bool:
    """Whether a surface shows no value for result field ``name`` when not assessed (the CSV
    and result.json keep the numbers, with ``lung_rads`` empty)."""
    return name == "malignancy_score" or field(name).group in WITHHELD_GROUPS


def assess(warnings: Sequence[Finding]) -> Assessment:
    """The tier of an analysis with these scope warnings; the reason is the deciding warnings'
    messages, the not-assessing ones first."""
    deciding = [w for w in warnings if w.code in NOT_ASSESSED_CODES]
    if deciding:
        return Assessment(NOT_ASSESSED, " ".join(w.message for w in deciding))
    if warnings:
        return Assessment(FLAGGED, " ".join(w.message for w in warnings))
    return Assessment(ASSESSED)


def assess_codes(codes: Iterable[str]) -> Assessment:
    """The tier from codes alone (a predictions CSV written before the ``assessment`` column),
    with the codes' plain sentences as the reason; a refusal code makes it refused."""
    codes = [c for c in codes if c]
    refusal = [c for c in codes if c in REFUSALS]
    if refusal:
        return refused(DESCRIPTIONS[refusal[0]])
    return assess([Finding(c, DESCRIPTIONS.get(c, c)) for c in codes])


def answer_lines(result, label: str = "") -> list[str]:
    """A result (``core.nodule.analysis.NoduleResult``) as the few lines a status line or a log shows,
    the assessment first: not assessed, the reason and the outline's size only; flagged, each
    warning, then the malignancy; then the malignancy with its spread and the diameter, the
    Lung-RADS suggestion and the similar LIDC nodules' summary line."""
    prefix = f"{label}: " if label else ""
    assessment = result.assessment
    size = labelled("diameter_mm", result.diameter_mm)
    if not assessment.answered:
        return [
            f"{prefix}{assessment.label} (no malignancy, no Lung-RADS): {assessment.reason}",
            f"Outline: {size}",
        ]
    lines = [f"Warning: {w.message}" for w in result.warnings]
    lines.append(
        f"{prefix}{labelled('malignancy_probability', result.malignancy_probability)} "
        f"(spread ± {shown('malignancy_sd', result.malignancy_sd)}), {size}"
    )
    if result.suggested_lung_rads is not None:
        lines.append(result.suggested_lung_rads.wording)
    similar = similar_summary_line(getattr(result, "similar_nodules", None) or [])
    if similar:  # "6 similar LIDC nodules: 4 rated suspicious" (core/model/similar.py)
        lines.append(similar)
    return lines


def refused(message: str) -> Assessment:
    """A refused input: no numbers, the refusal's message as the reason."""
    return Assessment(REFUSED, message)
