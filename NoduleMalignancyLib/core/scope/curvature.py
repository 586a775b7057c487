"""Blob or tube: the CT's curvature at the outline's centre (the vessel check's eighth and ninth
figures, core/scope/vessel.py).

A bright blob curves down in all three directions, a bright tube in two (not along its axis).
The Hessian of the CT smoothed with a Gaussian of scale sigma, scale-normalised (sigma^2 times
the second derivatives, in HU), has eigenvalues l1 <= l2 <= l3; at a nodule's centre l3 is
nearly as negative as l1, on a vessel l3 is about 0 whatever the outline that the network drew
around the click. Over the scales and the voxels within ``near_mm`` of the centre, the largest
``-l3`` is the blob strength and l3 / l1 there the blob ratio (docs/experiments/README.md,
"Scope", fifteenth session: docs/experiments/hessian_blobness.py).

Each scale runs on block means of the CT (blocks of about sigma / 2), so a large scale costs what
a small one does: a few milliseconds per click.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["BLOB_FIGURES", "SIGMAS_MM", "blob_figures", "tube_axis"]

SIGMAS_MM = (1.0, 1.5, 2.0, 3.0, 4.0, 5.5)
BLOB_FIGURES = ("blob_strength", "blob_ratio", "blob_sigma_mm")
HU_RANGE = (-1000.0, 200.0)  # contrast and bone no brighter than soft tissue
_SECOND_ORDERS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _block_box(image_zyx: np.ndarray, centre: np.ndarray, half: np.ndarray, block: np.ndarray):
    """Block means of the CT in (2 half + 1) blocks per axis centred on the voxel ``centre``
    (edge voxels repeated beyond the CT)."""
    size = (2 * half + 1) * block
    lo = centre - half * block - block // 2
    hi = lo + size
    clip_lo, clip_hi = np.maximum(lo, 0), np.minimum(hi, image_zyx.shape)
    box = image_zyx[tuple(slice(a, b) for a, b in zip(clip_lo, clip_hi, strict=True))]
    pad = [(int(a - b), int(c - d)) for a, b, c, d in zip(clip_lo, lo, hi, clip_hi, strict=True)]
    box = np.pad(np.clip(box.astype(np.float32), *HU_RANGE), pad, mode="edge")
    n = 2 * half + 1
    return box.reshape(n[0], block[0], n[1], block[1], n[2], block[2]).mean(axis=(1, 3, 5))


def blob_figures(
    image_zyx: np.ndarray, spacing_zyx, centre_kji, near_mm: float = 2.0
) -> dict[str, float]:
    """Blob strength (HU), blob ratio and the scale (mm) that gave them, at ``centre_kji``."""
    image_zyx = np.asarray(image_zyx)
    spacing = np.asarray(spacing_zyx, dtype=float)
    centre = np.clip(
        np.rint(np.asarray(centre_kji, dtype=float)).astype(int), 0, np.subtract(image_zyx.shape, 1)
    )
    best = {"blob_strength": 0.0, "blob_ratio": 0.0, "blob_sigma_mm": 0.0}
    for sigma in SIGMAS_MM:
        block = np.maximum(1, np.floor(sigma / 2.0 / spacing)).astype(int)
        coarse = spacing * block
        near = np.ceil(near_mm / coarse).astype(int)
        half = np.ceil(3.0 * sigma / coarse).astype(int) + near
        box = _block_box(image_zyx, centre, half, block)
        inner = tuple(slice(h - m, h + m + 1) for h, m in zip(half, near, strict=True))
        hessian = np.empty(tuple(2 * near + 1) + (3, 3), np.float32)
        for i, j in _SECOND_ORDERS:
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            d = ndimage.gaussian_filter(
                box, sigma / coarse, order=order, mode="nearest", truncate=3.0
            )
            hessian[..., i, j] = hessian[..., j, i] = d[inner] * sigma**2 / (coarse[i] * coarse[j])
        values = np.linalg.eigvalsh(hessian)  # ascending: l1 <= l2 <= l3
        strength = -values[..., 2]
        k = np.unravel_index(int(np.argmax(strength)), strength.shape)
        if strength[k] > best["blob_strength"]:
            l1, l3 = float(values[k][0]), float(values[k][2])
            best = {
                "blob_strength": float(strength[k]),
                "blob_ratio": l3 / l1,
                "blob_sigma_mm": sigma,
            }
    return best


def _hessian_at(image_zyx: np.ndarray, spacing: np.ndarray, centre: np.ndarray, sigma: float):
    """The scale-normalised Hessian (HU, mm axes in (k, j, i) order) at the voxel ``centre``."""
    block = np.maximum(1, np.floor(sigma / 2.0 / spacing)).astype(int)
    coarse = spacing * block
    half = np.ceil(3.0 * sigma / coarse).astype(int)
    box = _block_box(image_zyx, centre, half, block)
    hessian = np.empty((3, 3))
    for i, j in _SECOND_ORDERS:
        order = [0, 0, 0]
        order[i] += 1
        order[j] += 1
        d = ndimage.gaussian_filter(box, sigma / coarse, order=order, mode="nearest", truncate=3.0)
        hessian[i, j] = hessian[j, i] = d[tuple(half)] * sigma**2 / (coarse[i] * coarse[j])
    return hessian


def tube_axis(image_zyx: np.ndarray, spacing_zyx, centre_kji) -> tuple[np.ndarray, float]:
    """The direction (unit vector in mm, (k, j, i) order) in which the CT bends least at
    ``centre_kji``, at the scale where it bends most across (the largest scale-normalised -l1
    over :data:`SIGMAS_MM`): along a vessel, its axis; and that scale (mm)."""
    image_zyx = np.asarray(image_zyx)
    spacing = np.asarray(spacing_zyx, dtype=float)
    centre = np.clip(
        np.rint(np.asarray(centre_kji, dtype=float)).astype(int), 0, np.subtract(image_zyx.shape, 1)
    )
    best, axis, scale = -np.inf, np.array([1.0, 0.0, 0.0]), 0.0
    for sigma in SIGMAS_MM:
        values, vectors = np.linalg.eigh(_hessian_at(image_zyx, spacing, centre, sigma))
        if -values[0] > best:
            best, axis, scale = -values[0], vectors[:, 2], sigma
    return axis, scale
