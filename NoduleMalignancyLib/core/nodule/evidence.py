"""Evidence maps: where in the VOI the malignancy evidence lies, and how much.

The network's bag logit is z_a = sum_l sum_v c_{l,a}(v). A map shows c spread evenly over the
VOI voxels each coarse cell covers and expressed per millilitre, so that integrating any map
(sum x voxel volume / 1000) gives back its share of the logit, on the VOI grid exactly and on
the CT grid up to resampling.
"""

from __future__ import annotations

import numpy as np

SCALE_NAMES = ("fine", "medium", "coarse")  # MIL scales F1..F3 (strides 2, 4, 8)
COMBINED = "combined"


def spread_to_voi(contribution: np.ndarray, voi_shape_zyx) -> np.ndarray:
    """Spread a coarse contribution map (..., d, h, w) over the VOI grid (..., D, H, W).

    Each coarse cell's value is divided evenly among the VOI voxels it covers, so the sum over
    the VOI equals the sum over the coarse map.
    """
    d, h, w = contribution.shape[-3:]
    vd, vh, vw = voi_shape_zyx
    if vd % d or vh % h or vw % w:
        raise ValueError(f"Coarse map {d, h, w} does not tile the VOI grid {vd, vh, vw}.")
    fz, fy, fx = vd // d, vh // h, vw // w
    out = np.repeat(np.repeat(np.repeat(contribution, fz, -3), fy, -2), fx, -1)
    return out / float(fz * fy * fx)


def evidence_maps(
    contributions: list[np.ndarray],
    attribute_index: int,
    voi_shape_zyx,
    voxel_volume_mm3: float,
) -> dict[str, np.ndarray]:
    """Fold-averaged evidence density (logit per mL) per scale and combined, on the VOI grid.

    ``contributions`` holds one array per scale of shape (K folds, A, d, h, w) for one nodule.
    """
    per_ml = 1000.0 / voxel_volume_mm3
    maps: dict[str, np.ndarray] = {}
    for name, c in zip(SCALE_NAMES, contributions, strict=False):
        maps[name] = (spread_to_voi(c[:, attribute_index], voi_shape_zyx).mean(0) * per_ml).astype(
            np.float32
        )
    maps[COMBINED] = np.sum([maps[n] for n in SCALE_NAMES[: len(contributions)]], axis=0)
    return maps


def integrate(map_per_ml: np.ndarray, voxel_volume_mm3: float) -> float:
    """The logit a density map accounts for (inverse of the per-mL scaling)."""
    return float(map_per_ml.astype(np.float64).sum() * voxel_volume_mm3 / 1000.0)


# Each scale's cell in VOI voxels along every axis (the network's strides).
SCALE_STRIDES = {"fine": 2, "medium": 4, "coarse": 8}


def smoothed_for_display(
    maps_ct: dict[str, np.ndarray], ct_geometry, voi_spacing_xyz: tuple[float, float, float]
) -> dict[str, np.ndarray]:
    """The CT-grid evidence maps as a reader sees them: each scale blurred by a Gaussian of
    half its cell (so its 1-8 mm blocks read as a smooth field), combined = their sum.

    Why only for display: the stored maps (``NoduleResult.evidence_ct``, the written files)
    keep the exact blocks. The blur reflects at the grid's edges (half-sample symmetric), so
    each map still sums to the same logit (the explanation's identity holds on what is shown).
    ``ct_geometry``: the maps' ``ImageGeometry`` (its direction says which world axis each
    array axis runs along); ``voi_spacing_xyz``: the VOI's voxel size (mm).
    """
    from scipy import ndimage

    direction = np.abs(np.asarray(ct_geometry.direction_matrix))
    world_of_ijk = direction.argmax(0)  # world axis (x, y, z) of array axis i, j, k
    voi_mm_xyz = np.asarray(voi_spacing_xyz, dtype=float)
    ct_mm_ijk = np.asarray(ct_geometry.spacing, dtype=float)
    shown: dict[str, np.ndarray] = {}
    for name, stride in SCALE_STRIDES.items():
        if name not in maps_ct:
            continue
        cell_mm_ijk = stride * voi_mm_xyz[world_of_ijk]
        sigma_kji = (0.5 * cell_mm_ijk / ct_mm_ijk)[::-1]
        shown[name] = ndimage.gaussian_filter(
            maps_ct[name].astype(np.float32), sigma_kji, mode="reflect", truncate=2.0
        )
    if COMBINED in maps_ct:
        scales = [shown[n] for n in SCALE_NAMES if n in shown]
        shown[COMBINED] = np.sum(scales, axis=0) if scales else maps_ct[COMBINED]
    return shown
