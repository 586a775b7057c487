"""Variants of the axis figure of core/scope/vessel.axis_figures on outline_dump.py's outlines.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/vessel_axis_variants.py outlines.pkl

The axis (the Hessian's least-curvature direction ``h`` as shipped, or the outline's own major
axis ``p``), the smoothing (1 or 1.5 mm) and where past the ends (1-3, 2-4, 1-5 mm); for each,
the lower end's value (``_min``, as shipped) with its threshold at the inserted nodules' 99th
percentile: vessel clicks flagged by it alone and with the vessel score, nodules flagged, of the
7 negative clicks the vessel score left assessed how many it catches, and leaving one CT out
(docs/experiments/README.md, "Scope", sixteenth session).
"""

import pickle
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
import vessel_clicks

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.nodule.recentre import nodule_centre
from NoduleMalignancyLib.core.scope.curvature import HU_RANGE, tube_axis
from NoduleMalignancyLib.files.samples import sample_path
from NoduleMalignancyLib.training.dataset import load_records

BEYOND = {"13": (1, 2, 3), "24": (2, 3, 4), "15": (1, 2, 3, 4, 5)}


def variants(rows) -> list[dict]:
    hosts = {}
    for name in vessel_clicks.CTS:
        img = sitk.ReadImage(str(sample_path(name)))
        hosts[name] = (img, sitk.GetArrayFromImage(img), ImageGeometry.from_sitk(img))
    records = {r.name: r for r in load_records()}
    out = []
    for row in rows:
        if "mask" not in row or row["figures"].get("lung_side") != "inside":
            continue
        img, a, g = hosts[row["ct"]]
        if row["set"] == "inserted nodule":
            a = vessel_clicks.insert(img, a, records[row["label"]], row["point"])
        size = np.prod(row["mask_shape"])
        mask = np.unpackbits(row["mask"])[:size].reshape(row["mask_shape"]).astype(bool)
        voi = ImageGeometry.from_dict(row["voi"])
        sp = np.asarray(g.spacing, float)[::-1]
        c = g.lps_to_index(nodule_centre(mask, voi, g))[::-1]
        ijk = np.argwhere(mask)[:, ::-1].astype(float)
        off = (g.lps_to_index(voi.index_to_lps(ijk))[:, ::-1] - c) * sp
        axes = {"h": tube_axis(a, sp, c)[0], "p": np.linalg.eigh(np.cov(off.T))[1][:, 2]}
        ci = np.rint(c).astype(int)
        half = np.ceil(25 / sp).astype(int)
        lo, hi = np.maximum(ci - half, 0), np.minimum(ci + half + 1, a.shape)
        box = np.clip(a[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], *HU_RANGE).astype(np.float32)
        f = {k: row[k] for k in ("set", "ct", "label", "codes", "tier")}
        for s in (1.0, 1.5):
            smooth = ndimage.gaussian_filter(box, s / sp, mode="nearest", truncate=3.0)
            for an, axis in axes.items():
                along = off @ axis
                for dn, ds in BEYOND.items():
                    ends = []
                    for side, extent in ((1, along.max()), (-1, -along.min())):
                        pts = c + side * (extent + np.asarray(ds, float))[:, None] * axis / sp
                        hu = ndimage.map_coordinates(smooth, (pts - lo).T, order=1, mode="nearest")
                        ends.append(hu.max())
                    f[f"{an}{s}_{dn}_min"] = min(ends)
        out.append(f)
    return out


def main(path: str) -> None:
    with open(path, "rb") as f:
        table = variants(pickle.load(f))
    nod = [f for f in table if f["set"] == "inserted nodule"]
    ves = [f for f in table if f["set"] == "vessel click"]
    neg = [f for f in table if f["set"] == "negative click" and f["tier"] == "assessed"]
    for k in [k for k in table[0] if k.endswith("_min")]:
        t = np.percentile([f[k] for f in nod], 99)
        either = np.mean([f[k] > t or "vessel_at_point" in f["codes"] for f in ves])
        loo = []
        for ct in vessel_clicks.CTS:
            tt = np.percentile([f[k] for f in nod if f["ct"] != ct], 99)
            n = np.mean([f[k] > tt for f in nod if f["ct"] == ct])
            v = np.mean(
                [f[k] > tt or "vessel_at_point" in f["codes"] for f in ves if f["ct"] == ct]
            )
            loo.append(f"{ct}: nodules {n:.3f} vessels {v:.2f}")
        print(
            f"{k:14s} t={t:6.0f} vessels {np.mean([f[k] > t for f in ves]):.2f}, with the score "
            f"{either:.2f}; nodules {np.mean([f[k] > t for f in nod]):.3f}; negative clicks "
            f"caught {sum(f[k] > t for f in neg)} of {len(neg)}; leaving one CT out: {'; '.join(loo)}"
        )


if __name__ == "__main__":
    main(sys.argv[1])
