"""Does the clicked structure go on past the outline's ends along its own axis? (issue 29 item 1)

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/vessel_axis.py outlines.pkl

``outlines.pkl``: outline_dump.py's clicks with their outlines (negative clicks, reader nodules,
vessel clicks, inserted LIDC nodules). For every outline on a point inside the lung, the axis
figures of core/scope/vessel.axis_figures (the CT's least-curvature direction at the outline's centre;
the highest smoothed HU 1-3 mm past each end of the outline along it), computed here on the
clicked image (an inserted nodule's rebuilt with vessel_clicks.insert). Printed: their
percentiles per set; for the rule "``axis_ends_hu`` above a threshold" (both ends go on) with
the threshold at the inserted nodules' 99th percentile, in sample and leaving one CT out, and
over a range of thresholds: the vessel clicks and nodules it flags, alone and with the shipped
vessel score; with the shipped threshold (``ScopeConfig.max_axis_ends_hu``) per CT, the sets'
tiers and the negative clicks still answered and the reader nodules (docs/experiments/README.md,
"Scope"). The threshold is chosen on the inserted nodules and the vessel clicks only.
"""

import pickle
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
import vessel_clicks

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.nodule.recentre import nodule_centre
from NoduleMalignancyLib.core.scope.assessment import NOT_ASSESSED_CODES
from NoduleMalignancyLib.core.scope.validation import ScopeConfig
from NoduleMalignancyLib.core.scope.vessel import axis_figures
from NoduleMalignancyLib.files.samples import sample_path
from NoduleMalignancyLib.training.dataset import load_records

SETS = ("inserted nodule", "vessel click", "negative click", "reader nodule")


def figures(rows) -> None:
    """Adds ``axis`` (the axis figures) to every row with an outline on a point inside the lung."""
    hosts, records = {}, None
    for name in vessel_clicks.CTS:
        img = sitk.ReadImage(str(sample_path(name)))
        hosts[name] = (img, sitk.GetArrayFromImage(img), ImageGeometry.from_sitk(img))
    for row in rows:
        if "mask" not in row or row["figures"].get("lung_side") != "inside":
            continue
        img, a, g = hosts[row["ct"]]
        if row["set"] == "inserted nodule":
            if records is None:
                records = {r.name: r for r in load_records()}
            a = vessel_clicks.insert(img, a, records[row["label"]], row["point"])
        mask = np.unpackbits(row["mask"])[: np.prod(row["mask_shape"])].reshape(row["mask_shape"])
        voi = ImageGeometry.from_dict(row["voi"])
        centre = g.lps_to_index(nodule_centre(mask, voi, g))[::-1]
        row["axis"] = axis_figures(a, g, mask.astype(bool), voi, centre)


def not_assessed(row, flagged: bool) -> bool:
    return row["tier"] == "refused" or flagged or any(c in NOT_ASSESSED_CODES for c in row["codes"])


def main(path: str) -> None:
    with open(path, "rb") as f:
        rows = pickle.load(f)
    figures(rows)
    by = {s: [r for r in rows if r["set"] == s] for s in SETS}
    print("figure: set n_with_figures p1 p5 p50 p95 p99 max")
    for name in ("axis_ends_hu", "axis_end_hu"):
        for s in SETS:
            v = np.array([r["axis"][name] for r in by[s] if "axis" in r])
            if len(v):
                q = np.percentile(v, [1, 5, 50, 95, 99, 100]).round(0)
                print(f"{name}: {s} {len(v)} {q.tolist()}")
    nod = [r for r in by["inserted nodule"] if "axis" in r]
    ves = [r for r in by["vessel click"] if "axis" in r]
    thresholds = {"all": np.percentile([r["axis"]["axis_ends_hu"] for r in nod], 99)}
    for ct in vessel_clicks.CTS:
        train = [r["axis"]["axis_ends_hu"] for r in nod if r["ct"] != ct]
        thresholds[f"fit without {ct}"] = np.percentile(train, 99)
    for label, t in thresholds.items():
        test = [r for r in nod + ves if label == "all" or r["ct"] in label.split()[-1]]
        n = [r for r in test if r["set"] == "inserted nodule"]
        v = [r for r in test if r["set"] == "vessel click"]
        new = lambda r, t=t: r["axis"]["axis_ends_hu"] > t  # noqa: E731
        old = lambda r: "vessel_at_point" in r["codes"]  # noqa: E731
        print(
            f"{label}: threshold {t:.0f} HU; vessel clicks flagged: new {np.mean([new(r) for r in v]):.2f}, "
            f"shipped {np.mean([old(r) for r in v]):.2f}, either {np.mean([new(r) or old(r) for r in v]):.2f} "
            f"(n={len(v)}); nodules flagged: new {np.mean([new(r) for r in n]):.3f}, shipped "
            f"{np.mean([old(r) for r in n]):.3f}, either {np.mean([new(r) or old(r) for r in n]):.3f} (n={len(n)})"
        )
    print(
        "\nthreshold: nodules flagged by the axis, by the axis or the shipped score; vessel clicks"
    )
    for t in (-600, -550, -500, -450, -435, -400, -376, -350, -307, -300, -250):
        new = [r["axis"]["axis_ends_hu"] > t for r in nod]
        either = [a or "vessel_at_point" in r["codes"] for a, r in zip(new, nod, strict=True)]
        v = [r["axis"]["axis_ends_hu"] > t or "vessel_at_point" in r["codes"] for r in ves]
        print(
            f"{t}: nodules {np.mean(new):.3f} / {np.mean(either):.3f}, vessel clicks {np.mean(v):.2f}"
        )
    t = ScopeConfig().max_axis_ends_hu
    print(f"\nWith the shipped threshold {t:.0f} HU (ScopeConfig.max_axis_ends_hu), per CT:")
    for ct in vessel_clicks.CTS:
        n = [r for r in nod if r["ct"] == ct]
        v = [r for r in ves if r["ct"] == ct]
        print(
            f"{ct}: nodules flagged by the axis {sum(r['axis']['axis_ends_hu'] > t for r in n)} "
            f"of {len(n)}; vessel clicks flagged {sum(r['axis']['axis_ends_hu'] > t or 'vessel_at_point' in r['codes'] for r in v)} "
            f"of {len(v)} (shipped score alone {sum('vessel_at_point' in r['codes'] for r in v)})"
        )
    for s in SETS:
        rs = by[s]
        before = sum(not_assessed(r, False) for r in rs)
        after = sum(not_assessed(r, "axis" in r and r["axis"]["axis_ends_hu"] > t) for r in rs)
        print(f"{s}: {len(rs)} clicks, refused or not assessed {before} -> {after}")
    print("\nnegative clicks still answered, and the reader nodules:")
    for r in by["negative click"] + by["reader nodule"]:
        flagged = "axis" in r and r["axis"]["axis_ends_hu"] > t
        if r["set"] == "reader nodule" or not not_assessed(r, flagged):
            ax = {k: round(v, 1) for k, v in r.get("axis", {}).items()}
            print(r["ct"], r["label"], r["tier"], r["codes"], round(r.get("diameter_mm", 0), 1), ax)


if __name__ == "__main__":
    main(sys.argv[1])
