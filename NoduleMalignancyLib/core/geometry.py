"""Image geometry in world LPS and the LPS/RAS conversions.

Conventions (pinned by tests on real LIDC data):
* world points are LPS unless a name says ``ras``; x_LPS = -x_RAS, y_LPS = -y_RAS, z equal;
* indices are continuous (i, j, k) = (x, y, z) voxel coordinates, as ITK uses them;
* numpy arrays from SimpleITK are indexed (z, y, x);
* ``direction`` is ITK's 3x3 matrix whose columns are the world directions of the i, j, k axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(point_lps) -> np.ndarray:
    """Convert world LPS point(s) (..., 3) to RAS."""
    return np.asarray(point_lps, dtype=float) * np.array([-1.0, -1.0, 1.0])


def ras_to_lps(point_ras) -> np.ndarray:
    """Convert world RAS point(s) (..., 3) to LPS."""
    return np.asarray(point_ras, dtype=float) * np.array([-1.0, -1.0, 1.0])


def bounding_box(mask: np.ndarray, pad=0, step: int = 1) -> tuple[slice, ...]:
    """The array slices of the bounding box of ``mask`` (non-empty), grown by ``pad`` cells per
    axis (a number or one per axis) and clipped to the array; ``step`` strides it."""
    mask = np.asarray(mask, dtype=bool)
    pad = np.broadcast_to(np.asarray(pad, dtype=int), (mask.ndim,))
    box = []
    for axis, grow in enumerate(pad):
        along = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = max(int(along[0]) - grow, 0), min(int(along[-1]) + 1 + grow, mask.shape[axis])
        box.append(slice(lo, hi, step))
    return tuple(box)


@dataclass(frozen=True)
class ImageGeometry:
    """Where a (z, y, x) voxel array lies in world LPS."""

    origin: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0)
    spacing: tuple[float, float, float]  # mm along i, j, k (x, y, z)
    direction: tuple[float, ...]  # 9 numbers, row-major, ITK convention
    size: tuple[int, int, int]  # voxels along i, j, k (x, y, z)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    @property
    def index_to_lps_matrix(self) -> np.ndarray:
        """3x3 matrix M with lps = origin + M @ ijk."""
        return self.direction_matrix @ np.diag(self.spacing)

    def index_to_lps(self, ijk) -> np.ndarray:
        """Continuous index (..., 3) in (i, j, k) order -> world LPS (..., 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ self.index_to_lps_matrix.T + np.asarray(self.origin)

    def lps_to_index(self, point_lps) -> np.ndarray:
        """World LPS (..., 3) -> continuous index (..., 3) in (i, j, k) order."""
        p = np.asarray(point_lps, dtype=float) - np.asarray(self.origin)
        return p @ np.linalg.inv(self.index_to_lps_matrix).T

    def contains_lps(self, point_lps, margin_voxels: float = 0.5) -> bool:
        """True if the point lies within the image's voxel extent (voxel centres +- half a voxel)."""
        ijk = self.lps_to_index(point_lps)
        size = np.asarray(self.size, dtype=float)
        return bool(np.all(ijk >= -margin_voxels) and np.all(ijk <= size - 1 + margin_voxels))

    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def to_dict(self) -> dict:
        return {
            "origin": list(self.origin),
            "spacing": list(self.spacing),
            "direction": list(self.direction),
            "size": list(self.size),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ImageGeometry:
        return cls(
            tuple(map(float, d["origin"])),
            tuple(map(float, d["spacing"])),
            tuple(map(float, d["direction"])),
            tuple(map(int, d["size"])),
        )

    @classmethod
    def from_sitk(cls, image) -> ImageGeometry:
        """Geometry of a SimpleITK image (origin/spacing/direction are LPS in ITK)."""
        return cls(
            tuple(map(float, image.GetOrigin())),
            tuple(map(float, image.GetSpacing())),
            tuple(map(float, image.GetDirection())),
            tuple(map(int, image.GetSize())),
        )

    def apply_to_sitk(self, image) -> None:
        """Stamp this geometry onto a SimpleITK image built from a (z, y, x) array."""
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)

    @classmethod
    def from_ijk_to_ras(cls, ijk_to_ras, size_ijk) -> ImageGeometry:
        """Geometry from a Slicer IJKToRAS 4x4 matrix (IJK = i, j, k = x, y, z)."""
        m = np.asarray(ijk_to_ras, dtype=float)
        m_lps = LPS_TO_RAS @ m[:3, :3]
        origin = LPS_TO_RAS @ m[:3, 3]
        spacing = np.linalg.norm(m_lps, axis=0)
        direction = m_lps / spacing
        return cls(
            tuple(map(float, origin)),
            tuple(map(float, spacing)),
            tuple(map(float, direction.ravel())),
            tuple(map(int, size_ijk)),
        )

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """Slicer's 4x4 IJKToRAS for this geometry."""
        m = np.eye(4)
        m[:3, :3] = LPS_TO_RAS @ self.index_to_lps_matrix
        m[:3, 3] = LPS_TO_RAS @ np.asarray(self.origin)
        return m
