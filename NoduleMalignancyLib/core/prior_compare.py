"""Each nodule of the current CT found again on the registered prior CT, and each nodule of the
prior on the current one: re-segmented at the mapped point with the same model, classified
*matched*, *new* (not on the prior) or *not found in the current* (docs/DESIGN.md §17).

Why re-segment rather than carry a mask over: the outline of both dates then comes from the
same model and the same re-centring (core/recentre.py), which settles on the nodule from a few
mm away, so the registration's error does not enter the volumes. A re-segmentation is the same
nodule when it is answered (not refused, not "probably not a nodule", core/assessment.py) and
its outline's centre lies within :func:`match_tolerance_mm` of the mapped point.

What the comparison refuses or flags, and says so: a registration whose residual is poor
(core/registration.py), reconstructions whose slice spacing differs by more than
:data:`SLICE_RATIO_FLAG` (volumes measured across slice thicknesses differ), a missing date
(no interval: no volume-doubling time, and the follow-up rules take it as within 12 months).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .analysis import NoduleResult, analyze_point
from .assessment import NOT_ASSESSED
from .ensemble import Ensemble
from .geometry import ImageGeometry
from .growth import growth
from .registration import Registration
from .validation import RefusedError
from .voi import PointOutsideVolumeError, context_box_for_nodule, grid_points_lps

__all__ = [
    "MATCHED",
    "NEW",
    "NOT_FOUND",
    "Finding",
    "NoduleMatch",
    "comparison_findings",
    "find_nodule",
    "mapped_grid",
    "mapped_context",
    "match_tolerance_mm",
    "measured_prior_entry",
    "not_compared_entry",
    "outline_centre_lps",
]

MATCHED = "matched"
NEW = "new"  # on the current CT, not on the prior
NOT_FOUND = "not found in the current"  # on the prior, not on the current CT
MATCH_MM = 5.0  # the least tolerance of the outline's centre from the mapped point
SLICE_RATIO_FLAG = 1.5  # slice spacings differing by more than this factor are flagged


@dataclass(frozen=True)
class Finding:
    """A comparison-level problem: ``refused`` (no comparison) or ``flagged``."""

    code: str
    level: str
    message: str

    def to_dict(self) -> dict:
        return {"code": self.code, "level": self.level, "message": self.message}


def comparison_findings(
    current: ImageGeometry,
    prior: ImageGeometry,
    interval_days: float | None,
    registration: Registration | None,
) -> list[Finding]:
    """What makes the comparison of two CTs refused or flagged (module docstring)."""
    found = []
    dz, pz = current.spacing[2], prior.spacing[2]
    if max(dz, pz) > SLICE_RATIO_FLAG * min(dz, pz):
        found.append(
            Finding(
                "reconstructions_differ",
                "flagged",
                f"slice spacing {pz:.2f} mm on the prior, {dz:.2f} mm on the current CT: "
                "volumes measured across different slice thicknesses differ, read the change "
                "with care",
            )
        )
    if interval_days is None:
        found.append(
            Finding(
                "date_missing",
                "flagged",
                "a date is missing (the exam's or the prior's): no volume-doubling time, and "
                "the follow-up rules take the interval as within 12 months",
            )
        )
    elif interval_days <= 0:
        found.append(
            Finding(
                "prior_not_before",
                "refused",
                f"the prior is dated {-interval_days:.0f} days after the current CT",
            )
        )
    if registration is not None and registration.verdict != "good":
        found.append(
            Finding("registration_poor", registration.verdict, registration.verdict_reason)
        )
    return found


def outline_centre_lps(result: NoduleResult) -> np.ndarray:
    """The centroid of the measured outline (world LPS); the point analyzed without one."""
    mask = np.asarray(result.segmentation_mask_voi, dtype=bool)
    if not mask.any():
        return np.asarray(result.point_lps, dtype=float)
    return grid_points_lps(result.voi_geometry)[mask].mean(0)


def match_tolerance_mm(diameter_mm: float | None) -> float:
    """How far a re-segmented outline's centre may lie from the mapped point: half the
    nodule's diameter, at least :data:`MATCH_MM` (the registration's error plus the outline's
    growth to one side)."""
    return max(MATCH_MM, 0.5 * float(diameter_mm or 0.0))


def mapped_grid(grid: ImageGeometry, to_other) -> ImageGeometry:
    """A grid mapped exactly by an affine ``to_other`` (world LPS points -> world LPS points):
    the same voxels, the mapped axes (a point keeps its index)."""
    origin = to_other(np.asarray(grid.origin, dtype=float))
    axes = to_other(grid.index_to_lps(np.eye(3))) - origin  # rows: the mapped i, j, k steps
    spacing = np.linalg.norm(axes, axis=1)
    direction = (axes / spacing[:, None]).T  # columns: the axes' directions (ITK)
    return ImageGeometry(
        tuple(map(float, origin)),
        tuple(map(float, spacing)),
        tuple(map(float, direction.ravel())),
        grid.size,
    )


def mapped_context(
    result: NoduleResult, to_other, other: ImageGeometry, ensemble: Ensemble
) -> tuple[np.ndarray, ImageGeometry]:
    """The VOI centre and context crop (core/voi.context_box_for_nodule) the nodule's answer
    came from, mapped onto the other CT by ``to_other`` (world LPS points -> world LPS points,
    affine; the crop exactly, :func:`mapped_grid`): the other date is shown the same view of
    the nodule, in one pass. Why: on a small nodule the crop the context passes settle on
    decides much of the outline (LIDC-IDRI-0006's 6.6 mm nodule: 97 to 119 mm3 on the same
    anatomy resampled with noise), so two dates analyzed each from scratch differ by their
    crops. Measured on the synthetic pairs (docs/experiments/prior_pairs.md): growth 1.5x/2x
    within 15 % in 8 of 10 cases this way, 7 of 10 with each date's own passes; the price is a
    bias on stable pairs (median +3 %, the settled crop holds a slightly larger outline than
    the same crop shown another scan). Without a recorded crop, one is built from the outline
    mapped."""
    centre = result.voi_center_lps
    centre = outline_centre_lps(result) if centre is None else centre
    if result.context_box is not None:
        return to_other(centre), mapped_grid(result.context_box, to_other)
    cfg = ensemble.manifest.voi
    points = grid_points_lps(result.voi_geometry)[np.asarray(result.segmentation_mask_voi, bool)]
    crop = context_box_for_nodule(
        other,
        to_other(outline_centre_lps(result)),
        to_other(points) if len(points) else None,
        axial_diameter_mm=result.diameter_mm,
        fov_z_mm=(cfg.shape_zyx[0] - 1) * cfg.spacing_zyx[0],
    )
    return to_other(centre), crop


def find_nodule(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    point_lps,
    ensemble: Ensemble,
    tolerance_mm: float,
    context: ImageGeometry | None = None,
) -> tuple[NoduleResult | None, float | None, str]:
    """The nodule at a mapped point: (its analysis or ``None``, the distance of its outline's
    centre from the point, why it is not taken as the nodule ("" when it is)). With
    ``context`` (:func:`mapped_context`) one pass in that crop, else the context passes."""
    try:
        result = analyze_point(
            image_zyx, geometry, point_lps, ensemble, context=context, map_to_ct=False
        )
    except (RefusedError, PointOutsideVolumeError) as exc:
        return None, None, f"refused at the mapped point: {exc}"
    distance = float(np.linalg.norm(outline_centre_lps(result) - np.asarray(point_lps)))
    if not np.asarray(result.segmentation_mask_voi).any():
        return result, None, "no outline at the mapped point"
    assessment = result.assessment
    if assessment.tier == NOT_ASSESSED:
        return result, distance, f"probably not a nodule at the mapped point: {assessment.reason}"
    if distance > tolerance_mm:
        return (
            result,
            distance,
            (
                f"the outline at the mapped point is centred {distance:.1f} mm away "
                f"(> {tolerance_mm:.1f} mm): another structure"
            ),
        )
    return result, distance, ""


@dataclass
class NoduleMatch:
    """One nodule of the comparison: its status, the analyses on each CT that were made, the
    mapped point and why it is not matched."""

    name: str
    status: str  # MATCHED, NEW or NOT_FOUND
    current: NoduleResult | None
    prior: NoduleResult | None
    mapped_point_lps: np.ndarray  # on the other CT
    distance_mm: float | None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


SIZE_KEYS = (
    "assessment",
    "diameter_mm",
    "mean_diameter_mm",
    "solid_mean_diameter_mm",
    "texture_class",
    "volume_mm3",
    "fold_volumes_mm3",
)


def _size(result: NoduleResult | None) -> dict:
    if result is None:
        return dict.fromkeys(SIZE_KEYS)
    lr = result.lung_rads
    return {
        "assessment": result.assessment.tier,
        "diameter_mm": result.diameter_mm,
        "mean_diameter_mm": result.mean_diameter_mm,
        "solid_mean_diameter_mm": lr.solid_mean_diameter_mm if lr else None,
        "texture_class": lr.texture_class if lr else None,
        "volume_mm3": result.volume_mm3,
        "fold_volumes_mm3": list(result.fold_volumes_mm3),
    }


def not_compared_entry(date: str | None, interval_days: float | None, findings) -> dict:
    """The ``prior`` entry of a nodule when the comparison was refused (findings say why)."""
    why = "; ".join(f.message for f in findings if f.level == "refused")
    return {
        "source": "measured",
        "status": "not compared",
        "matched": None,
        "new": None,
        "date": date,
        "interval_days": interval_days,
        "reason": f"the prior CT was not compared: {why or 'registration failed'}",
    }


def measured_prior_entry(
    match: NoduleMatch, date: str | None, interval_days: float | None, findings: list[Finding]
) -> dict:
    """The nodule's ``prior`` entry in ``exam.json`` from a registered prior CT: both dates'
    sizes, the change in mm and %, the VDT with its interval (core/growth.py), the mapping."""
    matched = match.status == MATCHED
    entry = {
        "source": "measured",
        "status": match.status,
        "matched": matched,
        "new": match.status == NEW,
        "date": date,
        "interval_days": interval_days,
        "mapped_point_lps": [float(v) for v in match.mapped_point_lps],
        "mapping_distance_mm": match.distance_mm,
        "reason": match.reason,
        "warnings": [f.message for f in findings if f.level == "flagged"],
        **_size(None),
        "diameter_change_mm": None,
        "mean_diameter_change_mm": None,
    }
    keys = ("volume_ratio", "volume_change_percent", "volume_ratio_fold_range", "vdt_days")
    entry |= {k: None for k in (*keys, "vdt_interval_days", "vdt_note")}
    if matched and match.current is not None:
        p, c = match.prior, match.current
        entry |= _size(p)
        entry["point_lps"] = [float(v) for v in outline_centre_lps(p)]
        entry["diameter_change_mm"] = c.diameter_mm - p.diameter_mm
        entry["mean_diameter_change_mm"] = c.mean_diameter_mm - p.mean_diameter_mm
        if p.volume_mm3 > 0 and c.volume_mm3 > 0:
            change = growth(
                p.volume_mm3, c.volume_mm3, interval_days, p.fold_volumes_mm3, c.fold_volumes_mm3
            )
            entry |= change.to_dict()
    return entry
