"""Variants of the malignancy fusion, cross-fitted over the folds on the shipped run's
out-of-fold rows (issue: explanations that hold, fused AUROC target 0.93): the shipped linear
model (head logit + eight measurements, L2 0.01) against stronger L2, a head x log-diameter
interaction and the head with log diameter alone. Each against the shipped fusion with the
evaluation's paired bootstrap (core/model/metrics.paired_auroc_difference, resampling patients).

    python docs/experiments/fusion_variants.py runs/gate-band-60-5fold/oof.csv
"""

import csv
import sys

import numpy as np

from NoduleMalignancyLib.core.model.fusion import (
    MALIGNANCY_PROBABILITY,
    MEASURED_FEATURES,
    cross_fit,
    fit_logistic,
    fusion_oof,
    oof_fusion_inputs,
)
from NoduleMalignancyLib.core.model.metrics import auroc, paired_auroc_difference
from NoduleMalignancyLib.training.oof import OOF_COLUMNS, number

rows = list(csv.DictReader(open(sys.argv[1])))
present = [c for c in OOF_COLUMNS if c in rows[0]]
table = {c: np.array([number(r[c]) for r in rows]) for c in present}
heads, measured, targets = oof_fusion_inputs(table)
y = targets[MALIGNANCY_PROBABILITY]
folds = np.array([int(r["fold"]) for r in rows])
z = heads["malignancy"]
base = fusion_oof(MALIGNANCY_PROBABILITY, z, measured, y, folds)
patients = np.array([r["patient_id"] for r in rows])


def report(name: str, p: np.ndarray) -> None:
    d = paired_auroc_difference(y, p, base, groups=patients)
    print(f"{name}: {auroc(y, p):.4f}, {d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]")


print("shipped fusion crossfit", round(auroc(y, base), 4))
ld = MEASURED_FEATURES.index("log_diameter_mm")


def variant(x, l2=1e-2):
    def fit(xt, yt):
        return fit_logistic(xt, yt, l2=l2)

    def pred(mdl, xs):
        c, b0, mu, sc = mdl
        return 1 / (1 + np.exp(-(((xs - mu) / sc) @ c + b0)))

    return cross_fit(x, y, folds, fit, pred)


X0 = np.column_stack([z, measured])
for l2 in (1e-2, 1.0, 10.0, 30.0):
    report(f"linear, L2 {l2:g}", variant(X0, l2))
Xi = np.column_stack([z, measured, z * measured[:, ld]])
report("+ head x log diameter", variant(Xi))
Xs = np.column_stack([z, measured[:, ld]])
report("head + log diameter only", variant(Xs))
