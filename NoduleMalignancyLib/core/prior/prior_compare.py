"""Each nodule of the current CT found again on the registered prior CT, and each nodule of the
prior on the current one: re-segmented at the mapped point with the same model, classified
*matched*, *new* (not on the prior) or *not found in the current* (docs/DESIGN.md §17).

Why re-segment rather than carry a mask over: the outline of both dates then comes from the
same model and the same re-centring (core/nodule/recentre.py), which settles on the nodule from a few
mm away, so the registration's error does not enter the volumes. A re-segmentation is the same
nodule when it is answered (not refused, not "probably not a nodule", core/scope/assessment.py) and
its outline's centre lies within :func:`match_tolerance_mm` of the mapped point.

What the comparison refuses or flags, and says so: a registration whose residual is poor
(core/prior/registration.py), reconstructions whose slice spacing differs by more than
:data:`SLICE_RATIO_FLAG` (volumes measured across slice thicknesses differ) or whose kernels
differ where both are known (DICOM ConvolutionKernel), a missing date
(no interval: no volume-doubling time, and the follow-up rules take it as within 12 months).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..geometry import ImageGeometry
from ..model.ensemble import Ensemble
from ..nodule.analysis import NoduleResult, analyze_point
from ..nodule.measurements import component_at_center, nodule_size
from ..nodule.voi import (
    Z_EXTENT_PER_DIAMETER,
    PointOutsideVolumeError,
    context_box_for_nodule,
    grid_points_lps,
    sample_voi,
    voi_geometry,
)
from ..scope.assessment import NOT_ASSESSED
from ..scope.validation import RefusedError
from .growth import growth
from .registration import Registration

__all__ = [
    "MATCHED",
    "NEW",
    "NOT_FOUND",
    "Finding",
    "NoduleMatch",
    "comparison_findings",
    "find_nodule",
    "find_on_other",
    "beyond_field",
    "map_scale",
    "mapped_grid",
    "moved_to_own_world",
    "match_tolerance_mm",
    "measured_prior_entry",
    "not_compared_entry",
    "outline_centre_lps",
    "same_view",
    "windowed_volumes",
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
    kernels: tuple[str | None, str | None] = (None, None),
) -> list[Finding]:
    """What makes the comparison of two CTs refused or flagged (module docstring).
    ``kernels``: the current's and the prior's reconstruction kernel (DICOM ConvolutionKernel),
    ``None`` where unknown: compared only when both are known."""
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
    current_kernel, prior_kernel = (" ".join(str(k or "").split()) for k in kernels)
    if current_kernel and prior_kernel and current_kernel.upper() != prior_kernel.upper():
        found.append(
            Finding(
                "kernels_differ",
                "flagged",
                f"reconstruction kernel {prior_kernel!r} on the prior, {current_kernel!r} on the "
                "current CT: a sharper kernel draws a nodule's edge differently, read the change "
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


def map_scale(to_other) -> float:
    """|det| of an affine map's linear part: the other CT's mm3 per mm3 of this one."""
    origin = to_other(np.zeros(3))
    return float(abs(np.linalg.det(to_other(np.eye(3)) - origin)))


def same_view(
    result: NoduleResult, other: ImageGeometry, to_this
) -> tuple[np.ndarray, ImageGeometry | None, ImageGeometry]:
    """How the other CT is shown the view this nodule's answer came from: (the VOI centre, the
    context crop, the other CT's grid placed in this CT's world by ``to_this`` (other world
    LPS -> this world LPS, affine; :func:`mapped_grid`, no resampling)). Analyzed so, the other
    date's VOI samples the same physical points, mapped, as this date's, and its crop admits
    the same of them: the same context, sample for sample.

    Why: on a small nodule the crop decides much of the outline (the network fills the z
    extent it is shown), down to where the VOI's 1 mm samples fall against the crop's ends.
    The answer's VOI centre is a CT voxel, so its samples meet the crop's end slices exactly
    and a 3-slice crop at 2.5 mm admits 6 of them; the same crop mapped onto the other CT and
    sampled on a VOI centred on the mapped point admitted 5 (the ends fall between samples):
    LIDC-IDRI-0006's 6.6 mm nodule then measured 19 % less on a stable synthetic pair
    (docs/experiments/prior_pairs.md). Without a recorded crop (``None``) the other date gets
    its own context passes from that centre."""
    centre = result.voi_center_lps
    centre = outline_centre_lps(result) if centre is None else np.asarray(centre, dtype=float)
    return centre, result.context_box, mapped_grid(other, to_this)


def moved_to_own_world(found: NoduleResult, to_other) -> NoduleResult:
    """A result analyzed with its CT placed in another CT's world (:func:`same_view`), in its
    CT's own world again: the grids and points mapped by ``to_other`` (that world -> its own),
    the volumes by the map's determinant and the lengths by its cube root (exact for a rigid
    map, an isotropic approximation for an affine one)."""
    scale = map_scale(to_other)
    length = scale ** (1.0 / 3.0)
    found.point_lps = tuple(map(float, to_other(np.asarray(found.point_lps, dtype=float))))
    found.voi_geometry = mapped_grid(found.voi_geometry, to_other)
    if found.voi_center_lps is not None:
        found.voi_center_lps = to_other(np.asarray(found.voi_center_lps, dtype=float))
    if found.context_box is not None:
        found.context_box = mapped_grid(found.context_box, to_other)
    found.volume_mm3 *= scale
    found.fold_volumes_mm3 = [v * scale for v in found.fold_volumes_mm3]
    found.diameter_mm *= length
    found.short_axis_mm *= length
    found.mean_diameter_mm *= length
    return found


def find_nodule(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    point_lps,
    ensemble: Ensemble,
    tolerance_mm: float,
    context: ImageGeometry | None = None,
    to_own=None,
) -> tuple[NoduleResult | None, float | None, str]:
    """The nodule at a mapped point: (its analysis or ``None``, the distance of its outline's
    centre from the point, why it is not taken as the nodule ("" when it is)). With
    ``context`` one pass in that crop, else the context passes. With ``to_own``, ``geometry``
    is the CT's grid placed in another CT's world and ``point_lps`` and ``context`` are in that
    world (:func:`same_view`); ``to_own`` maps it back to the CT's own world, where the result
    and the distance are given (:func:`moved_to_own_world`)."""
    try:
        result = analyze_point(
            image_zyx, geometry, point_lps, ensemble, context=context, map_to_ct=False
        )
    except (RefusedError, PointOutsideVolumeError) as exc:
        return None, None, f"refused at the mapped point: {exc}"
    if to_own is not None:
        result = moved_to_own_world(result, to_own)
        point_lps = to_own(np.asarray(point_lps, dtype=float))
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


def find_on_other(
    result: NoduleResult,
    other_image_zyx: np.ndarray,
    other: ImageGeometry,
    to_other,
    to_this,
    ensemble: Ensemble,
    this_ct: tuple[np.ndarray, ImageGeometry] | None = None,
) -> tuple[NoduleResult | None, float | None, str, dict | None]:
    """This CT's nodule looked for on the other CT (``to_other``/``to_this``: the
    registration both ways, world LPS points): one pass shown this answer's view
    (:func:`same_view`), judged by :func:`find_nodule` in the other CT's world, the distance
    from the mapped VOI centre. The fourth item, given this CT (``this_ct``: image, grid):
    where either outline reaches the edge of the network's field of view, both dates' volumes
    through overlapping windows (:func:`windowed_volumes`; ``{"this": (mm3, folds), "other":
    ...}``, each in its CT's own mm3), else ``None``."""
    centre, crop, placed = same_view(result, other, to_this)
    tolerance = match_tolerance_mm(result.diameter_mm)
    found, distance, why = find_nodule(
        other_image_zyx, placed, centre, ensemble, tolerance, crop, to_other
    )
    volumes = None
    if this_ct is not None and found is not None and not why:
        axes = beyond_field(result, found, ensemble)
        if any(axes):
            volumes = windowed_volumes(
                this_ct, (other_image_zyx, placed), centre, crop, axes, ensemble
            )
            scale = map_scale(to_other)
            v, folds = volumes["other"]
            volumes["other"] = (v * scale, [f * scale for f in folds])
    return found, distance, why, volumes


def beyond_field(result: NoduleResult, other: NoduleResult, ensemble: Ensemble) -> list[bool]:
    """Along which VOI axes (z, y, x) the nodule may reach past the network's field of view:
    either date's outline reaches a face of it, or (z) the crop rule's z extent (1.25 x the
    longest axial diameter, core/nodule/voi.py) exceeds it, so the crop was cut to it."""
    cfg = ensemble.manifest.voi
    fov_z = (cfg.shape_zyx[0] - 1) * cfg.spacing_zyx[0]
    axes = []
    for a in range(3):
        reached = False
        for r in (result, other):
            mask = np.asarray(r.segmentation_mask_voi, dtype=bool)
            reached |= bool(np.take(mask, 0, axis=a).any() or np.take(mask, -1, axis=a).any())
        axes.append(reached)
    longest = max(result.diameter_mm, other.diameter_mm)
    axes[0] |= Z_EXTENT_PER_DIAMETER * longest > fov_z
    return axes


def _windowed(image_zyx, geometry, centre_lps, crop, steps, pad, ensemble):
    """The folds' segmentation probability on the VOI lattice about ``centre_lps`` extended by
    ``pad`` voxels each side, from windows shifted by half the field of view (``steps`` per
    axis: -1, 0, 1), each weighted by a Gaussian about its centre (sigma 1/8 of its size, as
    nnU-Net's sliding windows) where it saw the image; and where any window saw it."""
    cfg = ensemble.manifest.voi
    shape, half = np.asarray(cfg.shape_zyx), np.asarray(cfg.shape_zyx) // 2
    spacing = np.asarray(cfg.spacing_zyx, dtype=float)
    size = tuple(shape + 2 * pad)
    g = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in shape]
    weight = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
    total, weights = None, np.zeros(size)
    for step in itertools.product(*steps):
        shift = np.asarray(step) * half
        at = np.asarray(centre_lps, dtype=float) + (shift * spacing)[::-1]
        sample = sample_voi(image_zyx, geometry, at, cfg, context=crop, require_inside=False)
        prob = ensemble.run(sample.channels[None]).seg_probability[:, 0]  # (K, D, H, W)
        if total is None:
            total = np.zeros((len(prob), *size))
        box = tuple(slice(p + s, p + s + n) for p, s, n in zip(pad, shift, shape, strict=True))
        w = weight * sample.valid
        total[(slice(None), *box)] += prob * w
        weights[box] += w
    seen = weights > 0
    return np.where(seen, total / np.where(seen, weights, 1.0), 0.0), seen


def windowed_volumes(this, other, centre_lps, crop, axes, ensemble) -> dict:
    """Both dates' volumes (mm3, and each fold's) of a nodule that may reach past the
    network's field of view (32 x 31 x 31 mm; :func:`beyond_field`), where one window's
    volume is a lower bound: sliding windows on the VOI lattice about ``centre_lps``, shifted
    by half the field of view along ``axes`` (z, y, x), probabilities weighted by a Gaussian
    about each window's centre (sigma 1/8 of its size, as nnU-Net's) where it saw the image.
    The crop is rebuilt once from this date's windowed outline (the training crops' policy,
    core/nodule/voi.context_box_for_nodule, its z extent no longer cut to one field of view: the
    windows cover it); both dates are then measured through the same windows in that crop.
    ``this``/``other``: (image, its grid in this CT's world)."""
    cfg = ensemble.manifest.voi
    half = np.asarray(cfg.shape_zyx) // 2
    spacing = np.asarray(cfg.spacing_zyx, dtype=float)
    steps = [(-1, 0, 1) if on else (0,) for on in axes]
    pad = half * np.asarray(axes, dtype=int)
    voxel_mm3 = float(np.prod(spacing))

    def outline(prob, seen):
        return component_at_center((prob >= 0.5) & seen)

    prob, seen = _windowed(*this, centre_lps, crop, steps, pad, ensemble)
    mask = outline(prob.mean(0), seen)
    lattice = voi_geometry(centre_lps, cfg)
    points = lattice.index_to_lps((np.argwhere(mask) - pad)[:, ::-1].astype(float))
    crop = context_box_for_nodule(
        this[1], centre_lps, points, axial_diameter_mm=nodule_size(mask, spacing).diameter_mm
    )
    volumes = {}
    for name, ct in (("this", this), ("other", other)):
        prob, seen = _windowed(*ct, centre_lps, crop, steps, pad, ensemble)
        folds = [float(outline(p, seen).sum() * voxel_mm3) for p in prob]
        volumes[name] = (float(outline(prob.mean(0), seen).sum() * voxel_mm3), folds)
    return volumes


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
    # Where an outline reached the field of view's edge: both dates' volumes (mm3 and the
    # folds') through overlapping windows, {"current": ..., "prior": ...} (windowed_volumes).
    windowed_mm3: dict | None = None


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
    sizes, the change in mm and %, the VDT with its interval (core/prior/growth.py), the mapping."""
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
        volumes = {
            "current": (c.volume_mm3, c.fold_volumes_mm3),
            "prior": (p.volume_mm3, p.fold_volumes_mm3),
        }
        if match.windowed_mm3:
            volumes = match.windowed_mm3
            entry["volume_mm3"] = volumes["prior"][0]
            entry["fold_volumes_mm3"] = list(volumes["prior"][1])
            entry["warnings"].append(
                "the nodule may reach past the network's field of view (32 mm): both dates' "
                "volumes measured through overlapping windows (current "
                f"{volumes['current'][0]:.0f} mm3, prior {volumes['prior'][0]:.0f} mm3)"
            )
        (vp, fp), (vc, fc) = volumes["prior"], volumes["current"]
        if vp > 0 and vc > 0:
            entry |= growth(vp, vc, interval_days, fp, fc).to_dict()
    return entry
