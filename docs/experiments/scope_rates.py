"""Scope figures and warnings on every LIDC VOI, clicked at the nodule's listed centre.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/scope_rates.py scope.csv

One row per VOI: the refusal code (if any), the warning codes and the figures they were decided
on (core/scope/validation.py). The firing rates in docs/experiments/README.md come from this table.
"""

import csv
import sys
import time

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.scope.validation import RefusedError
from NoduleMalignancyLib.training.dataset import load_records

torch.set_num_threads(1)
ens = Ensemble.load(device="cpu")
rows = []
t = time.time()
for r in load_records():
    img = sitk.ReadImage(str(r.image_path))
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    g = ImageGeometry.from_sitk(img)
    row = {"name": r.name, "reader_diameter_mm": r.diameter_mean_mm}
    try:
        res = analyze_point(a, g, r.center_lps, ens, map_to_ct=False)
        row.update(
            res.scope_figures,
            diameter_mm=res.diameter_mm,
            warnings=";".join(w.code for w in res.warnings),
            refused="",
        )
    except RefusedError as e:
        row.update(refused=e.code)
    except ValueError as e:
        row.update(refused=f"error: {e}")
    rows.append(row)
keys = sorted({k for r in rows for k in r})
with open(sys.argv[1], "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
print(len(rows), "in", round(time.time() - t), "s")
