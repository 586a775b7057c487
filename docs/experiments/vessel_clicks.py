"""Fit the vessel check (core/scope/vessel.py): LIDC nodules inserted into the lungs of the two full
CTs against clicks on the vessels of those lungs.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/vessel_clicks.py vessels.csv [N]

(``N``: only every inserted nodule of a random subset of N, seed 7, drawn after the clicks so
that the clicks and insertion points stay the same; all when left out.)

* Vessel clicks: per CT 40 random voxels above -400 HU inside the lung (more than half of the
  lung mask within about 4 mm is lung), at least 20 mm from every reader nodule (seed 7; the
  negative clicks of negative_clicks.py use another seed and are the check's test).
* Nodules: every LIDC VOI whose crop holds little dense tissue besides the nodule (under 15 % of
  the voxels above -300 HU outside the consensus mask: intrapulmonary nodules; a juxtapleural
  crop would bring its piece of chest wall into the lung), resampled onto a full CT (alternating
  the two) and merged (voxel-wise maximum) at a random point of lung parenchyma at least 30 mm
  from the reader nodules, clicked at the inserted nodule's centre.

Every click is analyzed as in the product (``analyze_point``), which records the seven figures.
A logistic model (class-balanced, L2 0.01, standardised inputs) is fitted on all of them; the
threshold is the model's 99th percentile on the nodules. Printed: leave-one-CT-out figures (fit
on one CT's clicks, threshold at the 99th percentile of its nodules, test on the other CT) and
the constants for ``core/scope/validation.VESSEL_MODEL``.
"""

import csv
import os
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
from NoduleMalignancyLib.core.scope.vessel import FIGURES, _inputs
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path
from NoduleMalignancyLib.training.dataset import load_records

CTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0006")


def intrapulmonary(record) -> bool:
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(record.image_path)))
    mask_path = str(record.image_path).replace("/image/", "/nodule_mask/")
    m = sitk.GetArrayFromImage(sitk.ReadImage(mask_path)) > 0
    return float(((a > -300) & ~m).mean()) < 0.15


def insert(host: sitk.Image, a: np.ndarray, record, point) -> np.ndarray:
    """The host CT with the VOI merged in (voxel-wise maximum), its centre at ``point``."""
    voi = sitk.ReadImage(str(record.image_path))
    shift = np.asarray(record.center_lps) - np.asarray(point)
    move = sitk.TranslationTransform(3, tuple(float(s) for s in shift))
    ijk = np.rint(host.TransformPhysicalPointToContinuousIndex(tuple(map(float, point))))
    half = np.asarray(voi.GetSize()) * np.asarray(voi.GetSpacing()) / 2 / host.GetSpacing()
    lo = np.maximum(ijk - np.ceil(half) - 2, 0).astype(int)
    hi = np.minimum(ijk + np.ceil(half) + 3, host.GetSize()).astype(int)
    box = host[int(lo[0]) : int(hi[0]), int(lo[1]) : int(hi[1]), int(lo[2]) : int(hi[2])]
    moved = sitk.Resample(voi, box, move, sitk.sitkLinear, -3000.0, sitk.sitkInt16)
    out = a.copy()
    region = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    out[region] = np.maximum(out[region], sitk.GetArrayFromImage(moved))
    return out


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 3000, rate: float = 0.1):
    mean, scale = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / scale
    w, b = np.zeros(z.shape[1]), 0.0
    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    for _ in range(steps):
        g = (1 / (1 + np.exp(-(z @ w + b))) - y) * weight
        w -= rate * (z.T @ g / len(y) + l2 * w)
        b -= rate * g.mean()
    return mean, scale, w, b


def score(x, model):
    mean, scale, w, b = model
    return ((x - mean) / scale) @ w + b


def clicks():
    """The CTs (image, array, geometry, lung mask, reader nodule points) and the rows to click:
    vessel clicks and nodules to insert, in a fixed order (seed 7)."""
    rng = np.random.default_rng(7)
    hosts = {}
    rows = []
    for name in CTS:
        img = sitk.ReadImage(str(sample_path(name)))
        a, g = sitk.GetArrayFromImage(img), ImageGeometry.from_sitk(img)
        lungs = chest_lungs(a, g)
        nodules = np.array([p for _, p in nodule_points_lps(name)])
        hosts[name] = (img, a, g, lungs, nodules)
        for p in sample(a, g, lungs, nodules, 0.5, (3, 7, 7), -400.0, rng, 40, 20.0):
            rows.append({"ct": name, "kind": "vessel click", "name": "", "image": a, "point": p})
    records = [r for r in load_records() if intrapulmonary(r)]
    for n, record in enumerate(records):
        name = CTS[n % 2]
        img, a, g, lungs, nodules = hosts[name]
        (p,) = sample(a, g, lungs, nodules, 0.95, (5, 15, 15), None, rng, 1, 30.0)
        rows.append({"ct": name, "kind": "inserted nodule", "name": record.name, "point": p})
        rows[-1]["record"] = record
    return hosts, rows


def clicked_image(hosts, row) -> np.ndarray:
    img, a, _, _, _ = hosts[row["ct"]]
    return insert(img, a, row["record"], row["point"]) if "record" in row else row["image"]


# Recorded beside the vessel figures: the other scope figures and measurements, the HU at the
# point and the tier (core/scope/assessment.py), for fitting other checks on the same clicks.
EXTRA = ("lung_share", "dense_fill", "point_distance_mm", "lung_distance_mm", "lung_enclosed")
EXTRA += BLOB_FIGURES  # core/scope/curvature.py (fifteenth session)
MEASURED = ("mean_hu", "compactness", "elongation", "boundary_contrast_hu", "volume_mm3")


def main(path: str, nodules: int | None = None) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    ens = Ensemble.load(device="cpu")
    hosts, rows = clicks()
    if nodules is not None:
        inserted = [i for i, r in enumerate(rows) if r["kind"] == "inserted nodule"]
        keep = set(np.random.default_rng(7).choice(inserted, nodules, replace=False).tolist())
        rows = [r for i, r in enumerate(rows) if r["kind"] == "vessel click" or i in keep]
    table = []
    for row in rows:
        g = hosts[row["ct"]][2]
        image = clicked_image(hosts, row)
        out = {"ct": row["ct"], "kind": row["kind"], "nodule": row["name"]}
        try:
            r = analyze_point(image, g, row["point"], ens, map_to_ct=False)
            out |= {"warnings": ";".join(w.code for w in r.warnings), "diameter_mm": r.diameter_mm}
            out |= {k: r.scope_figures.get(k, "") for k in FIGURES if k != "diameter_mm"}
            out |= {k: r.scope_figures.get(k, "") for k in EXTRA}
            out |= {k: getattr(r, k) for k in MEASURED}
            out |= {"assessment": r.assessment.tier, "malignancy": r.malignancy_probability}
        except RefusedError as e:
            out["warnings"] = f"REFUSED {e.code}"
            out["assessment"] = "refused"
        ijk = np.rint(g.lps_to_index(row["point"])).astype(int)
        out["hu_at_point"] = int(image[ijk[2], ijk[1], ijk[0]])
        table.append(out)
        print(" | ".join(str(v) for v in out.values()), flush=True)
    with open(path, "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in table for k in r))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(table)
    report(table)


def sample(a, g, lungs, nodules, share, size, hu_above, rng, n, away_mm):
    stride = np.asarray(lungs.stride_kji)
    frac = ndimage.uniform_filter(lungs.mask_kji.astype(np.float32), size=size)
    if hu_above is None:
        cand = np.argwhere(frac > share) * stride
    else:
        kk, jj, ii = np.nonzero(a > hu_above)
        c = [
            np.minimum(v // s, m - 1)
            for v, s, m in zip((kk, jj, ii), stride, frac.shape, strict=True)
        ]
        ok = frac[c[0], c[1], c[2]] > share
        cand = np.stack([kk[ok], jj[ok], ii[ok]], 1)
    cand = cand[(cand[:, 0] > 5) & (cand[:, 0] < a.shape[0] - 6)]
    out = []
    while len(out) < n:
        k, j, i = cand[rng.integers(len(cand))]
        p = np.asarray(g.index_to_lps(np.array([i, j, k], float)))
        if np.min(np.linalg.norm(nodules - p, axis=1)) >= away_mm:
            out.append(p)
    return out


def report(table) -> None:
    rows = [r for r in table if r.get("tube_ratio", "") != ""]
    x = np.array([_inputs({k: float(r[k]) for k in FIGURES}) for r in rows])
    y = np.array([r["kind"] == "vessel click" for r in rows], dtype=float)
    ct = np.array([r["ct"] for r in rows])
    print(f"{int((y == 0).sum())} inserted nodules, {int(y.sum())} vessel clicks with figures")
    for test in CTS:
        train = ct != test
        model = fit(x[train], y[train])
        threshold = np.quantile(score(x[train & (y == 0)], model), 0.99)
        s, yt = score(x[~train], model), y[~train]
        print(
            f"fit on the other CT, test on {test}: nodules flagged {(s[yt == 0] > threshold).mean():.3f}"
            f" (n={int((yt == 0).sum())}), vessel clicks flagged {(s[yt == 1] > threshold).mean():.2f}"
            f" (n={int(yt.sum())})"
        )
    mean, scale, w, b = model = fit(x, y)
    threshold = float(np.quantile(score(x[y == 0], model), 0.99))
    s = score(x, model)
    print(
        f"all: nodules flagged {(s[y == 0] > threshold).mean():.3f}, vessels {(s[y == 1] > threshold).mean():.2f}"
    )
    print("VesselModel(")
    for label, v in (("mean", mean), ("scale", scale), ("weights", w)):
        print(f"    {label}=({', '.join(f'{t:.4g}' for t in v)}),")
    print(f"    bias={b:.4g},\n    threshold={threshold:.4g},\n)")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
