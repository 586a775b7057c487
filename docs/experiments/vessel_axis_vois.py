"""The axis figure (core/scope/vessel.axis_figures) on the LIDC VOIs, juxtapleural nodules included.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/vessel_axis_vois.py [N]

In the product the figure is computed on full CTs only (a crop has no lung mask), and the
inserted nodules that set its threshold are intrapulmonary by construction (vessel_clicks.py).
This measures what it would say on LIDC nodules in their own crops, those against the pleura or
the mediastinum included, two ways: on all 794 with the readers' consensus mask as the outline
(no network; a tighter outline than the network's, so its ends lie closer to the nodule's
edge), and, with ``N``, on a random N (seed 29) with the product's outline (``analyze_point`` at
the listed centre, one torch thread). Printed: the percentiles, how many lie above
``ScopeConfig.max_axis_ends_hu``, and those nodules with the share of dense tissue (> -300 HU)
outside the mask in their crop (docs/experiments/README.md, "Scope", sixteenth session).
"""

import sys

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.nodule.recentre import nodule_centre
from NoduleMalignancyLib.core.scope.validation import RefusedError, ScopeConfig
from NoduleMalignancyLib.core.scope.vessel import axis_figures
from NoduleMalignancyLib.training.dataset import load_records


def report(label: str, rows: list[tuple]) -> None:
    limit = ScopeConfig().max_axis_ends_hu
    values = np.array([r[1] for r in rows])
    above = sorted((r for r in rows if r[1] > limit), key=lambda r: -r[1])
    q = np.percentile(values, [50, 90, 95, 99]).round(0).tolist()
    print(f"{label}: {len(values)} VOIs; axis_ends_hu p50 p90 p95 p99 {q}")
    print(f"above {limit:g} HU: {len(above)} ({100 * len(above) / len(values):.1f} %)")
    for row in above:
        print("   ", *row)


def main(network: int | None) -> None:
    records = load_records()
    consensus, product = [], []
    picked = set()
    if network:
        picked = set(np.random.default_rng(29).choice(len(records), network, replace=False))
        torch.set_num_threads(1)
        ensemble = Ensemble.load(device="cpu")
    for n, record in enumerate(records):
        image = sitk.ReadImage(str(record.image_path))
        a, g = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
        mask_path = str(record.image_path).replace("/image/", "/nodule_mask/")
        mask = sitk.GetArrayFromImage(sitk.ReadImage(mask_path)) > 0
        if not mask.any():
            continue
        dense = round(float(((a > -300) & ~mask).mean()), 2)
        size = round(record.diameter_mean_mm, 1)
        centre = np.rint(np.argwhere(mask).mean(0))
        ends = axis_figures(a, g, mask, g, centre)["axis_ends_hu"]
        consensus.append((record.name, round(ends), size, dense))
        if n in picked:
            try:
                r = analyze_point(
                    a.astype(np.float32), g, record.center_lps, ensemble, map_to_ct=False
                )
            except (RefusedError, ValueError):
                continue
            outline, voi = r.segmentation_mask_voi, r.voi_geometry
            centre = g.lps_to_index(nodule_centre(outline, voi, g))[::-1]
            ends = axis_figures(a, g, outline, voi, centre)["axis_ends_hu"]
            product.append((record.name, round(ends), round(r.diameter_mm, 1), dense))
    report("consensus masks", consensus)
    if product:
        report("the product's outlines", product)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
