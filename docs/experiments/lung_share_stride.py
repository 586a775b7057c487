"""The lung share around the segmentation (`outside_lung`), on every other voxel against the
full grid, on the largest LIDC VOIs (where core/scope/validation._lung_share strides).

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/lung_share_stride.py FIRST LAST

VOIs ranked FIRST..LAST by reader diameter (largest first), each segmented by the shipped
ensemble at its listed centre; printed: how many were strided, the largest and 95th-percentile
absolute difference, and the smallest shares (the warning fires below 0.15). The ninth session
ran 0 100 and 100 200 (docs/benchmarks.md).
"""

import sys

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import _result, sample_and_run
from NoduleMalignancyLib.core.scope import validation
from NoduleMalignancyLib.training.dataset import load_records


def main(first: int, last: int) -> None:
    torch.set_num_threads(1)
    ens = Ensemble.load(device="cpu")
    scope = validation.ScopeConfig()
    records = sorted(load_records(), key=lambda r: -r.diameter_mean_mm)[first:last]
    rows = []
    for r in records:
        img = sitk.ReadImage(str(r.image_path))
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        try:
            sample, out, _ = sample_and_run(a, ImageGeometry.from_sitk(img), r.center_lps, ens)
        except ValueError:  # a listed centre outside its own crop (README, "Scope")
            continue
        result = _result(sample, out, ens, r.center_lps, {"voi_sampling": 0, "network": 0})
        mask = result.segmentation_mask_voi.astype(bool)
        if not mask.any():
            continue
        args = (sample.hu, mask, sample.valid, ens.manifest.voi.spacing_zyx)
        args += (scope.lung_shell_mm, scope.lung_hu)
        full = validation._lung_share(*args, strided_above=10**9)
        rows.append((r.name, r.diameter_mean_mm, full, validation._lung_share(*args)))
    diff = np.abs([s - f for _, _, f, s in rows])
    print(
        f"{len(rows)} VOIs, {rows[-1][1]:.1f}-{rows[0][1]:.1f} mm; {int((diff > 0).sum())} differ"
    )
    print(
        f"|strided - full|: max {np.nanmax(diff):.3f}, 95th percentile {np.nanpercentile(diff, 95):.3f}"
    )
    for name, d, f, s in sorted(rows, key=lambda x: x[2])[:3]:
        print(f"  smallest: {name} {d:.1f} mm, full {f:.3f}, strided {s:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
