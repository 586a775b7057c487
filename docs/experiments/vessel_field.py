"""Where and how should the vessel check look for a continuation (core/scope/lung_mask.lung_field,
the opening of core/scope/vessel.continuation_figures)?

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/vessel_field.py field.csv

The clicks of vessel_clicks.py (same seed and order: 80 lung-vessel clicks, 409 inserted LIDC
nodules) and the five reader nodules of the full CTs, each analyzed once; the continuation is
then recomputed for each variant: (lung field closing in mm, opening as a fraction of the
outline's inscribed radius). Closing 0 is the per-slice holes of the lung mask alone (the
seventh session's field). Per variant the vessel model is refitted as in vessel_clicks.py;
printed: leave-one-CT-out figures, in-sample figures, the reader nodules' scores against the
threshold, and the constants.
"""

import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vessel_clicks import CTS, clicked_image, clicks, fit, score

from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.scope.lung_mask import lung_field
from NoduleMalignancyLib.core.scope.validation import RefusedError, ScopeConfig
from NoduleMalignancyLib.core.scope.vessel import FIGURES, _inputs, continuation_figures
from NoduleMalignancyLib.files.samples import nodule_points_lps

# (closing mm, opening fraction). The eighth session's first run: closings 0, 6, 10 and 14 mm at
# the opening 0.7 (docs/experiments/README.md, "Scope").
VARIANTS = ((0.0, 0.7), (10.0, 0.7), (10.0, 0.55), (10.0, 0.4), (14.0, 0.55))
CLOSINGS_MM = sorted({c for c, _ in VARIANTS})


def _tag(variant) -> str:
    return f"{variant[0]:g}mm,{variant[1]:g}"


def with_field(lungs, closing_mm: float):
    """A copy of the lung mask whose lung field is the variant's."""
    copy = dataclasses.replace(lungs)
    copy.__dict__["distance_kji"] = lungs.distance_kji
    copy.__dict__["field_kji"] = lung_field(lungs, closing_mm)
    return copy


def main(path: str) -> None:
    torch.set_num_threads(2)
    ens = Ensemble.load(device="cpu")
    scope = ScopeConfig()
    hosts, rows = clicks()
    for name in CTS:
        for _, p in nodule_points_lps(name):
            rows.append({"ct": name, "kind": "reader nodule", "name": "", "point": p})
            rows[-1]["image"] = hosts[name][1]
    fields = {name: {c: with_field(hosts[name][3], c) for c in CLOSINGS_MM} for name in CTS}
    table = []
    for n, row in enumerate(rows):
        g = hosts[row["ct"]][2]
        image = clicked_image(hosts, row)
        out = {"ct": row["ct"], "kind": row["kind"], "nodule": row["name"]}
        try:
            r = analyze_point(image, g, row["point"], ens, map_to_ct=False)
        except RefusedError as e:
            out["warnings"] = f"REFUSED {e.code}"
            table.append(out)
            continue
        f = r.scope_figures
        out |= {"warnings": ";".join(w.code for w in r.warnings), "diameter_mm": r.diameter_mm}
        if "tube_ratio" in f:
            out |= {k: f[k] for k in FIGURES if k not in ("diameter_mm",)}
            for variant in VARIANTS:
                cont = continuation_figures(
                    image,
                    g,
                    r.segmentation_mask_voi,
                    r.voi_geometry,
                    fields[row["ct"]][variant[0]],
                    f["inscribed_radius_mm"],
                    scope.vessel_dense_hu,
                    variant[1],
                    scope.vessel_margin_mm,
                )
                out |= {f"{k}@{_tag(variant)}": v for k, v in cont.items()}
        table.append(out)
        if n % 25 == 0:
            print(n, " | ".join(str(v) for v in out.values()), flush=True)
    keys = sorted({k for row in table for k in row}, key=lambda k: (k not in table[0], k))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(table)
    report(table)


def report(table) -> None:
    rows = [r for r in table if r.get("tube_ratio", "") != ""]
    kind = np.array([r["kind"] for r in rows])
    ct = np.array([r["ct"] for r in rows])
    for variant in VARIANTS:
        tag = _tag(variant)

        def figures(r, tag=tag):
            f = {k: float(r[k]) for k in FIGURES if k in r}
            return f | {k: float(r[f"{k}@{tag}"]) for k in ("continuation", "continuation_mm")}

        x = np.array([_inputs(figures(r)) for r in rows])
        y = (kind == "vessel click").astype(float)
        train_rows = kind != "reader nodule"
        print(f"\n== lung field closing {variant[0]:g} mm, opening {variant[1]:g}")
        for test in CTS:
            train = train_rows & (ct != test)
            model = fit(x[train], y[train])
            threshold = np.quantile(score(x[train & (y == 0)], model), 0.99)
            held = train_rows & (ct == test)
            s, yt = score(x[held], model), y[held]
            print(
                f"fit on the other CT, test on {test}: nodules flagged "
                f"{(s[yt == 0] > threshold).mean():.3f} (n={int((yt == 0).sum())}), vessel "
                f"clicks flagged {(s[yt == 1] > threshold).mean():.2f} (n={int(yt.sum())})"
            )
        mean, scale, w, b = model = fit(x[train_rows], y[train_rows])
        threshold = float(np.quantile(score(x[train_rows & (y == 0)], model), 0.99))
        s = score(x, model)
        nod, ves = train_rows & (y == 0), y == 1
        print(
            f"all: nodules flagged {(s[nod] > threshold).mean():.3f}, vessels "
            f"{(s[ves] > threshold).mean():.2f}; reader nodules' scores "
            f"{', '.join(f'{v:.2f}' for v in s[kind == 'reader nodule'])} (threshold "
            f"{threshold:.2f})"
        )
        print("VesselModel(")
        for label, v in (("mean", mean), ("scale", scale), ("weights", w)):
            print(f"    {label}=({', '.join(f'{t:.4g}' for t in v)}),")
        print(f"    bias={b:.4g},\n    threshold={threshold:.4g},\n)")


if __name__ == "__main__":
    main(sys.argv[1])
