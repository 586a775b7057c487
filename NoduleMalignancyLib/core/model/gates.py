"""Gate health: are the MIL gates attention, or a collapsed switch?

Measured on the first shipped ensembles: the fine gate ~0 everywhere, other scales all ~1
(plain averaging) or a handful of voxels. Three figures per fold and scale, over the cells
that hold real image data (the validity channel, pooled to the scale's grid):

* ``mean_gate``: the mean gate value;
* ``mass_share``: the scale's share of the total gate mass across scales (the pooling's single
  normaliser), so the shares of a fold sum to 1;
* ``spread``: the participation ratio (sum g)^2 / sum g^2 divided by the number of valid
  cells: 1 when every valid cell has the same gate, 1 / n_valid when one cell carries it all.
"""

from __future__ import annotations

import numpy as np

from ..nodule.evidence import SCALE_NAMES

__all__ = ["GATE_FIGURES", "gate_health", "valid_cells"]

GATE_FIGURES = ("mean_gate", "mass_share", "spread")


def valid_cells(valid_zyx: np.ndarray, shape_zyx) -> np.ndarray:
    """Cells of a coarse grid (which tiles the VOI) that hold any real image data.

    "Any", not "most": the LIDC crops are often a few slices thick, thinner than a coarse cell.
    """
    d, h, w = shape_zyx
    vd, vh, vw = valid_zyx.shape
    blocks = valid_zyx.reshape(d, vd // d, h, vh // h, w, vw // w)
    return blocks.max(axis=(1, 3, 5)) > 0.5


def gate_health(gates: list[np.ndarray], valid_zyx: np.ndarray) -> dict:
    """Per fold and scale figures of one nodule's gates.

    :param gates: per scale (K, d, h, w) gate maps (one nodule, K folds).
    :param valid_zyx: (D, H, W) validity of the VOI.
    :returns: ``{"folds": [{scale: {figure: value}}], "mean": {scale: {figure: value}}}``.
    """
    masks = [valid_cells(np.asarray(valid_zyx, dtype=float), g.shape[-3:]) for g in gates]
    k = gates[0].shape[0]
    folds = []
    for fold in range(k):
        values = [np.asarray(g[fold], dtype=float)[m] for g, m in zip(gates, masks, strict=True)]
        total = sum(float(v.sum()) for v in values)
        per_scale = {}
        for name, v in zip(SCALE_NAMES, values, strict=False):
            n = len(v)
            mass = float(v.sum())
            square = float((v**2).sum())
            per_scale[name] = {
                "mean_gate": mass / n if n else float("nan"),
                "mass_share": mass / total if total > 0 else float("nan"),
                "spread": (mass**2 / square) / n if n and square > 0 else float("nan"),
            }
        folds.append(per_scale)
    mean = {
        name: {f: float(np.mean([fold[name][f] for fold in folds])) for f in GATE_FIGURES}
        for name in folds[0]
    }
    return {"folds": folds, "mean": mean}
