"""The reader nodules of the two development CTs, clicked at their listed centres: their tiers.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/reader_nodule_tiers.py

Issue 29's target: every reader nodule assessed (core/scope/assessment.py), while the constructed
clicks off a nodule (negative_clicks.py) are refused or not assessed.
"""

import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path

torch.set_num_threads(1)
ensemble = Ensemble.load(device="cpu")
for name in ("LIDC-IDRI-0001", "LIDC-IDRI-0006"):
    image = sitk.ReadImage(str(sample_path(name)))
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    for label, point in nodule_points_lps(name):
        r = analyze_point(array, geometry, point, ensemble, map_to_ct=False)
        codes = [w.code for w in r.warnings]
        print(
            label,
            r.assessment.tier,
            codes,
            f"{r.diameter_mm:.1f} mm",
            f"{100 * r.malignancy_probability:.1f} %",
            r.values()["lung_rads"],
            flush=True,
        )
