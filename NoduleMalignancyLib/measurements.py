"""Nodule size and density from a segmentation: volume and axial diameters (as radiologists
measure them), mean HU and the calcified fraction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class NoduleSize:
    volume_mm3: float
    diameter_mm: float  # longest axial diameter
    short_axis_mm: float  # longest perpendicular diameter on the same slice
    mean_diameter_mm: float  # (long + short) / 2


EMPTY_SIZE = NoduleSize(0.0, 0.0, 0.0, 0.0)

# Voxels at or above this count as calcified (the usual CT threshold for calcium in a nodule).
CALCIFIED_HU = 200.0


@dataclass(frozen=True)
class NoduleDensity:
    mean_hu: float  # mean attenuation inside the segmentation (ground glass is low, solid ~0 HU)
    calcified_fraction: float  # fraction of the segmented voxels >= CALCIFIED_HU


# An empty segmentation measures as air with no calcium.
EMPTY_DENSITY = NoduleDensity(-1000.0, 0.0)


def nodule_density(hu_zyx: np.ndarray, mask_zyx: np.ndarray) -> NoduleDensity:
    """Mean HU and calcified fraction of the voxels of ``mask_zyx`` (same grid as ``hu_zyx``).

    Calcification is what readers rate most confidently as benign, and it is a plain HU fact:
    measured here rather than left to the network (whose calcification head ranks it far worse).
    """
    mask = np.asarray(mask_zyx, dtype=bool)
    if not mask.any():
        return EMPTY_DENSITY
    hu = np.asarray(hu_zyx, dtype=np.float64)[mask]
    return NoduleDensity(float(hu.mean()), float((hu >= CALCIFIED_HU).mean()))


def component_at_center(mask_zyx: np.ndarray) -> np.ndarray:
    """Keep the connected component nearest to the array centre (the clicked nodule)."""
    if not mask_zyx.any():
        return mask_zyx.astype(bool)
    labels = sitk.GetArrayFromImage(
        sitk.ConnectedComponent(sitk.GetImageFromArray(mask_zyx.astype(np.uint8)), True)
    )
    center = (np.asarray(mask_zyx.shape) - 1) / 2.0
    coords = np.argwhere(labels > 0)
    nearest = coords[np.argmin(((coords - center) ** 2).sum(1))]
    return labels == labels[tuple(nearest)]


def _boundary(slice_yx: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask with a 4-neighbour outside it (the chords' end points lie there)."""
    p = np.pad(slice_yx, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return slice_yx & ~interior


def _axial_diameters(points_mm: np.ndarray) -> tuple[float, float]:
    """Longest chord of an axial slice's voxel centres and the extent perpendicular to it."""
    if len(points_mm) < 2:
        return 0.0, 0.0
    d = np.sqrt(((points_mm[:, None, :] - points_mm[None, :, :]) ** 2).sum(-1))
    a, b = np.unravel_index(np.argmax(d), d.shape)
    long_axis = points_mm[b] - points_mm[a]
    perp = np.array([-long_axis[1], long_axis[0]]) / (np.linalg.norm(long_axis) + 1e-12)
    proj = points_mm @ perp
    return float(d[a, b]), float(proj.max() - proj.min())


def nodule_size(mask_zyx: np.ndarray, spacing_zyx) -> NoduleSize:
    """Volume and axial diameters of a binary mask on an axis-aligned (z, y, x) grid.

    Diameters are measured between voxel centres plus one voxel (the voxel's own width), on the
    axial slice with the longest diameter, as in RECIST/Lung-RADS practice.
    """
    mask = np.asarray(mask_zyx, dtype=bool)
    if not mask.any():
        return EMPTY_SIZE
    sz, sy, sx = (float(s) for s in spacing_zyx)
    volume = float(mask.sum()) * sz * sy * sx
    best = (0.0, 0.0)
    for k in np.unique(np.nonzero(mask)[0]):
        yx = np.argwhere(_boundary(mask[k])).astype(float) * np.array([sy, sx])
        long_mm, short_mm = _axial_diameters(yx)
        if long_mm > best[0]:
            best = (long_mm, short_mm)
    pixel = (sy + sx) / 2.0
    long_mm, short_mm = best[0] + pixel, best[1] + pixel
    return NoduleSize(volume, long_mm, short_mm, (long_mm + short_mm) / 2.0)
