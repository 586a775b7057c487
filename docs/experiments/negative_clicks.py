"""Negative clicks on the two full LIDC CTs: random points 20 mm or more from every reader nodule.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/negative_clicks.py clicks.json

Per CT: 12 points in dense tissue (> -300 HU: mediastinum, heart, chest wall, vessels, bone,
liver), 5 in lung parenchyma (-900 .. -700 HU) and 3 in air (< -990 HU: airway or outside the
body), drawn with a fixed seed; each is analysed like a click and its outcome printed.
"""

import json
import sys

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.analysis import analyze_point
from NoduleMalignancyLib.core.ensemble import Ensemble
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.validation import RefusedError
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path

torch.set_num_threads(1)
ens = Ensemble.load(device="cpu")
rng = np.random.default_rng(2026)
rows = []
for name in ("LIDC-IDRI-0001", "LIDC-IDRI-0006"):
    img = sitk.ReadImage(str(sample_path(name)))
    a = sitk.GetArrayFromImage(img)
    g = ImageGeometry.from_sitk(img)
    nodules = np.array([p for _, p in nodule_points_lps(name)])
    body = a > -300
    kinds = {
        "dense tissue (HU > -300)": (a > -300, 12),
        "lung parenchyma (-900..-700 HU)": ((a > -900) & (a < -700), 5),
        "air below -990 HU": ((a < -990) & (a > -1100), 3),
    }
    for kind, (where, n) in kinds.items():
        idx = np.argwhere(where[5:-5, 40:-40, 40:-40]) + [5, 40, 40]
        picked = 0
        while picked < n:
            k, j, i = idx[rng.integers(len(idx))]
            p = g.index_to_lps(np.array([i, j, k], float))
            if np.min(np.linalg.norm(nodules - p, axis=1)) < 20:
                continue
            picked += 1
            try:
                r = analyze_point(a, g, p, ens, map_to_ct=False)
                out = ",".join(w.code for w in r.warnings) or "(no warning)"
                prob = r.malignancy_probability
            except RefusedError as e:
                out = f"REFUSED {e.code}"
                prob = float("nan")
            rows.append((name, kind, int(a[k, j, i]), out, prob))
            print(f"{name} | {kind} | {a[k, j, i]} HU | {out} | {prob:.2f}", flush=True)
json.dump(rows, open(sys.argv[1], "w"))
