"""Does scouting the crop with one fold change the answer? (``core/analysis.SCOUT_FOLDS``)

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/scout_folds.py scout.csv

Every fourth LIDC VOI (clicked at its listed centre) and every reader nodule of the two full CTs
(at the readers' mean centroid), analysed with the shipped ensemble twice: every fold in every
context pass (``SCOUT_FOLDS = 0``, the policy before) and the crop decided by the first fold
alone (``SCOUT_FOLDS = 1``). Per click: the passes, the fold runs, the malignancy probability,
the longest axial diameter and the Dice between the two segmentations (same VOI grid). Prints
how often the answers differ and by how much.
"""

import csv
import sys
import time

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core import analysis
from NoduleMalignancyLib.core.analysis import analyze_point
from NoduleMalignancyLib.core.ensemble import Ensemble
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.metrics import dice
from NoduleMalignancyLib.core.validation import RefusedError
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path
from NoduleMalignancyLib.training.dataset import load_records

CTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0006")


def clicks():
    for r in load_records()[::4]:
        img = sitk.ReadImage(str(r.image_path))
        yield r.name, sitk.GetArrayFromImage(img).astype(np.float32), img, r.center_lps
    for patient in CTS:
        img = sitk.ReadImage(str(sample_path(patient)))
        a = sitk.GetArrayFromImage(img)
        for label, point in nodule_points_lps(patient):
            yield label, a, img, point


def main(out: str) -> None:
    torch.set_num_threads(1)
    ens = Ensemble.load(device="cpu")
    rows, t0 = [], time.time()
    for name, a, img, point in clicks():
        g = ImageGeometry.from_sitk(img)
        row, masks = {"name": name}, {}
        for scout in (0, 1):
            analysis.SCOUT_FOLDS = scout
            try:
                r = analyze_point(a, g, point, ens, map_to_ct=False)
            except (RefusedError, ValueError) as e:
                row[f"scout{scout}_error"] = str(e)[:80]
                continue
            k = len(ens.models)
            runs = r.context_passes * k if scout == 0 else r.context_passes * scout + k - scout
            row |= {
                f"scout{scout}_passes": r.context_passes,
                f"scout{scout}_fold_runs": runs,
                f"scout{scout}_malignancy": round(r.malignancy_probability, 5),
                f"scout{scout}_diameter_mm": round(r.diameter_mm, 2),
            }
            masks[scout] = r.segmentation_mask_voi > 0
        if len(masks) == 2:
            row["dice_between"] = round(dice(masks[0], masks[1]), 4)
        rows.append(row)
    analysis.SCOUT_FOLDS = 1
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    both = [r for r in rows if "dice_between" in r]
    dp = np.array([abs(r["scout1_malignancy"] - r["scout0_malignancy"]) for r in both])
    dd = np.array([abs(r["scout1_diameter_mm"] - r["scout0_diameter_mm"]) for r in both])
    db = np.array([r["dice_between"] for r in both])
    runs0 = np.array([r["scout0_fold_runs"] for r in both])
    runs1 = np.array([r["scout1_fold_runs"] for r in both])
    print(f"{len(rows)} clicks ({len(both)} answered both ways) in {time.time() - t0:.0f} s")
    print(
        f"identical answer (|dp| < 1e-4, same diameter): {np.mean((dp < 1e-4) & (dd < 0.01)):.1%}"
    )
    print(
        f"|malignancy change|: median {np.median(dp):.4f}, 99th pct {np.quantile(dp, 0.99):.4f}, max {dp.max():.4f}"
    )
    print(
        f"|diameter change| mm: median {np.median(dd):.2f}, 99th pct {np.quantile(dd, 0.99):.2f}, max {dd.max():.2f}"
    )
    print(f"Dice between the segmentations: median {np.median(db):.4f}, min {db.min():.4f}")
    print(f"fold runs per click: mean {runs0.mean():.2f} -> {runs1.mean():.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
