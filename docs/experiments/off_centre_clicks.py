"""Scope warnings when the reader clicks anywhere on the nodule, not at its listed centre.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/off_centre_clicks.py clicks.csv

Per LIDC VOI one click on a random voxel of its consensus mask (seed 2026): what a reader's
click on the nodule looks like, where scope_rates.py clicks the listed centre. One row per VOI:
the distance from the point to the outline (``point_distance_mm``; 0.69 mm when the outline
holds the point, the VOI centre lying between voxels), the warnings and the refusal. The
``point_off_nodule`` threshold (core/scope/validation.py) is judged on this table.
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


def main(path: str) -> None:
    torch.set_num_threads(1)
    ens = Ensemble.load(device="cpu")
    rng = np.random.default_rng(2026)
    rows = []
    t = time.time()
    for r in load_records():
        if r.mask_path is None:
            continue
        img = sitk.ReadImage(str(r.image_path))
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        g = ImageGeometry.from_sitk(img)
        inside = np.argwhere(sitk.GetArrayFromImage(sitk.ReadImage(str(r.mask_path))) > 0)
        if not len(inside):
            continue
        k, j, i = inside[rng.integers(len(inside))]
        point = g.index_to_lps(np.array([i, j, k], float))
        row = {"name": r.name, "reader_diameter_mm": r.diameter_mean_mm}
        row["offset_mm"] = round(float(np.linalg.norm(point - np.asarray(r.center_lps))), 2)
        try:
            res = analyze_point(a, g, point, ens, map_to_ct=False)
            row.update(
                point_distance_mm=round(res.scope_figures["point_distance_mm"], 2),
                diameter_mm=round(res.diameter_mm, 1),
                warnings=";".join(w.code for w in res.warnings),
                refused="",
            )
        except RefusedError as e:
            row.update(refused=e.code)
        except ValueError as e:
            row.update(refused=f"error: {e}")
        rows.append(row)
    keys = ["name", "reader_diameter_mm", "offset_mm", "point_distance_mm", "diameter_mm"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*keys, "warnings", "refused"])
        w.writeheader()
        w.writerows(rows)
    print(len(rows), "in", round(time.time() - t), "s")


if __name__ == "__main__":
    main(sys.argv[1])
