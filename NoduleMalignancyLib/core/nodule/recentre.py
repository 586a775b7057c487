"""Where the VOI is centred: on the segmented nodule, not on the pixel clicked.

A reader clicks anywhere on a nodule; the network's input, and with it every number, used to
follow that pixel (issue 29: the Lung-RADS category changed for 16 of 120 nodules between
clicks 1 mm apart). The context passes of ``core/nodule/analysis.sample_and_run`` therefore centre
each next VOI on the previous pass' nodule, at its centroid snapped to the CT's voxel grid: the
VOI samples the CT at the same sub-voxel positions whatever the click, so clicks whose outlines
have their centroid in the same CT voxel give the network the same input, bit for bit
(docs/DESIGN.md §2).
"""

from __future__ import annotations

import numpy as np

from ..geometry import ImageGeometry
from .voi import grid_points_lps


def snap_to_voxel(geometry: ImageGeometry, point_lps) -> np.ndarray:
    """The world LPS of the CT voxel centre nearest to a point (clamped to the image)."""
    ijk = np.rint(geometry.lps_to_index(np.asarray(point_lps, dtype=float)))
    ijk = np.clip(ijk, 0, np.asarray(geometry.size) - 1)
    return geometry.index_to_lps(ijk)


def nodule_centre(mask_zyx: np.ndarray, voi: ImageGeometry, ct: ImageGeometry) -> np.ndarray:
    """The outline's centroid (a VOI-grid mask), snapped to the CT grid: the next VOI centre."""
    return snap_to_voxel(ct, grid_points_lps(voi)[np.asarray(mask_zyx, dtype=bool)].mean(0))


def same_nodule(
    mask_zyx: np.ndarray, voi: ImageGeometry, other_zyx: np.ndarray, other: ImageGeometry
) -> bool:
    """Do two outlines on different VOI grids share a voxel (the nearest voxel of ``other``'s
    grid to a voxel of ``mask``)? A re-centred pass that lost the clicked nodule (an empty
    outline, or one on a neighbouring structure) does not."""
    points = grid_points_lps(voi)[np.asarray(mask_zyx, dtype=bool)]
    if not len(points):
        return False
    kji = np.rint(other.lps_to_index(points))[:, ::-1].astype(int)
    inside = np.all((kji >= 0) & (kji < np.asarray(other.shape_zyx)), axis=1)
    kji = kji[inside]
    return bool(np.asarray(other_zyx, dtype=bool)[kji[:, 0], kji[:, 1], kji[:, 2]].any())


def reaches_field_edge(mask_zyx: np.ndarray) -> bool:
    """Does an outline (a VOI-grid mask) reach a face of the network's field of view?"""
    mask = np.asarray(mask_zyx, dtype=bool)
    return any(
        np.take(mask, index, axis=axis).any() for axis in range(mask.ndim) for index in (0, -1)
    )
