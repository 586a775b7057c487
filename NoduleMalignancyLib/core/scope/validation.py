"""Scope: refuse what the model cannot answer, flag what lies outside what it was trained on.

One layer for every entry point (``analyze_point`` and so the CLI, ``predict``, the MRML logic,
the batch paths). Two outcomes, each with a stable code and a plain message:

* **refused** (:class:`RefusedError`, no numbers): ``not_3d``, ``not_ct``, ``no_tissue``,
  ``no_nodule_at_point``;
* **warning** (:class:`Finding` in ``result.warnings``, numbers shown): ``thick_slices``,
  ``exceeds_field_of_view``, ``large_mass``, ``segmentation_leak``, ``folds_disagree``,
  ``outside_lung``, ``vessel_at_point`` (core/scope/vessel.py), ``point_off_nodule``,
  ``no_contrast_at_centre`` (core/scope/curvature.py).

The model was trained on LIDC nodules (3-30 mm, slices <= 2.5 mm, tight crops). Thresholds
are :class:`ScopeConfig` fields; how often each warning fires on the 794 LIDC VOIs is in
docs/experiments/README.md ("Scope"). docs/DESIGN.md §12.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import ImageGeometry, bounding_box
from ..nodule.measurements import component_at_center
from ..nodule.recentre import nodule_centre
from . import vessel
from .curvature import blob_figures
from .lung_mask import (
    LungMask,
    inside_lung_envelope,
    lung_above_or_below,
    lung_distance_mm,
    lung_mask,
)
from .vessel import VesselModel, axis_figures, continuation_figures, shape_figures

__all__ = [
    "DESCRIPTIONS",
    "REFUSALS",
    "WARNINGS",
    "Finding",
    "RefusedError",
    "ScopeConfig",
    "check_image",
    "check_point",
    "check_result",
    "chest_lungs",
    "lung_side",
    "vessel_figures",
]

REFUSALS = ("not_3d", "not_ct", "no_tissue", "no_nodule_at_point")
WARNINGS = (
    "thick_slices",
    "exceeds_field_of_view",
    "large_mass",
    "segmentation_leak",
    "folds_disagree",
    "outside_lung",
    "vessel_at_point",
    "point_off_nodule",
    "no_contrast_at_centre",
)

# Fitted by docs/experiments/vessel_clicks.py on the outlines of the ensemble shipped before
# (lidc-mil-20261203-a70a8cf), lung field with a 10 mm closing and an opening of 0.7 x the
# inscribed radius. On the outlines of lidc-mil-20261203-6508324 it flags 73 % of the vessel
# clicks and 1.2 % of the inserted nodules (a refit there 58 % at the same 1.2 %), on those of
# the shipped lidc-mil-20261207-93df8f2 70 % and 1.0 % (a refit 74 % / 1.2 % in sample, 2.2 %
# of the nodules leaving one CT out): kept (docs/experiments/README.md, "Scope").
VESSEL_MODEL = VesselModel(
    mean=(1.76, 0.6738, 0.8084, 1.292, 2.402, 0.2183, 2.872),
    scale=(0.4534, 0.1399, 0.1279, 0.3903, 0.4444, 0.6844, 5.813),
    weights=(0.6368, -1.348, -0.4105, -0.7764, -0.3269, 0.8174, 0.505),
    bias=-2.12,
    threshold=2.33,
)
# Clicked on a random voxel of its consensus mask, a LIDC nodule's outline misses the point by
# one or two voxels (1.17-1.77 mm) now and then at the nodule's edge (15 of 794), by more for 1
# (2.6 mm); at the listed centres for 1 of 793, a 29 mm nodule whose centre the outline leaves out
# (off_centre_clicks.py, scope_rates.py in docs/experiments). 1.8 mm lies between the VOI grid's
# distances 1.77 and 2.0 mm.
POINT_DISTANCE_MM = 1.8
# The 99th percentile on the LIDC nodules' own outlines in their VOIs (793, juxtapleural and
# juxtavascular ones included; docs/experiments/vessel_axis_vois.py): the nodules inserted into
# the full CTs (vessel_clicks.py, intrapulmonary by construction) would have allowed -350 HU
# (1 of 409 above it, vessel clicks flagged 0.64 -> 0.72; vessel_axis.py), but 8.7 % of the LIDC
# nodules' outlines lie above that, where a wall or a vessel goes on past both ends.
AXIS_ENDS_HU = -89.0


@dataclass(frozen=True)
class ScopeConfig:
    """Where the model's training data ends (LIDC), in the units a radiologist uses."""

    min_slices: int = 2  # fewer is a 2D image
    # A chest CT (even a tight crop of a ground-glass nodule) holds air or lung below this;
    # MR, rescaled or unsigned images do not. (Soft tissue above 0 HU is not required: 20 of
    # the LIDC VOIs, crops of ground-glass nodules, have no voxel above 0 HU.)
    ct_min_hu_below: float = -500.0
    tissue_hu: float = -950.0  # no voxel above this within tissue_radius_mm: air or padding
    tissue_radius_mm: float = 3.0
    # Nodule tissue at the click: on the 794 LIDC nodules the densest voxel within 1.5 mm of
    # the centre is never below -632 HU; a click on normal lung (about -850 HU) is.
    nodule_hu: float = -700.0
    nodule_radius_mm: float = 1.5
    min_nodule_diameter_mm: float = 2.0  # smaller segmentations are no nodule (LIDC: >= 3 mm)
    finite_radius_mm: float = 17.0  # the 32 mm field of view around the point, and a voxel
    max_slice_mm: float = 2.5  # LIDC slices
    max_diameter_mm: float = 30.0  # a lesion above is a mass, outside the intended use
    leak_faces: int = 3  # segmentation touching this many faces of the field of view
    max_fold_sd: float = 0.15  # spread of the fold malignancy probabilities
    # The outline lies beside the point, not on it (a click on normal lung next to a vessel or
    # a nodule gets the neighbour's outline); docs/experiments/README.md, "Scope".
    max_point_distance_mm: float = POINT_DISTANCE_MM
    lung_hu: float = -500.0  # lung parenchyma is below this
    lung_shell_mm: tuple[float, float] = (2.0, 5.0)  # shell around the segmentation
    min_lung_share: float = 0.15  # of the shell's valid voxels that are lung
    dense_hu: float = -300.0  # soft tissue and denser
    max_dense_fill: float = 0.6  # share of the field of view filled by the clicked dense region
    # Which side of the pleura (core/scope/lung_mask.py), on CTs that show the body outline: the lung
    # mask is the air-like voxels inside the body on a coarse grid, less the airway.
    lung_mask_hu: float = -400.0
    lung_mask_step_mm: float = 1.25
    min_lung_ml: float = 100.0  # smaller air pockets (bowel gas) are no lung
    airway_max_mm2: float = 600.0  # trachea, main bronchi: per slice smaller than this ...
    airway_midline_mm: float = 40.0  # ... and this close to the body's midline
    # The point is in the lung if (1) no ball holding it stays clear of the lung: juxtapleural
    # nodules are dents in the lung, the chest wall, mediastinum, heart and liver beyond the
    # pleura hold such a ball; its radius is the segmented diameter within these bounds (a
    # pleural-based hemisphere needs about 0.8 of its diameter), and (2) lung lies straight above
    # or below it within half the diameter plus the margin (a tube such as the aorta along the
    # lung is a dent too, but not a closed one). docs/experiments/README.md, "Scope".
    pleura_ball_mm: tuple[float, float] = (15.0, 30.0)
    lung_column_margin_mm: float = 5.0
    lung_column_radius_mm: float = 2.5
    # A vessel continues beyond the outline with its calibre (core/scope/vessel.py): dense tissue in
    # the lung field, opened with this fraction of the outline's inscribed radius, looked for
    # this far around the outline; the score's threshold is the model's.
    vessel_dense_hu: float = -500.0
    vessel_opening_fraction: float = 0.7
    vessel_margin_mm: float = 12.0
    vessel_model: VesselModel = VESSEL_MODEL
    # ... or the structure goes on past both ends of the outline along its own axis (the CT's
    # least-curvature direction at the outline's centre, core/scope/vessel.axis_figures): the lower
    # of the two ends' highest smoothed HU 1-3 mm beyond the outline above this (a vessel, or
    # the hilum's vessels and bronchial walls; a nodule ends in lung). AXIS_ENDS_HU above.
    max_axis_ends_hu: float = AXIS_ENDS_HU
    # Nothing at the outline's centre stands out of the lung (core/scope/curvature.py: the blob
    # strength, in HU): half the 1st percentile of the LIDC nodules inserted into the lungs of the
    # full CTs (11.9 HU; docs/experiments/vessel_clicks.py, README "Scope", fifteenth session).
    min_blob_strength_hu: float = 6.0


@dataclass(frozen=True)
class Finding:
    code: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


_DEFAULT = ScopeConfig()
# One plain sentence per code, for readers that have only the code (a predictions CSV read back
# by the batch review report); the messages raised below also carry the case's own figures.
DESCRIPTIONS: dict[str, str] = {
    "not_3d": "Not a 3D image: the model needs a CT volume, not a single slice.",
    "not_ct": "Not a CT in Hounsfield units (8-bit, another modality, no air or lung, "
    "values that are not numbers near the point, or a damaged header).",
    "no_tissue": "No tissue at the point: air, or outside the scanner's field of view.",
    "no_nodule_at_point": "No nodule at the point: normal lung, or an empty or tiny segmentation.",
    "thick_slices": f"Slices thicker than {_DEFAULT.max_slice_mm:g} mm (the training data's): "
    "small nodules may be missed or mis-sized.",
    "exceeds_field_of_view": "The lesion reaches the edge of the model's 32 mm field of view: "
    "its size and measurements are truncated.",
    "large_mass": f"Larger than {_DEFAULT.max_diameter_mm:g} mm: a mass, outside the nodules the "
    "model was trained on.",
    "segmentation_leak": f"The segmentation touches {_DEFAULT.leak_faces} or more sides of the "
    "field of view: it may have leaked; check the outline.",
    "folds_disagree": f"The folds disagree (spread above {100 * _DEFAULT.max_fold_sd:.0f} "
    "percentage points): treat the malignancy as uncertain.",
    "outside_lung": f"Under {100 * _DEFAULT.min_lung_share:.0f} % lung around the lesion: the "
    "point may not be on a lung nodule.",
    "vessel_at_point": "The outline looks like a piece of a vessel (a tube that continues beyond "
    "it): the point may not be on a nodule.",
    "point_off_nodule": f"The outline lies more than {_DEFAULT.max_point_distance_mm:g} mm beside "
    "the point: the point may be on normal lung next to it; check the outline.",
    "no_contrast_at_centre": "Nothing at the outline's centre stands out of the lung around it: "
    "the outline is probably of normal lung, not of a nodule.",
}


_FROM_IMAGE = object()  # a ``lungs`` argument not given: look the mask up from the image


class RefusedError(InputError):
    """The input cannot be answered; ``code`` is one of :data:`REFUSALS`."""

    def __init__(self, code: str, message: str):
        super().__init__(message, code)
        self.message = message


def _check_geometry(image: np.ndarray, geometry: ImageGeometry) -> None:
    """An array and a geometry that do not belong together are a caller's error; a spacing or
    direction that is not a real voxel grid is a damaged header (every position would be wrong)."""
    if tuple(image.shape) != tuple(geometry.shape_zyx):
        raise ValueError(
            f"The image array has shape {tuple(image.shape)} (z, y, x) but its geometry describes "
            f"{tuple(geometry.shape_zyx)}: they do not belong to the same image."
        )
    spacing = np.asarray(geometry.spacing, dtype=float)
    if np.isfinite(spacing).all() and (spacing > 0).all():
        matrix = geometry.index_to_lps_matrix
        if np.isfinite(matrix).all() and abs(np.linalg.det(matrix)) >= 1e-9:
            return
    raise RefusedError(
        "not_ct",
        f"The image header is damaged: voxel spacing {tuple(spacing.tolist())} mm with "
        "direction "
        f"{tuple(np.round(np.asarray(geometry.direction, dtype=float), 3).tolist())} is not "
        "a voxel grid in mm. Load the CT from its source (DICOM, NRRD, NIfTI, MHA).",
    )


def check_image(
    image_zyx: np.ndarray,
    geometry: ImageGeometry | None = None,
    modality: str | None = None,
    scope: ScopeConfig = ScopeConfig(),
) -> list[Finding]:
    """Refuse a volume that is not a 3D CT; warn about slices thicker than LIDC's."""
    image = np.asarray(image_zyx)
    if image.ndim != 3 or image.shape[0] < scope.min_slices:
        raise RefusedError(
            "not_3d",
            f"This is not a 3D image (shape {tuple(image.shape)}): the model needs a CT volume "
            f"with at least {scope.min_slices} slices. Load the whole CT series.",
        )
    if geometry is not None:
        _check_geometry(image, geometry)
    if modality and modality.upper() != "CT":
        raise RefusedError(
            "not_ct", f"The image is {modality}, not CT: the model reads CT Hounsfield units."
        )
    if image.dtype == bool or image.dtype == np.uint8 or image.dtype == np.int8:
        raise RefusedError(
            "not_ct",
            f"This is an 8-bit image ({image.dtype}), not CT Hounsfield units (they need at "
            "least 16 bits). Load the original CT (DICOM, NRRD, NIfTI, MHA).",
        )
    # A strided view (about 250 000 voxels) is enough for the range and keeps the check to a
    # millisecond on a whole CT: air, lung and tissue each fill far more than one voxel in 125.
    step = max(1, int(round((image.size / 2.5e5) ** (1 / 3))))
    view = image[::step, ::step, ::step]
    lo, hi = float(np.min(view)), float(np.max(view))
    if hi < scope.tissue_hu and lo < scope.ct_min_hu_below:
        raise RefusedError(
            "no_tissue",
            f"The image holds no tissue (all values from {lo:g} to {hi:g} HU: air or padding "
            "outside the scanner's field of view). Load the CT with the patient in it.",
        )
    if lo > scope.ct_min_hu_below:
        raise RefusedError(
            "not_ct",
            f"The values range from {lo:g} to {hi:g}: not a CT in Hounsfield units (a chest CT "
            "has air and lung near -1000 HU). Rescaled or MR images are not supported.",
        )
    findings = []
    if geometry is not None and thick_slices(geometry, scope):
        findings.append(
            Finding(
                "thick_slices",
                f"Slices are {geometry.spacing[2]:.1f} mm apart; the model was trained on slices "
                f"of at most {scope.max_slice_mm} mm. Small nodules may be missed or mis-sized.",
            )
        )
    return findings


def thick_slices(geometry: ImageGeometry, scope: ScopeConfig = ScopeConfig()) -> bool:
    """Slices further apart than the training data's (``thick_slices``): the one test, for
    the warning and for the figures such slices cannot resolve."""
    return geometry.spacing[2] > scope.max_slice_mm + 1e-3


def _box_near(image_zyx, geometry: ImageGeometry, point_lps, radius_mm: float) -> np.ndarray:
    """The voxels within ``radius_mm`` (a box) of the point; empty outside the image."""
    centre = np.asarray(geometry.lps_to_index(point_lps), dtype=float)  # (i, j, k)
    radius = np.ceil(radius_mm / np.asarray(geometry.spacing, dtype=float))
    lo = np.maximum(np.floor(centre - radius).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radius).astype(int) + 1, np.asarray(geometry.size))
    if np.any(hi <= lo):
        return np.empty((0, 0, 0), dtype=np.asarray(image_zyx).dtype)
    return np.asarray(image_zyx)[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]


def _densest_near(image_zyx, geometry: ImageGeometry, point_lps, radius_mm: float) -> float:
    """The highest value within ``radius_mm`` (a box) of the point; NaN outside the image."""
    box = _box_near(image_zyx, geometry, point_lps, radius_mm)
    return float(box.max()) if box.size else float("nan")


def check_point(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    point_lps,
    scope: ScopeConfig = ScopeConfig(),
) -> None:
    """Refuse a point with no tissue around it (air, padding) or no nodule tissue at it (lung),
    or with values that are not numbers in the field of view around it (a damaged float image:
    the network would answer NaN)."""
    point = np.asarray(point_lps, dtype=float)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise ValueError(f"The point {point.tolist()} is not a position in mm (x, y, z).")
    if np.issubdtype(np.asarray(image_zyx).dtype, np.floating):
        box = _box_near(image_zyx, geometry, point, scope.finite_radius_mm)
        bad = int(box.size - np.count_nonzero(np.isfinite(box)))
        if bad:
            raise RefusedError(
                "not_ct",
                f"The image holds {bad} values that are not numbers (NaN or infinite) within "
                f"{scope.finite_radius_mm:g} mm of the point: it is damaged, not a CT in "
                "Hounsfield units. Load the CT from its source (DICOM, NRRD, NIfTI, MHA).",
            )
    densest = _densest_near(image_zyx, geometry, point, scope.tissue_radius_mm)
    if not np.isfinite(densest):
        return  # outside the image: the VOI sampler says so in its own words
    if densest < scope.tissue_hu:
        raise RefusedError(
            "no_tissue",
            f"There is no tissue at this point (nothing above {scope.tissue_hu:g} HU within "
            f"{scope.tissue_radius_mm:g} mm: air, or outside the scanner's field of view). "
            "Place the point on the nodule.",
        )
    at_point = _densest_near(image_zyx, geometry, point, scope.nodule_radius_mm)
    if at_point < scope.nodule_hu:
        raise RefusedError(
            "no_nodule_at_point",
            f"There is no nodule tissue at this point (nothing above {scope.nodule_hu:g} HU "
            f"within {scope.nodule_radius_mm:g} mm: normal lung). Place the point on the nodule.",
        )


def _distance_to_point_mm(mask: np.ndarray, spacing_zyx, point_zyx=None) -> float:
    """Distance (mm) from the clicked point (a continuous (z, y, x) index of the VOI grid; its
    centre by default) to the nearest segmented voxel."""
    if not mask.any():
        return float("inf")
    point = (np.asarray(mask.shape) - 1) / 2.0 if point_zyx is None else np.asarray(point_zyx)
    offsets = (np.argwhere(mask) - point) * np.asarray(spacing_zyx, dtype=float)
    return float(np.sqrt((offsets**2).sum(1)).min())


def _faces_touched(mask: np.ndarray) -> int:
    faces = 0
    for axis in range(3):
        for index in (0, -1):
            faces += bool(np.take(mask, index, axis=axis).any())
    return faces


def _lung_share(hu, mask, valid, spacing_zyx, shell_mm, lung_hu, strided_above=40_000) -> float:
    """Share of lung-density voxels among the valid voxels 2-5 mm around the segmentation.
    Computed in the segmentation's bounding box grown by the shell (nothing beyond lies in it),
    so a small nodule's distance map is small; in a box of more than 40 000 voxels (a nodule of
    about 15 mm and more) on every other voxel, whose shell still holds thousands (a share, not
    an outline: 12 -> 4 ms on a 29 mm nodule, docs/benchmarks.md)."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    box = bounding_box(mask, np.ceil(shell_mm[1] / spacing).astype(int) + 1)
    if np.prod([b.stop - b.start for b in box]) > strided_above:
        box = tuple(slice(b.start, b.stop, 2) for b in box)
    step = box[0].step
    hu, mask, valid = np.asarray(hu)[box], mask[box], np.asarray(valid)[box]
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in (spacing * step)[::-1]))
    distance = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
    )
    shell = (distance > shell_mm[0]) & (distance <= shell_mm[1]) & (valid > 0.5)
    if not shell.any():
        return float("nan")
    return float((hu[shell] < lung_hu).mean())


def chest_lungs(
    image_zyx: np.ndarray, geometry: ImageGeometry, scope: ScopeConfig = ScopeConfig()
) -> LungMask | None:
    """The CT's lung mask (cached by content), ``None`` on a crop without a body outline."""
    return lung_mask(
        image_zyx,
        geometry,
        scope.lung_mask_hu,
        scope.lung_mask_step_mm,
        scope.min_lung_ml,
        scope.airway_max_mm2,
        scope.airway_midline_mm,
    )


def prepare_lung_side(
    image_zyx: np.ndarray, geometry: ImageGeometry, scope: ScopeConfig = ScopeConfig()
) -> bool:
    """Build (and cache) the CT's lung mask, its distance map and lung field ahead of the first
    click, which otherwise pays for them (about 2 s on a chest CT, 2 cores); True when it has a
    mask (a whole chest, not a crop)."""
    lungs = chest_lungs(image_zyx, geometry, scope)
    if lungs is None:
        return False
    lungs.distance_kji, lungs.field_kji  # noqa: B018 (cached properties, built here)
    return True


def lung_side(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    point_lps,
    diameter_mm: float,
    scope: ScopeConfig = ScopeConfig(),
    lungs: LungMask | None | object = _FROM_IMAGE,
) -> tuple[str, dict]:
    """``"inside"`` or ``"outside"`` the lungs (the pleura's side the point is on) for a lesion
    segmented ``diameter_mm`` across, or ``"unknown"`` on an image without a body outline (a
    crop such as the LIDC VOIs). ``lungs``: :func:`chest_lungs` of the image, if at hand."""
    if lungs is _FROM_IMAGE:
        lungs = chest_lungs(image_zyx, geometry, scope)
    if lungs is None:
        return "unknown", {"lung_side": "unknown"}
    ball = float(np.clip(diameter_mm, *scope.pleura_ball_mm))
    reach = diameter_mm / 2.0 + scope.lung_column_margin_mm
    enclosed = inside_lung_envelope(lungs, geometry, point_lps, ball)
    closed = lung_above_or_below(lungs, geometry, point_lps, reach, scope.lung_column_radius_mm)
    side = "inside" if enclosed and closed else "outside"
    figures = {
        "lung_side": side,
        "lung_distance_mm": lung_distance_mm(lungs, geometry, point_lps, 2.0 * ball),
        "lung_enclosed": enclosed,
        "lung_closed_in_z": closed,
    }
    return side, figures


def vessel_figures(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    mask_voi: np.ndarray,
    voi_geometry: ImageGeometry,
    diameter_mm: float,
    scope: ScopeConfig = ScopeConfig(),
    lungs: LungMask | None | object = _FROM_IMAGE,
) -> dict:
    """The figures and score of core/scope/vessel.py on a CT with a lung mask; ``{}`` on a crop."""
    if lungs is _FROM_IMAGE:
        lungs = chest_lungs(image_zyx, geometry, scope)
    if lungs is None or not np.any(mask_voi):
        return {}
    figures = shape_figures(mask_voi, np.asarray(voi_geometry.spacing, dtype=float)[::-1])
    figures |= continuation_figures(
        image_zyx,
        geometry,
        mask_voi,
        voi_geometry,
        lungs,
        figures["inscribed_radius_mm"],
        scope.vessel_dense_hu,
        scope.vessel_opening_fraction,
        scope.vessel_margin_mm,
    )
    centre_kji = geometry.lps_to_index(nodule_centre(mask_voi, voi_geometry, geometry))[::-1]
    if not thick_slices(geometry, scope):
        # Thicker slices do not resolve a blob's curvature along z (LIDC-IDRI-0006's 7.5 mm
        # nodule on 5 mm slices: blob strength 0 HU): no blob figures, no no_contrast_at_centre
        # there (the scan is flagged thick_slices).
        figures |= blob_figures(image_zyx, np.asarray(geometry.spacing)[::-1], centre_kji)
    figures |= axis_figures(image_zyx, geometry, mask_voi, voi_geometry, centre_kji)
    figures["vessel_score"] = vessel.vessel_score(
        figures | {"diameter_mm": diameter_mm}, scope.vessel_model
    )
    return figures


def check_result(
    mask_voi: np.ndarray,
    valid_voi: np.ndarray,
    hu_voi: np.ndarray,
    spacing_zyx,
    diameter_mm: float,
    malignancy_sd: float,
    scope: ScopeConfig = ScopeConfig(),
    side: str = "unknown",
    vessel_score: float | None = None,
    point_zyx=None,
    blob_strength: float | None = None,
    axis_ends_hu: float | None = None,
) -> tuple[list[Finding], dict]:
    """Refuse an empty segmentation; warn about a lesion the numbers do not cover well.

    ``point_zyx``: the click on the VOI grid (continuous index) when the VOI is not centred on
    it (core/nodule/recentre.py). ``vessel_score``, ``blob_strength`` and ``axis_ends_hu``: the
    figures of :func:`vessel_figures`, on a CT with a lung mask and a point inside the lung.
    Returns the warnings and the figures they were decided on (for the result and the
    firing-rate measurement).
    """
    mask = np.asarray(mask_voi, dtype=bool)
    distance = _distance_to_point_mm(mask, spacing_zyx, point_zyx)
    # (Flagged, not refused, for a segmentation away from the point: a cavitating nodule has air
    # at its centre; one LIDC nodule of 28.7 mm is segmented only more than 3 mm from its centre.)
    valid = np.asarray(valid_voi) > 0.5
    dense = component_at_center((np.asarray(hu_voi) > scope.dense_hu) & valid)
    fill = float(dense.sum() / max(1, valid.sum()))
    if not mask.any() or diameter_mm < scope.min_nodule_diameter_mm:
        if fill > scope.max_dense_fill:
            # Solid tissue without an edge in the whole field of view: a mass larger than it,
            # or soft tissue outside the lung; either way no nodule outline to measure.
            raise RefusedError(
                "no_nodule_at_point",
                f"No nodule outline was found: the point lies in solid tissue that fills "
                f"{100 * fill:.0f} % of the model's 32 mm field of view (a mass larger than "
                f"{scope.max_diameter_mm:g} mm, or tissue outside the lung). The model is for "
                "lung nodules up to 30 mm.",
            )
        raise RefusedError(
            "no_nodule_at_point",
            "No nodule was found at this point (the segmentation is empty or smaller than "
            f"{scope.min_nodule_diameter_mm:g} mm). Place the point on the nodule's centre.",
        )
    faces = _faces_touched(mask)
    share = _lung_share(hu_voi, mask, valid_voi, spacing_zyx, scope.lung_shell_mm, scope.lung_hu)
    figures = {
        "point_distance_mm": distance,
        "fov_faces_touched": faces,
        "lung_share": share,
        "fold_sd": malignancy_sd,
        "dense_fill": fill,
    }
    findings = []
    if faces >= scope.leak_faces:
        findings.append(
            Finding(
                "segmentation_leak",
                f"The segmentation touches {faces} sides of the 32 mm field of view: it may have "
                "leaked into neighbouring structures. Check the outline; the measurements and "
                "the malignancy may be wrong.",
            )
        )
    elif faces or fill > scope.max_dense_fill:
        findings.append(
            Finding(
                "exceeds_field_of_view",
                "The lesion reaches the edge of the model's 32 mm field of view (or the point "
                "lies in solid tissue that fills it): its size and measurements are truncated.",
            )
        )
    if diameter_mm > scope.max_diameter_mm:
        findings.append(
            Finding(
                "large_mass",
                f"The lesion measures {diameter_mm:.0f} mm: larger than {scope.max_diameter_mm:g} "
                "mm it is a mass, outside the nodules the model was trained on.",
            )
        )
    if malignancy_sd > scope.max_fold_sd:
        findings.append(
            Finding(
                "folds_disagree",
                f"The ensemble's folds disagree (spread {100 * malignancy_sd:.0f} percentage "
                "points): treat the malignancy as uncertain.",
            )
        )
    if side == "outside":
        findings.append(
            Finding(
                "outside_lung",
                "The point lies outside the lungs (chest wall, mediastinum, heart, abdomen or "
                "outside the body): the model knows only lung nodules.",
            )
        )
    elif np.isfinite(share) and share < scope.min_lung_share:
        findings.append(
            Finding(
                "outside_lung",
                f"Only {100 * share:.0f} % of the tissue around the lesion is lung: the point may "
                "not be on a lung nodule (the model knows only lung nodules).",
            )
        )
    if distance > scope.max_point_distance_mm:
        findings.append(
            Finding(
                "point_off_nodule",
                f"The outline lies {distance:.1f} mm beside the point, not on it: the point may "
                "be on normal lung next to a vessel or a nodule. Check that the outline is the "
                "nodule you meant, or place the point on it.",
            )
        )
    vessel_like = vessel_score is not None and vessel_score > scope.vessel_model.threshold
    goes_on = axis_ends_hu is not None and axis_ends_hu > scope.max_axis_ends_hu
    if side == "inside" and (vessel_like or goes_on):
        findings.append(
            Finding(
                "vessel_at_point",
                "The outline looks like a piece of a vessel: "
                + (
                    "a tube that continues beyond it with the same calibre. "
                    if vessel_like
                    else "the structure goes on past both ends of the outline along its axis. "
                )
                + "The point may not be on a nodule; scroll through the slices to check.",
            )
        )
    if (
        side == "inside"
        and blob_strength is not None
        and blob_strength < scope.min_blob_strength_hu
    ):
        findings.append(
            Finding(
                "no_contrast_at_centre",
                "Nothing at the outline's centre stands out of the lung around it (its contrast "
                f"as a blob is {blob_strength:.1f} HU; a nodule's is above "
                f"{scope.min_blob_strength_hu:g} HU): the outline is probably of normal lung, not "
                "of a nodule. Place the point on the nodule.",
            )
        )
    return findings, figures
