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
