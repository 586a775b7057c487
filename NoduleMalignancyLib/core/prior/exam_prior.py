"""The exam with a prior CT: the prior registered (core/prior/registration.py), every nodule of the
current CT looked for on the prior and every nodule listed for the prior looked for on the
current CT (core/prior/prior_compare.py), the matched ones' change and volume-doubling time, and the
Lung-RADS v2022 follow-up rules on what was measured (core/clinical/lung_rads_followup.py), as for a
prior typed in (docs/DESIGN.md §17).

A prior nodule not matched to a listed current nodule is looked for on the current CT at its
mapped point: found, it joins the exam (named as on the prior: the reader did not list it);
not found, it is listed under the prior CT as *not found in the current*.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..clinical.exam import ClinicalInputs, Exam, ExamNodule, ExamPoint, build_exam, exam_nodule
from ..clinical.lung_rads_followup import PriorMeasurement
from ..geometry import ImageGeometry
from ..model.ensemble import Ensemble
from ..nodule.analysis import NoduleResult, analyze_point
from ..nodule.voi import PointOutsideVolumeError
from ..scope.validation import RefusedError
from .growth import days_between, iso_date
from .prior_compare import (
    MATCHED,
    NEW,
    NOT_FOUND,
    NoduleMatch,
    comparison_findings,
    find_on_other,
    match_tolerance_mm,
    measured_prior_entry,
    not_compared_entry,
    outline_centre_lps,
)
from .registration import register_prior

__all__ = [
    "PriorCT",
    "analyze_exam_with_prior",
    "compare_exam_with_prior",
    "days_between",
    "followup_of",
    "iso_date",
    "match_on_prior",
]


@dataclass
class PriorCT:
    """The prior CT, its date (YYYY-MM-DD or ``None``) and the nodules listed on it (names and
    points in its own frame; may be empty)."""

    image_zyx: np.ndarray
    geometry: ImageGeometry
    date: str | None = None
    points: tuple[ExamPoint, ...] = ()
    description: dict | None = None  # what was read (file, series identity)
    kernel: str | None = None  # its reconstruction kernel (DICOM ConvolutionKernel), if known


def _analyze(image, geometry, point_lps, ensemble):
    try:
        return analyze_point(image, geometry, point_lps, ensemble, map_to_ct=False), ""
    except (RefusedError, PointOutsideVolumeError) as exc:
        return None, str(exc)


def _answered(nodule: ExamNodule) -> bool:
    return nodule.result is not None and nodule.assessment in ("assessed", "flagged")


def _followup_point(point: ExamPoint, match: NoduleMatch, interval: float | None) -> ExamPoint:
    """The point with what the follow-up rules need from the match."""
    if match.status == NEW:
        return ExamPoint(point.name, point.point_lps, new=True)
    p = match.prior
    lr = p.lung_rads
    measured = PriorMeasurement(
        p.mean_diameter_mm,
        lr.solid_mean_diameter_mm if lr else None,
        lr.texture_class if lr else None,
        interval,
    )
    return ExamPoint(point.name, point.point_lps, measured, False, p.volume_mm3)


def followup_of(match: NoduleMatch, interval_days: float | None):
    """The Lung-RADS v2022 follow-up suggestion of a current nodule given its match on the
    prior (matched: its prior size; new: the new-nodule rules), as the exam gives it
    (core/clinical/exam.exam_nodule); ``None`` when the nodule is not answered. The station's panel."""
    point = ExamPoint(match.name, tuple(match.current.point_lps))
    return exam_nodule(_followup_point(point, match, interval_days), match.current).lung_rads


def match_on_prior(
    name: str, result: NoduleResult, registration, prior: PriorCT, ensemble, current=None
):
    """A current nodule looked for on the prior: re-segmented in one pass on the view its
    answer came from, the same VOI samples and crop mapped (core/prior/prior_compare.same_view);
    matched, or new with the reason. With the current CT (``current``: image, grid) a nodule
    whose outline reaches the network's field of view's edge has both volumes measured
    through overlapping windows."""
    mapped = registration.current_to_prior(outline_centre_lps(result))
    found, distance, why, windowed = find_on_other(
        result, prior.image_zyx, prior.geometry, registration.current_to_prior,
        registration.prior_to_current, ensemble, current,
    )  # fmt: skip
    match = NoduleMatch(name, NEW if why else MATCHED, result, found, mapped, distance, why)
    if windowed:
        match.windowed_mm3 = {"current": windowed["this"], "prior": windowed["other"]}
    return match


def _near(point_lps, matches: list[NoduleMatch]) -> NoduleMatch | None:
    """The matched nodule whose prior outline a prior point belongs to."""
    for m in matches:
        if m.status != MATCHED:
            continue
        centre = outline_centre_lps(m.prior)
        if np.linalg.norm(centre - np.asarray(point_lps)) <= match_tolerance_mm(
            m.prior.diameter_mm
        ):
            return m
    return None


def analyze_exam_with_prior(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    points: list[ExamPoint],
    ensemble: Ensemble,
    prior: PriorCT,
    interval_days: float | None,
    clinical: ClinicalInputs | None = None,
    brock_defaults: bool = False,
    current_kernel: str | None = None,
) -> Exam:
    """The exam of the current CT's points with the prior compared (module docstring).
    ``interval_days``: current date less the prior's, ``None`` when a date is missing;
    ``current_kernel``: the current CT's reconstruction kernel, if known."""
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"nodule names must differ: {names}")
    t = time.perf_counter()
    analyzed = [(p, *_analyze(image_zyx, geometry, p.point_lps, ensemble)) for p in points]
    timings = {"analysis": time.perf_counter() - t}
    timings["analysis_per_nodule"] = {
        p.name: r.timings_s.get("total") if r else None for p, r, _ in analyzed
    }
    return compare_exam_with_prior(
        image_zyx, geometry, analyzed, ensemble, prior, interval_days, clinical, brock_defaults,
        timings, current_kernel,
    )  # fmt: skip


def compare_exam_with_prior(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    analyzed: list[tuple[ExamPoint, NoduleResult | None, str]],
    ensemble: Ensemble,
    prior: PriorCT,
    interval_days: float | None,
    clinical: ClinicalInputs | None = None,
    brock_defaults: bool = False,
    timings: dict | None = None,
    current_kernel: str | None = None,
) -> Exam:
    """The exam of nodules already analyzed on the current CT ((point, result or ``None``,
    refusal) each: the module's session) with the prior registered and compared."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    registration, registration_error = None, ""
    try:
        registration = register_prior(image_zyx, geometry, prior.image_zyx, prior.geometry)
    except ValueError as exc:
        registration_error = str(exc)
    timings["registration"] = time.perf_counter() - t
    findings = comparison_findings(
        geometry, prior.geometry, interval_days, registration, (current_kernel, prior.kernel)
    )
    refused = registration is None or any(f.level == "refused" for f in findings)

    t = time.perf_counter()
    nodules, matches, not_found = [], [], []
    for point, result, refusal in analyzed:
        nodule = exam_nodule(point, result, refusal)
        if refused and _answered(nodule):
            nodule.prior = not_compared_entry(prior.date, interval_days, findings)
        if refused or not _answered(nodule):
            nodules.append(nodule)
            continue
        match = match_on_prior(
            point.name, result, registration, prior, ensemble, (image_zyx, geometry)
        )
        found, status = match.prior, match.status
        matches.append(match)
        nodule = exam_nodule(_followup_point(point, match, interval_days), result)
        nodule.prior = measured_prior_entry(match, prior.date, interval_days, findings)
        nodule.prior_result = found if status == MATCHED else None
        nodules.append(nodule)

    for point in () if refused else prior.points:
        if _near(point.point_lps, matches) is not None:
            continue
        on_prior, refusal = _analyze(prior.image_zyx, prior.geometry, point.point_lps, ensemble)
        found, distance, why = None, None, ""
        if on_prior is not None:
            mapped = registration.prior_to_current(outline_centre_lps(on_prior))
            found, distance, why, windowed = find_on_other(
                on_prior, image_zyx, geometry, registration.prior_to_current,
                registration.current_to_prior, ensemble, (prior.image_zyx, prior.geometry),
            )  # fmt: skip
        else:
            mapped = registration.prior_to_current(point.point_lps)
        if on_prior is not None and not why:
            # mapped_point_lps on the prior's side: where the reader listed it
            prior_point = np.asarray(point.point_lps, dtype=float)
            match = NoduleMatch(point.name, MATCHED, found, on_prior, prior_point, distance)
            if windowed:
                match.windowed_mm3 = {"current": windowed["other"], "prior": windowed["this"]}
            matches.append(match)
            listed = ExamPoint(point.name, tuple(map(float, outline_centre_lps(found))))
            nodule = exam_nodule(_followup_point(listed, match, interval_days), found)
            nodule.prior = measured_prior_entry(match, prior.date, interval_days, findings)
            nodule.prior["reason"] = "listed on the prior only: found on the current CT"
            nodule.prior_result = on_prior
            nodules.append(nodule)
            continue
        reason = why if on_prior is not None else f"refused on the prior CT: {refusal}"
        entry = {
            "name": point.name,
            "status": NOT_FOUND,
            "point_lps": list(point.point_lps),
            "mapped_point_lps": [float(v) for v in mapped],
            "reason": reason,
            "volume_mm3": on_prior.volume_mm3 if on_prior else None,
            "diameter_mm": on_prior.diameter_mm if on_prior else None,
            "mean_diameter_mm": on_prior.mean_diameter_mm if on_prior else None,
        }
        not_found.append(entry)
    timings["prior_matching"] = time.perf_counter() - t

    clinical = clinical or ClinicalInputs()
    exam = build_exam(image_zyx, geometry, nodules, clinical, brock_defaults, timings)
    exam.prior_ct = {
        **(prior.description or {}),
        "date": prior.date,
        "interval_days": interval_days,
        "compared": not refused,
        "findings": [f.to_dict() for f in findings],
        "registration": registration.to_dict() if registration else None,
        "registration_error": registration_error or None,
        "matched": [m.name for m in matches if m.status == MATCHED],
        "new": [m.name for m in matches if m.status == NEW],
        "not_found_in_current": not_found,
    }
    if registration is None:
        exam.prior_ct["findings"].append(
            {"code": "registration_failed", "level": "refused", "message": registration_error}
        )
    return exam
