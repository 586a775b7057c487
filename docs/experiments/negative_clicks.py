"""Negative clicks on the two full LIDC CTs: points that are no lung nodule.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/negative_clicks.py clicks.csv

Two sets per CT, each point analyzed like a click and its outcome printed and written:

* random: 12 points in dense tissue (> -300 HU: mediastinum, heart, chest wall, vessels, bone,
  liver), 5 in lung parenchyma (-900 .. -700 HU), 3 in air (< -990 HU: airway or outside the
  body) and 12 on vessels in the lung (> -400 HU, the lung mask more than half lung within
  about 4 mm), all >= 20 mm from every reader nodule, drawn with a fixed seed (2026; the vessel
  check was fitted on other clicks, seed 7, docs/experiments/vessel_clicks.py);
* named: structures picked by eye on axial slices (liver, kidney, spleen, heart, aorta, airway,
  chest wall, vertebra, fat, a hilar vessel, bowel gas, air outside the body), each moved to the
  nearest voxel of its slice whose 3 x 3 neighbourhood lies in the structure's HU range, so a
  pick a few voxels off lands on the structure.
"""

import csv
import sys

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.scope.curvature import BLOB_FIGURES
from NoduleMalignancyLib.core.scope.validation import RefusedError, chest_lungs
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path

SOFT, FAT, ENHANCED, AIR = (0, 120), (-150, -50), (100, 600), (-1100, -900)
# (structure, slice k, column i, row j, HU range) on the CT's voxel grid.
NAMED = {
    "LIDC-IDRI-0001": [
        ("liver", 39, 180, 230, SOFT),
        ("kidney", 13, 150, 290, (100, 300)),
        ("bowel gas", 13, 320, 143, AIR),
        ("heart", 66, 270, 225, ENHANCED),
        ("descending aorta", 66, 270, 320, ENHANCED),
        ("ascending aorta", 93, 245, 220, ENHANCED),
        ("airway (main bronchus)", 93, 232, 262, AIR),
        ("anterior chest wall fat", 66, 256, 150, FAT),
        ("lateral chest wall muscle", 66, 80, 250, SOFT),
        ("posterior chest wall muscle", 66, 200, 380, SOFT),
        ("vertebra", 66, 256, 345, (150, 1500)),
        ("air outside the body", 66, 256, 50, AIR),
        ("shoulder muscle", 119, 90, 250, SOFT),
        ("hilar vessel", 66, 210, 255, (0, 600)),
        ("spleen", 39, 380, 260, SOFT),
        ("mediastinal fat", 93, 230, 190, FAT),
    ],
    "LIDC-IDRI-0006": [
        ("liver", 39, 180, 220, SOFT),
        ("kidney", 13, 380, 280, (100, 300)),
        ("bowel gas", 16, 412, 221, AIR),
        ("heart", 66, 280, 210, ENHANCED),
        ("descending aorta", 66, 290, 290, ENHANCED),
        ("trachea", 119, 262, 205, AIR),
        ("aortic arch", 93, 255, 215, ENHANCED),
        ("anterior chest wall muscle", 66, 256, 110, SOFT),
        ("lateral chest wall muscle", 66, 45, 250, SOFT),
        ("vertebra", 66, 256, 330, (150, 1500)),
        ("air outside the body", 66, 256, 40, AIR),
        ("hilar vessel", 66, 180, 215, (0, 600)),
        ("spleen", 39, 390, 260, SOFT),
        ("stomach wall", 39, 330, 210, SOFT),
        ("axillary fat", 93, 60, 200, FAT),
    ],
}


def snap(a: np.ndarray, k: int, i: int, j: int, hu: tuple[float, float], radius: int = 40):
    """The voxel of slice k nearest (i, j) whose 3 x 3 neighbourhood lies within ``hu``."""
    s = a[k].astype(np.float32)
    ok = (s >= hu[0]) & (s <= hu[1])
    inner = ok.copy()
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            inner &= np.roll(np.roll(ok, dj, 0), di, 1)
    jj, ii = np.nonzero(inner)
    d = np.hypot(ii - i, jj - j)
    if not len(d) or d.min() > radius:
        raise ValueError(f"no voxel in {hu} HU within {radius} voxels of {(i, j, k)}")
    n = int(np.argmin(d))
    return int(ii[n]), int(jj[n])


def in_lung(a: np.ndarray, g: ImageGeometry) -> np.ndarray:
    """Voxels whose coarse lung-mask neighbourhood (about 4 mm) is more than half lung."""
    lungs = chest_lungs(a, g)
    share = ndimage.uniform_filter(lungs.mask_kji.astype(np.float32), size=(3, 7, 7)) > 0.5
    k, j, i = np.indices(a.shape, sparse=True)
    s = lungs.stride_kji
    n = share.shape
    return share[
        np.minimum(k // s[0], n[0] - 1),
        np.minimum(j // s[1], n[1] - 1),
        np.minimum(i // s[2], n[2] - 1),
    ]


def clicks(name: str, a: np.ndarray, g: ImageGeometry, rng) -> list[tuple[str, str, tuple]]:
    nodules = np.array([p for _, p in nodule_points_lps(name)])
    kinds = {
        "dense tissue (HU > -300)": (a > -300, 12),
        "lung parenchyma (-900..-700 HU)": ((a > -900) & (a < -700), 5),
        "air below -990 HU": ((a < -990) & (a > -1100), 3),
        "vessel in the lung (> -400 HU, lung around)": (in_lung(a, g) & (a > -400), 12),
    }
    out = []
    for kind, (where, n) in kinds.items():
        idx = np.argwhere(where[5:-5, 40:-40, 40:-40]) + [5, 40, 40]
        picked = 0
        while picked < n:
            k, j, i = idx[rng.integers(len(idx))]
            p = g.index_to_lps(np.array([i, j, k], float))
            if np.min(np.linalg.norm(nodules - p, axis=1)) < 20:
                continue
            picked += 1
            out.append(("random", kind, (int(i), int(j), int(k))))
    for structure, k, i, j, hu in NAMED[name]:
        i, j = snap(a, k, i, j, hu)
        out.append(("named", structure, (i, j, k)))
    return out


def main(path: str) -> None:
    torch.set_num_threads(1)
    ens = Ensemble.load(device="cpu")
    rng = np.random.default_rng(2026)
    rows = []
    for name in ("LIDC-IDRI-0001", "LIDC-IDRI-0006"):
        img = sitk.ReadImage(str(sample_path(name)))
        a = sitk.GetArrayFromImage(img)
        g = ImageGeometry.from_sitk(img)
        for source, kind, (i, j, k) in clicks(name, a, g, rng):
            p = g.index_to_lps(np.array([i, j, k], float))
            row = {"ct": name, "set": source, "clicked_on": kind, "ijk": f"{i} {j} {k}"}
            row["hu"] = int(a[k, j, i])
            try:
                r = analyze_point(a, g, p, ens, map_to_ct=False)
                row["outcome"] = ";".join(w.code for w in r.warnings) or "(no warning)"
                row["malignancy"] = round(r.malignancy_probability, 2)
                row["diameter_mm"] = round(r.diameter_mm, 1)
                row["lung_side"] = r.scope_figures.get("lung_side", "")
                row["vessel_score"] = round(r.scope_figures.get("vessel_score", float("nan")), 2)
                row["point_distance_mm"] = round(r.scope_figures["point_distance_mm"], 2)
                for figure in BLOB_FIGURES:  # core/scope/curvature.py (fifteenth session)
                    row[figure] = round(r.scope_figures.get(figure, float("nan")), 3)
            except RefusedError as e:
                row["outcome"] = f"REFUSED {e.code}"
            rows.append(row)
            print(" | ".join(str(v) for v in row.values()), flush=True)
    keys = ["ct", "set", "clicked_on", "ijk", "hu", "outcome", "malignancy", "diameter_mm"]
    keys += ["lung_side", "vessel_score", "point_distance_mm", *BLOB_FIGURES]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1])
