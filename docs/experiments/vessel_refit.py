"""Refit the vessel check with one or two more figures: does any beat the shipped constants?

    python docs/experiments/vessel_refit.py vessels.csv

``vessels.csv``: the table of vessel_clicks.py (it records the other scope figures, the
outline's measurements and the HU at the point beside the vessel figures). For the seven
figures alone and with every single one and pair of the candidates below, the script's recipe
(class-balanced logistic fit, threshold at the nodules' 99th percentile) in sample and leaving
one CT out (docs/experiments/README.md, "Scope", fourteenth session).
"""

import csv
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from vessel_clicks import CTS, fit, score

from NoduleMalignancyLib.core.scope.vessel import FIGURES, _inputs

CANDIDATES = (
    "lung_share",
    "dense_fill",
    "mean_hu",
    "compactness",
    "boundary_contrast_hu",
    "hu_at_point",
    "lung_distance_mm",
    "blob_ratio",  # core/scope/curvature.py (fifteenth session)
    "blob_strength",
)
LOG = {"blob_strength"}  # entered as log(1 + value), as core/scope/vessel.py enters it


def number(text: str, name: str = "") -> float:
    value = {"True": 1.0, "False": 0.0}[text] if text in ("True", "False") else float(text)
    return float(np.log1p(value)) if name in LOG else value


def rates(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> tuple[float, float]:
    """Nodules and vessel clicks flagged outside ``train`` (or in it when it is all)."""
    model = fit(x[train], y[train])
    threshold = np.quantile(score(x[train & (y == 0)], model), 0.99)
    test = ~train if (~train).any() else train
    s = score(x[test], model)
    return float((s[y[test] == 0] > threshold).mean()), float((s[y[test] == 1] > threshold).mean())


def main(path: str) -> None:
    rows = [r for r in csv.DictReader(open(path)) if r.get("tube_ratio")]
    y = np.array([r["kind"] == "vessel click" for r in rows], float)
    ct = np.array([r["ct"] for r in rows])
    base = np.array([_inputs({k: float(r[k]) for k in FIGURES}) for r in rows])
    print(f"{int((y == 0).sum())} nodules, {int(y.sum())} vessel clicks with figures")
    for k in range(3):
        for names in itertools.combinations(CANDIDATES, k):
            extra = np.array([[number(r[n], n) for n in names] for r in rows]).reshape(
                len(rows), -1
            )
            x = np.hstack([base, extra])
            loco = np.mean([rates(x, y, ct != test) for test in CTS], axis=0)
            inside = rates(x, y, np.ones(len(y), bool))
            print(
                f"{'+'.join(names) or 'the seven figures':45s} leave one CT out: nodules "
                f"{loco[0]:.3f}, vessels {loco[1]:.2f} | in sample {inside[0]:.3f} / {inside[1]:.2f}"
            )


if __name__ == "__main__":
    main(sys.argv[1])
