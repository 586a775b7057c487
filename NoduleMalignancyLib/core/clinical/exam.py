"""One CT and its nodules: each analyzed, its Lung-RADS v2022 category (baseline, or follow-up
from a prior measurement) and its Brock risk; the exam's category is its most suspicious
nodule's, with S and 4X as suggestions and the category's management (docs/DESIGN.md §17).

Why the exam, not the click: a radiologist reports an exam. A nodule that is not assessed
(probably not a lung nodule, core/scope/assessment.py) or refused gets no Lung-RADS and no Brock and
does not set the exam's category; it is listed with its reason. Plain numpy in, plain records
out: the ``exam`` command (batch/exam_cli.py) reads the files and writes ``exam.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..geometry import ImageGeometry
from ..model.ensemble import Ensemble
from ..nodule.analysis import NoduleResult, analyze_point
from ..nodule.voi import PointOutsideVolumeError
from ..prior.growth import growth
from ..scope.validation import RefusedError, chest_lungs
from .brock import ENTERED, MEASURED, BrockInput, BrockResult, brock_result
from .brock_inputs import (
    emphysema_input,
    lung_points_lps,
    nodule_type_input,
    size_input,
    spiculation_input,
    upper_lobe_input,
)
from .lung_rads import CATEGORIES_ALLOWING_4X, LungRadsSuggestion
from .lung_rads_followup import PriorMeasurement, followup_lung_rads
from .lung_rads_table import LUNG_RADS_VERSION, more_suspicious, row

__all__ = [
    "ClinicalInputs",
    "Exam",
    "ExamLungRads",
    "ExamNodule",
    "ExamPoint",
    "analyze_exam",
    "build_exam",
    "exam_nodule",
    "exam_lung_rads",
    "nodule_brock",
    "prior_entry",
]

# The nodule fields an exam lists from each analysis (core/result_schema.py names).
NODULE_FIELDS = (
    "point_lps",
    "assessment",
    "assessment_reason",
    "malignancy_probability",
    "malignancy_sd",
    "volume_mm3",
    "diameter_mm",
    "short_axis_mm",
    "mean_diameter_mm",
    "warnings",
    "warning_messages",
    "similar_nodules_summary",
)


@dataclass(frozen=True)
class ExamPoint:
    """A nodule's point (world LPS) and name; with a prior: its measurement there, or ``new``
    when it was not on the prior CT (``volume_mm3``/``date``: as given, for the prior entry)."""

    name: str
    point_lps: tuple[float, float, float]
    prior: PriorMeasurement | None = None
    new: bool = False
    prior_volume_mm3: float | None = None
    prior_date: str | None = None
    prior_diameter_mm: float | None = None  # longest axial, when typed in


@dataclass(frozen=True)
class ClinicalInputs:
    """What the reader enters for Brock; ``None`` when not entered."""

    age: float | None = None
    female: bool | None = None
    family_history: bool | None = None

    def brock_inputs(self) -> dict[str, BrockInput | None]:
        return {
            n: None if v is None else BrockInput(v, ENTERED)
            for n, v in (
                ("age", self.age),
                ("female", self.female),
                ("family_history", self.family_history),
            )
        }


@dataclass
class ExamNodule:
    name: str
    point_lps: tuple[float, float, float]
    result: NoduleResult | None  # None when refused
    assessment: str
    assessment_reason: str
    lung_rads: LungRadsSuggestion | None = None  # None when not answered
    brock: BrockResult | None = None
    prior: dict | None = None
    warnings: list[str] = field(default_factory=list)  # scope codes (core/scope/validation.py)
    # The matched nodule's analysis on the prior CT (core/prior/exam_prior.py): the report's key
    # image at the prior date; not in exam.json (its numbers are in ``prior``).
    prior_result: NoduleResult | None = None

    def to_dict(self) -> dict:
        values = self.result.values() if self.result is not None else {}
        entry = {"name": self.name}
        entry |= {f: values.get(f) for f in NODULE_FIELDS}
        entry |= {
            "point_lps": list(self.point_lps),
            "assessment": self.assessment,
            "assessment_reason": self.assessment_reason,
        }
        lr = self.lung_rads
        entry |= {
            "lung_rads": lr.category if lr else "",
            "lung_rads_screen": lr.screen if lr else "",
            "lung_rads_behavior": lr.behavior if lr else "",
            "lung_rads_texture_class": lr.texture_class if lr else "",
            "lung_rads_solid_mean_diameter_mm": lr.solid_mean_diameter_mm if lr else None,
            "lung_rads_reasons": list(lr.reasons) if lr else [],
            "lung_rads_supports_4x": list(lr.supports_4x) if lr else [],
            "lung_rads_management": row(lr.category).management if lr else "",
            "brock_probability": self.brock.probability if self.brock else None,
            "brock": self.brock.to_dict() if self.brock else None,
            "prior": self.prior,
        }
        return entry


@dataclass(frozen=True)
class ExamLungRads:
    category: str
    reasons: list[str]
    management: str
    suggestions: list[str]  # S and 4X: the reader's call
    nodule: str | None  # the nodule that sets the category

    def to_dict(self) -> dict:
        return {
            "lung_rads": self.category,
            "lung_rads_version": LUNG_RADS_VERSION,
            "lung_rads_descriptor": row(self.category).descriptor,
            "lung_rads_reasons": list(self.reasons),
            "lung_rads_management": self.management,
            "lung_rads_suggestions": list(self.suggestions),
            "lung_rads_nodule": self.nodule,
        }


@dataclass
class Exam:
    nodules: list[ExamNodule]
    lung_rads: ExamLungRads
    emphysema: BrockInput | None
    timings_s: dict = field(default_factory=dict)
    # The registered prior CT (core/prior/exam_prior.py): registration, findings, what was not
    # found in the current; ``None`` without one.
    prior_ct: dict | None = None

    def to_dict(self) -> dict:
        return {
            **self.lung_rads.to_dict(),
            "emphysema": None if self.emphysema is None else self.emphysema.to_dict(),
            "prior_ct": self.prior_ct,
            "nodules": [n.to_dict() for n in self.nodules],
            "timings_s": self.timings_s,
        }


def prior_entry(point: ExamPoint, result: NoduleResult | None) -> dict | None:
    """The nodule's ``prior`` entry from a typed-in prior measurement (``None`` without one),
    with the keys of a measured one (core/prior/prior_compare.py; what was not typed in is ``None``):
    the change in mean diameter and, with both volumes, the volume change and the
    volume-doubling time (core/prior/growth.py; no interval: no folds on the prior)."""
    if point.new:
        return {"source": ENTERED, "status": "new", "matched": False, "new": True}
    prior = point.prior
    if prior is None:
        return None
    entry = {
        "source": ENTERED,
        "status": "matched",
        "matched": True,
        "new": False,
        "date": point.prior_date,
        "interval_days": prior.interval_days,
        "diameter_mm": point.prior_diameter_mm,
        "mean_diameter_mm": prior.mean_diameter_mm,
        "solid_mean_diameter_mm": prior.solid_mean_diameter_mm,
        "volume_mm3": point.prior_volume_mm3,
        "diameter_change_mm": None,
        "mean_diameter_change_mm": None,
        "volume_ratio": None,
        "volume_change_percent": None,
        "vdt_days": None,
        "vdt_interval_days": None,
    }
    if result is None:
        return entry
    entry["mean_diameter_change_mm"] = result.mean_diameter_mm - prior.mean_diameter_mm
    if point.prior_diameter_mm:
        entry["diameter_change_mm"] = result.diameter_mm - point.prior_diameter_mm
    v0, v1 = point.prior_volume_mm3, result.volume_mm3
    if v0 and v0 > 0 and v1 > 0:
        change = growth(v0, v1, prior.interval_days)
        entry |= {
            "volume_ratio": change.volume_ratio,
            "volume_change_percent": change.volume_change_percent,
            "vdt_days": change.vdt_days,
        }
    return entry


def exam_nodule(point: ExamPoint, result: NoduleResult | None, refusal: str = "") -> ExamNodule:
    """A nodule of the exam from its analysis (``None`` with the refusal's message when it was
    refused): its tier, and its Lung-RADS (follow-up with a prior) when answered. The station
    and the module build their exam from the results they already hold with this and
    :func:`build_exam`."""
    if result is None:
        return ExamNodule(point.name, point.point_lps, None, "refused", refusal)
    values = result.values()
    tier = values["assessment"]
    nodule = ExamNodule(point.name, point.point_lps, result, tier, values["assessment_reason"])
    nodule.warnings = list(values["warnings"])
    if tier in ("assessed", "flagged") and result.lung_rads is not None:
        lr = result.lung_rads
        if point.new or point.prior is not None:
            lr = followup_lung_rads(lr, point.prior, new=point.new)
        nodule.lung_rads = lr
    nodule.prior = prior_entry(point, result)
    return nodule


def _analyze(image, geometry, point: ExamPoint, ensemble) -> ExamNodule:
    try:
        result = analyze_point(image, geometry, point.point_lps, ensemble, map_to_ct=False)
    except (RefusedError, PointOutsideVolumeError) as exc:
        return exam_nodule(point, None, str(exc))
    return exam_nodule(point, result)


def nodule_brock(
    nodule: ExamNodule,
    count: int,
    emphysema: BrockInput | None,
    lung_points: np.ndarray | None,
    clinical: ClinicalInputs = ClinicalInputs(),
    use_defaults: bool = False,
) -> BrockResult | None:
    """An answered nodule's Brock result (core/clinical/brock.py): its image-derived inputs, the exam's
    nodule ``count``, emphysema and lung points (core/clinical/brock_inputs.py), the clinical inputs;
    ``None`` on a CT without a lung mask (a crop: no emphysema, no lobe)."""
    r = nodule.result
    upper_lobe = upper_lobe_input(lung_points, nodule.point_lps)
    if emphysema is None or upper_lobe is None:
        return None
    inputs = clinical.brock_inputs() | {
        "emphysema": emphysema,
        "size_mm": size_input(r.diameter_mm),
        "nodule_type": nodule_type_input(nodule.lung_rads),
        "upper_lobe": upper_lobe,
        "nodule_count": BrockInput(count, MEASURED, "the exam's assessed nodules"),
        "spiculation": spiculation_input(r.scores["spiculation"]),
    }
    return brock_result(inputs, use_defaults=use_defaults)


def analyze_exam(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    points: list[ExamPoint],
    ensemble: Ensemble,
    clinical: ClinicalInputs = ClinicalInputs(),
    brock_defaults: bool = False,
) -> Exam:
    """Every point analyzed, its Lung-RADS and Brock; the exam's category (module docstring).
    ``brock_defaults``: compute Brock with the model's stated defaults for missing clinical
    inputs (marked "default") instead of leaving it out."""
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"nodule names must differ: {names}")
    timings = {}
    t = time.perf_counter()
    nodules = [_analyze(image_zyx, geometry, p, ensemble) for p in points]
    timings["analysis"] = time.perf_counter() - t
    timings["analysis_per_nodule"] = {
        n.name: n.result.timings_s.get("total") if n.result else None for n in nodules
    }
    return build_exam(image_zyx, geometry, nodules, clinical, brock_defaults, timings)


def build_exam(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    nodules: list[ExamNodule],
    clinical: ClinicalInputs = ClinicalInputs(),
    brock_defaults: bool = False,
    timings: dict | None = None,
) -> Exam:
    """The exam of analyzed nodules (:func:`exam_nodule`): the CT's emphysema, each answered
    nodule's Brock, the exam's Lung-RADS."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    lungs = chest_lungs(image_zyx, geometry)
    emphysema = emphysema_input(image_zyx, lungs)
    timings["emphysema"] = time.perf_counter() - t
    t = time.perf_counter()
    answered = [n for n in nodules if n.lung_rads is not None]
    points = lung_points_lps(lungs, geometry) if lungs is not None and answered else None
    for n in answered:
        n.brock = nodule_brock(n, len(answered), emphysema, points, clinical, brock_defaults)
    timings["brock"] = time.perf_counter() - t
    return Exam(nodules, exam_lung_rads(nodules, emphysema), emphysema, timings)


def exam_lung_rads(nodules: list[ExamNodule], emphysema: BrockInput | None = None) -> ExamLungRads:
    """The exam's category: its most suspicious answered nodule's (1 with none); S and 4X as
    suggestions with their reasons; the category's management (core/clinical/lung_rads_table.py)."""
    answered = [n for n in nodules if n.lung_rads is not None]
    reasons, suggestions = [], []
    if answered:
        top = answered[0]
        for n in answered[1:]:
            if more_suspicious(n.lung_rads.category, top.lung_rads.category):
                top = n
        category = top.lung_rads.category
        reasons.append(
            f"the most suspicious of {len(answered)} assessed nodule(s): {top.name}, "
            f"category {category} ({top.lung_rads.screen})"
        )
    else:
        top, category = None, "1"
        reasons.append("no assessed nodule: category 1 (no lung nodules)")
    for n in nodules:
        if n.lung_rads is None:
            reasons.append(
                f"{n.name} {n.assessment.replace('_', ' ')}, does not set the category: "
                f"{n.assessment_reason}"
            )
    for n in answered:
        if n.lung_rads.supports_4x and n.lung_rads.category in CATEGORIES_ALLOWING_4X:
            suggestions.append(
                f"4X could apply ({n.name}, category {n.lung_rads.category}): "
                + "; ".join(n.lung_rads.supports_4x)
            )
    if emphysema is not None and emphysema.value:
        suggestions.append(f"S could apply: emphysema, {emphysema.detail}")
    for n in nodules:
        if "outside_lung" in n.warnings:
            suggestions.append(
                f"S could apply: {n.name} lies outside the lung, a finding other than a lung "
                "nodule may be significant"
            )
    management = row(category).management
    if category != "4B" and any(s.startswith("4X") for s in suggestions):
        management += f". If 4X: {row('4X').management}"
    return ExamLungRads(category, reasons, management, suggestions, top.name if top else None)
