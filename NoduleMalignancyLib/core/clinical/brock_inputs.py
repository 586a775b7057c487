"""The Brock inputs read off the CT and the nodule's analysis, each with its source
(core/clinical/brock.py): emphysema and the upper-lobe location from the lung mask (core/scope/lung_mask.py),
the nodule type, size and spiculation from what the Lung-RADS suggestion already measured.

Why these rules (docs/DESIGN.md §17): PanCan's readers judged emphysema, lobe, type and
spiculation by eye; here each is a stated rule on the image, and the one that is a guess from
position (the lobe) is marked estimated, for the reader to correct.

* Emphysema: the share of the lung below -950 HU (LAA-950) of at least 5 %, a common
  quantitative definition of emphysema on inspiration CT. The lung: the mask's coarse blocks
  with each slice's holes filled (vessels and nodules inside the lung count, the airway does
  not). Noise raises the share on low-dose and sharp-kernel CTs: the figure is shown with it.
* Upper lobe: no lobe segmentation, a geometric rule. In the nodule's lung, its height from
  the apex (h: 0 apex, 1 lowest lung) and its depth at that level (a: 0 front, 1 back); the
  oblique fissure is taken as the line from h = 0.35 at the back to h = 0.8 at the front, and
  on the right the horizontal fissure as h = 0.45 (the middle lobe is not upper).
* Type: the texture class (solid, part-solid, ground-glass = non-solid); a part-solid class
  with no solid component (no part >= -300 HU) is non-solid.
* Spiculation: the predicted LIDC spiculation score >= 2.5 (it rounds to "medium spiculation"
  or more), the threshold that lists it as supporting 4X (core/clinical/lung_rads.py).
* Size: the longest axial diameter (PanCan's nodule size), to 0.1 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import ImageGeometry
from ..scope.lung_mask import LungMask, lung_field
from .brock import ESTIMATED, MEASURED, NON_SOLID, PART_SOLID, SOLID, BrockInput
from .lung_rads import (
    GROUND_GLASS,
    SPICULATION_SUPPORTS_4X,
    LungRadsSuggestion,
    round_mm,
)
from .lung_rads import PART_SOLID as LR_PART_SOLID

__all__ = [
    "EMPHYSEMA_HU",
    "EMPHYSEMA_SHARE",
    "UpperLobeFigures",
    "emphysema_input",
    "low_attenuation_share",
    "lung_points_lps",
    "nodule_type_input",
    "size_input",
    "spiculation_input",
    "upper_lobe_figures",
    "upper_lobe_input",
]

EMPHYSEMA_HU = -950.0
EMPHYSEMA_SHARE = 0.05
FISSURE_BACK_H = 0.35  # oblique fissure at the back, as a share of the lung's height
FISSURE_FRONT_H = 0.80  # ... at the front
HORIZONTAL_FISSURE_H = 0.45  # right lung: the middle lobe lies below, in front
LEVEL_MM = 5.0  # the lung's depth is taken over slices this close to the nodule


def low_attenuation_share(
    image_zyx: np.ndarray, lungs: LungMask, threshold_hu: float = EMPHYSEMA_HU
) -> float:
    """The share of the lung's voxels below ``threshold_hu`` (the mask's blocks, holes filled)."""
    lung = lung_field(lungs, 0.0)
    s = lungs.stride_kji
    n = lung.shape
    a = np.asarray(image_zyx)[: n[0] * s[0], : n[1] * s[1], : n[2] * s[2]]
    below = (a < threshold_hu).reshape(n[0], s[0], n[1], s[1], n[2], s[2]).sum((1, 3, 5))
    total = int(lung.sum()) * int(np.prod(s))
    if total == 0:
        raise ValueError("the lung mask is empty: no emphysema share")
    return float(below[lung].sum()) / total


def emphysema_input(image_zyx: np.ndarray, lungs: LungMask | None) -> BrockInput | None:
    """Emphysema from the CT, or ``None`` without a lung mask (a crop: nothing to measure)."""
    if lungs is None:
        return None
    share = low_attenuation_share(image_zyx, lungs)
    present = share >= EMPHYSEMA_SHARE
    return BrockInput(
        present,
        MEASURED,
        f"{100 * share:.1f} % of the lung below {EMPHYSEMA_HU:.0f} HU "
        f"({'>=' if present else '<'} {100 * EMPHYSEMA_SHARE:.0f} %)",
    )


@dataclass(frozen=True)
class UpperLobeFigures:
    side: str  # right or left (the patient's)
    height: float  # 0 apex .. 1 lowest lung
    depth: float  # 0 front .. 1 back, at the nodule's level
    fissure_height: float  # the rule's boundary at that depth
    upper_lobe: bool


def lung_points_lps(lungs: LungMask, geometry: ImageGeometry) -> np.ndarray:
    """World LPS of the lung mask's coarse voxel centres (N, 3): computed once per exam."""
    kji = np.argwhere(lungs.mask_kji).astype(float)
    stride = np.asarray(lungs.stride_kji, dtype=float)
    ijk = (kji * stride + (stride - 1.0) / 2.0)[:, ::-1]
    return geometry.index_to_lps(ijk)


def upper_lobe_figures(points: np.ndarray, point_lps) -> UpperLobeFigures:
    """The rule's figures for a point (module docstring), from :func:`lung_points_lps`. LPS:
    x grows to the patient's left, y to the back, z up."""
    p = np.asarray(point_lps, dtype=float)
    midline = 0.5 * (points[:, 0].min() + points[:, 0].max())
    left = p[0] > midline
    side_points = points[(points[:, 0] > midline) == left]
    if len(side_points) == 0:
        raise ValueError("no lung on the point's side: no lobe estimate")
    top, bottom = side_points[:, 2].max(), side_points[:, 2].min()
    height = float(np.clip((top - p[2]) / max(top - bottom, 1e-6), 0.0, 1.0))
    level = side_points[np.abs(side_points[:, 2] - p[2]) <= LEVEL_MM]
    if len(level) == 0:
        level = side_points
    front, back = level[:, 1].min(), level[:, 1].max()
    depth = float(np.clip((p[1] - front) / max(back - front, 1e-6), 0.0, 1.0))
    fissure = FISSURE_BACK_H + (FISSURE_FRONT_H - FISSURE_BACK_H) * (1.0 - depth)
    if not left:
        fissure = min(fissure, HORIZONTAL_FISSURE_H)
    side = "left" if left else "right"
    return UpperLobeFigures(side, height, depth, fissure, height < fissure)


def upper_lobe_input(points: np.ndarray | None, point_lps) -> BrockInput | None:
    """The upper-lobe location suggested from position (estimated) from the lung's points
    (:func:`lung_points_lps`), or ``None`` without a lung mask."""
    if points is None:
        return None
    f = upper_lobe_figures(points, point_lps)
    return BrockInput(
        f.upper_lobe,
        ESTIMATED,
        f"{f.side} lung, height {f.height:.2f} from the apex, depth {f.depth:.2f} from the front; "
        f"{'above' if f.upper_lobe else 'below'} the fissures taken at height "
        f"{f.fissure_height:.2f} (a rule on position, no lobe segmentation: check it)",
    )


def nodule_type_input(lung_rads: LungRadsSuggestion) -> BrockInput:
    """PanCan's nodule type from the texture class and the solid component."""
    texture = lung_rads.texture_class
    solid_mm = lung_rads.solid_mean_diameter_mm
    if texture == GROUND_GLASS:
        value = NON_SOLID
    elif texture == LR_PART_SOLID:
        value = PART_SOLID if solid_mm > 0 else NON_SOLID
    else:
        value = SOLID
    score = (
        "" if lung_rads.texture_score is None else f"texture score {lung_rads.texture_score:.2f}, "
    )
    return BrockInput(
        value,
        MEASURED,
        f"{score}texture class {texture}, solid component {solid_mm:.1f} mm",
    )


def spiculation_input(spiculation_score: float) -> BrockInput:
    present = spiculation_score >= SPICULATION_SUPPORTS_4X
    return BrockInput(
        present,
        MEASURED,
        f"spiculation score {spiculation_score:.2f} on the LIDC 1-5 scale "
        f"({'>=' if present else '<'} {SPICULATION_SUPPORTS_4X})",
    )


def size_input(diameter_mm: float) -> BrockInput:
    return BrockInput(
        round_mm(diameter_mm), MEASURED, "longest axial diameter of the segmentation, to 0.1 mm"
    )
