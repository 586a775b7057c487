"""Is the clicked structure a vessel? A click on a lung vessel segments a piece of it, and that
piece passes every other scope check (dense, round enough, surrounded by lung).

What tells them apart on a CT that shows the whole chest is what a radiologist scrolls for: a
vessel is a tube and continues beyond the outline with the same calibre, a nodule is compact and
what touches it (vessels feeding it) is thinner. Seven figures say so:

* the outline's shape on the VOI grid: its length along its major axis over twice its inscribed
  radius (``tube_ratio``), its minor and middle over major axis (``minor_major``,
  ``middle_major``), the inscribed radius and the longest axial diameter;
* what continues beyond it inside the lung: the dense tissue (soft tissue and denser) within the
  lung field (core/scope/lung_mask.lung_field: the lung mask with its per-slice holes filled and its
  closing with a 10 mm ball, so a large vessel that joins the mediastinum within the slice
  counts and the chest wall and the mediastinum do not), opened with a ball of 0.7 times the
  outline's inscribed radius (thinner vessels drop out), and of that the part connected to the
  outline: its volume more than 2 mm outside the outline over the outline's volume
  (``continuation``) and how far it reaches (``continuation_mm``).

A logistic model on these (:class:`VesselModel`, fitted by docs/experiments/vessel_clicks.py on
the lung field chosen by docs/experiments/vessel_field.py: LIDC nodules inserted into the lungs
of the full CTs against clicks on the vessels of those lungs) gives the score; the warning
threshold is the score's 99th percentile on the nodules. On a tight crop (no body outline, so no
lung mask) the continuation cannot be seen and the crop flattens the outline's shape: the check
stays silent there. docs/DESIGN.md §12.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..geometry import ImageGeometry, bounding_box
from .curvature import HU_RANGE, tube_axis
from .lung_mask import LungMask

__all__ = [
    "AXIS_FIGURES",
    "FIGURES",
    "VesselModel",
    "axis_figures",
    "continuation_figures",
    "shape_figures",
    "vessel_score",
]

FIGURES = (
    "tube_ratio",
    "minor_major",
    "middle_major",
    "inscribed_radius_mm",
    "diameter_mm",
    "continuation",
    "continuation_mm",
)

AXIS_FIGURES = ("axis_end_hu", "axis_ends_hu", "axis_scale_mm")
AXIS_BEYOND_MM = (1.0, 2.0, 3.0)  # where the axis is read beyond the outline's ends
AXIS_SMOOTHING_MM = 1.0


@dataclass(frozen=True)
class VesselModel:
    """Logistic model on the standardised figures (log of the radius, diameter and continuation);
    constants from docs/experiments/vessel_clicks.py (README "Scope", vessel check)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float  # the score's 99th percentile on the inserted LIDC nodules


def _inputs(figures: dict) -> np.ndarray:
    f = figures
    return np.array(
        [
            f["tube_ratio"],
            f["minor_major"],
            f["middle_major"],
            np.log(f["inscribed_radius_mm"] + 0.1),
            np.log(max(f["diameter_mm"], 0.1)),
            np.log1p(f["continuation"]),
            f["continuation_mm"],
        ],
        dtype=float,
    )


def vessel_score(figures: dict, model: VesselModel) -> float:
    """The model's log-odds that the outline is a piece of vessel."""
    z = (_inputs(figures) - np.asarray(model.mean)) / np.asarray(model.scale)
    return float(z @ np.asarray(model.weights) + model.bias)


def shape_figures(mask_voi: np.ndarray, spacing_zyx) -> dict:
    """Tube ratio, axis ratios and inscribed radius (mm) of the outline on the VOI grid."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    mask = np.asarray(mask_voi, dtype=bool)
    points = np.argwhere(mask)
    # Every other voxel of a large outline is enough for its inscribed radius (and 8x faster).
    step = 2 if len(points) > 8000 else 1
    box = np.pad(mask[bounding_box(mask, step=step)], 1)
    radius = float(ndimage.distance_transform_edt(box, sampling=spacing * step).max())
    points = points * spacing
    points -= points.mean(0)
    values, vectors = np.linalg.eigh(np.cov(points.T))
    values = np.maximum(values, 1e-12)
    along = points @ vectors[:, -1]
    length = float(along.max() - along.min() + spacing.min())
    return {
        "tube_ratio": length / (2.0 * radius),
        "minor_major": float(np.sqrt(values[0] / values[2])),
        "middle_major": float(np.sqrt(values[1] / values[2])),
        "inscribed_radius_mm": radius,
    }


def _block_mean(a: np.ndarray, stride) -> np.ndarray:
    n = [size // st for size, st in zip(a.shape, stride, strict=True)]
    a = a[: n[0] * stride[0], : n[1] * stride[1], : n[2] * stride[2]].astype(np.float32)
    return a.reshape(n[0], stride[0], n[1], stride[1], n[2], stride[2]).mean(axis=(1, 3, 5))


def continuation_figures(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    mask_voi: np.ndarray,
    voi_geometry: ImageGeometry,
    lungs: LungMask,
    inscribed_radius_mm: float,
    dense_hu: float = -500.0,
    opening_fraction: float = 0.7,
    margin_mm: float = 12.0,
) -> dict:
    """How much tissue as thick as the outline continues beyond it inside the lung field.

    On the lung mask's coarse grid (about 1.25 mm; block means of the CT, the outline as the
    cells it fills at least half), which keeps its three distance maps to a few milliseconds on
    any slice thickness.
    """
    ijk = np.argwhere(mask_voi)[:, ::-1].astype(float)
    kji = np.rint(geometry.lps_to_index(voi_geometry.index_to_lps(ijk)))[:, ::-1].astype(int)
    stride, grid = np.asarray(lungs.stride_kji), lungs.mask_kji.shape
    spacing = np.asarray(lungs.spacing_kji, dtype=float)
    cells = kji // stride
    margin = np.ceil(margin_mm / spacing).astype(int)
    lo = np.maximum(cells.min(0) - margin, 0)
    hi = np.minimum(cells.max(0) + 1 + margin, grid)
    if np.any(hi <= lo):
        return _no_continuation()  # the outline lies off the CT
    shape = tuple(hi - lo)
    cells = cells - lo
    keep = np.all((cells >= 0) & (cells < np.asarray(shape)), axis=1)
    counts = np.bincount(
        np.ravel_multi_index(tuple(cells[keep].T), shape), minlength=np.prod(shape)
    )
    filled = counts.reshape(shape) * float(np.prod(voi_geometry.spacing)) / float(np.prod(spacing))
    outline = filled >= 0.5
    if not outline.any():
        outline = filled > 0
    fine = tuple(slice(a * s, b * s) for a, b, s in zip(lo, hi, stride, strict=True))
    hu = _block_mean(np.asarray(image_zyx)[fine], stride)
    region = lungs.field_box(lo, hi)
    dense = (hu > dense_hu) & (region | outline)
    radius = opening_fraction * inscribed_radius_mm
    # An opening with a ball of ``radius``: the cores (farther than it from the background),
    # grown back by it. Each distance map runs in the box that decides it (the same values).
    if not dense.any():
        return _no_continuation()
    core = np.zeros_like(dense)
    box = bounding_box(dense, 1)
    core[box] = ndimage.distance_transform_edt(dense[box], sampling=spacing) > radius
    if not core.any():
        return _no_continuation()
    opened = np.zeros_like(core)
    box = bounding_box(core, np.ceil(radius / spacing).astype(int) + 1)
    opened[box] = ndimage.distance_transform_edt(~core[box], sampling=spacing) <= radius
    labels, _ = ndimage.label(opened)
    touched = np.unique(labels[outline & opened])
    connected = np.isin(labels, touched[touched > 0])
    if not connected.any():
        return _no_continuation()
    box = bounding_box(connected | outline)
    outside = ndimage.distance_transform_edt(~outline[box], sampling=spacing)
    near = connected[box]
    return {
        "continuation": float((near & (outside > 2.0)).sum() / outline.sum()),
        "continuation_mm": float(outside[near].max()),
    }


def _no_continuation() -> dict:
    return {"continuation": 0.0, "continuation_mm": 0.0}


def _box(mask: np.ndarray, pad: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``pad`` cells per axis, inside the array."""
    box = []
    for axis, grow in enumerate(pad):
        along = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(along[0] - grow, 0), min(along[-1] + 1 + grow, mask.shape[axis])))
    return tuple(box)


def axis_figures(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    mask_voi: np.ndarray,
    voi_geometry: ImageGeometry,
    centre_kji,
    beyond_mm=AXIS_BEYOND_MM,
    smoothing_mm: float = AXIS_SMOOTHING_MM,
) -> dict:
    """What lies beyond the outline's two ends along the structure's own axis.

    The axis is the direction in which the CT bends least at the outline's centre
    (core/scope/curvature.tube_axis): along a vessel, the vessel. A vessel's outline is a piece of it
    and the vessel goes on past the outline's ends, a nodule's outline ends in lung. Read on the
    CT smoothed with a Gaussian of ``smoothing_mm`` (HU clipped to soft tissue), the highest
    value ``beyond_mm`` past each end; ``axis_end_hu``: the higher end's (the structure goes on
    at least one way), ``axis_ends_hu``: the lower end's (it goes on both ways)."""
    image = np.asarray(image_zyx)
    spacing = np.asarray(geometry.spacing, dtype=float)[::-1]
    centre = np.asarray(centre_kji, dtype=float)
    axis, scale = tube_axis(image, spacing, centre)
    ijk = np.argwhere(mask_voi)[:, ::-1].astype(float)
    kji = geometry.lps_to_index(voi_geometry.index_to_lps(ijk))[:, ::-1]
    along = ((kji - centre) * spacing) @ axis
    ends = []
    for side, extent in ((1.0, along.max()), (-1.0, -along.min())):
        mm = side * (max(extent, 0.0) + np.asarray(beyond_mm, dtype=float))
        ends.append(centre + mm[:, None] * axis / spacing)
    points = np.concatenate(ends)
    pad = np.ceil(3.0 * smoothing_mm / spacing).astype(int) + 2
    lo = np.maximum(np.floor(points.min(0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(points.max(0)).astype(int) + pad + 1, image.shape)
    if np.any(hi <= lo):
        return {"axis_end_hu": HU_RANGE[0], "axis_ends_hu": HU_RANGE[0], "axis_scale_mm": scale}
    box = np.clip(image[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], *HU_RANGE)
    smooth = ndimage.gaussian_filter(
        box.astype(np.float32), smoothing_mm / spacing, mode="nearest", truncate=3.0
    )
    hu = ndimage.map_coordinates(smooth, (points - lo).T, order=1, mode="nearest")
    per_end = hu.reshape(2, -1).max(1)
    return {
        "axis_end_hu": float(per_end.max()),
        "axis_ends_hu": float(per_end.min()),
        "axis_scale_mm": float(scale),
    }
