"""Does the CT's local curvature tell a nodule from a vessel at the click? (issue 29, the
negative clicks the outline's figures leave assessed; README "Scope", fifteenth session)

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/hessian_blobness.py out.csv

A bright blob curves down in all three directions, a bright tube in two (not along its axis), a
plate in one. The Hessian of the CT smoothed with a Gaussian of sigma (scale-normalised:
sigma^2 times the second derivatives) has eigenvalues l1 <= l2 <= l3; at a blob's centre l3 is
as negative as l1, on a tube l3 is about 0. Per click: for sigma in SIGMAS_MM, the voxels within
``near_mm`` of the click, the largest ``-sigma^2 l3`` (the blob strength) and there the ratio
l3 / l1. No network: the point alone, on the same clicks as vessel_clicks.py (vessel clicks and
inserted nodules, seed 7) and negative_clicks.py (seed 2026).
"""

import csv
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
import negative_clicks
import vessel_clicks

from NoduleMalignancyLib.core.geometry import ImageGeometry

SIGMAS_MM = (1.0, 1.5, 2.0, 3.0, 4.0, 5.5)


def blob_figures(
    a: np.ndarray, spacing_zyx, index_zyx, near_mm: float = 3.0, half_mm: float = 24.0
) -> dict:
    """Blob strength and l3/l1 at the best voxel near the click, the best scale."""
    spacing = np.asarray(spacing_zyx, float)
    c = np.rint(index_zyx).astype(int)
    half = np.ceil(half_mm / spacing).astype(int)
    lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, a.shape)
    box = np.clip(a[tuple(slice(x, y) for x, y in zip(lo, hi, strict=True))], -1000, 200).astype(
        np.float32
    )
    centre = c - lo
    n = np.ceil(near_mm / spacing).astype(int)
    near = tuple(slice(max(x - m, 0), x + m + 1) for x, m in zip(centre, n, strict=True))
    best = {"blob_strength": 0.0, "blob_ratio": 0.0, "blob_sigma_mm": 0.0, "tube_strength": 0.0}
    for sigma in SIGMAS_MM:
        s = sigma / spacing
        h = np.empty(box[near].shape + (3, 3), np.float32)
        for i in range(3):
            for j in range(i, 3):
                order = [0, 0, 0]
                order[i] += 1
                order[j] += 1
                d = ndimage.gaussian_filter(box, s, order=order, mode="nearest")[near]
                h[..., i, j] = h[..., j, i] = d * sigma**2 / (spacing[i] * spacing[j])
        lam = np.linalg.eigvalsh(h)  # ascending: l1 <= l2 <= l3
        strength = -lam[..., 2]
        tube = -lam[..., 1]
        k = np.unravel_index(np.argmax(strength), strength.shape)
        if strength[k] > best["blob_strength"]:
            best = {
                "blob_strength": float(strength[k]),
                "blob_ratio": float(lam[k][2] / lam[k][0]) if lam[k][0] < 0 else 0.0,
                "blob_sigma_mm": sigma,
                "tube_strength": best["tube_strength"],
            }
        best["tube_strength"] = max(best["tube_strength"], float(tube.max()))
    return best


def main(path: str) -> None:
    rows = []
    hosts, vrows = vessel_clicks.clicks()
    for row in vrows:
        img, a, g, _, _ = hosts[row["ct"]]
        image = vessel_clicks.clicked_image(hosts, row)
        ijk = g.lps_to_index(np.asarray(row["point"]))
        f = blob_figures(image, g.spacing[::-1], ijk[::-1])
        rows.append({"set": "vessel_clicks", "ct": row["ct"], "kind": row["kind"]} | f)
        rows[-1]["nodule"] = row["name"]
        print(rows[-1], flush=True)
    rng = np.random.default_rng(2026)
    for name in vessel_clicks.CTS:
        _, a, g, _, _ = hosts[name]
        g = ImageGeometry.from_sitk(hosts[name][0])
        for _source, kind, (i, j, k) in negative_clicks.clicks(name, a, g, rng):
            f = blob_figures(a, g.spacing[::-1], (k, j, i))
            rows.append({"set": "negative_clicks", "ct": name, "kind": kind} | f)
            rows[-1]["nodule"] = f"{i} {j} {k}"
            print(rows[-1], flush=True)
        for label, p in negative_clicks.nodule_points_lps(name):
            f = blob_figures(a, g.spacing[::-1], g.lps_to_index(np.asarray(p))[::-1])
            rows.append({"set": "reader_nodules", "ct": name, "kind": "reader nodule"} | f)
            rows[-1]["nodule"] = str(label)
            print(rows[-1], flush=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1])
