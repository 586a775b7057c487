"""Why some lung-vessel clicks escape the vessel check: how much of their outline lies in the
lung field (core/scope/vessel.py) and what continuation it finds.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/vessel_misses.py

The clicks are those of negative_clicks.py (seed 2026) that got no not-a-nodule flag, with two
flagged ones beside them (0001 208 255 109, 0006 192 227 66: the hilar vessel).
"""

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.scope.validation import chest_lungs
from NoduleMalignancyLib.files.samples import sample_path

CLICKS = {  # (i, j, k) on the CT's voxel grid
    "LIDC-IDRI-0001": [
        (201, 270, 92),
        (181, 249, 81),
        (332, 224, 88),
        (144, 297, 97),
        (208, 255, 109),
    ],
    "LIDC-IDRI-0006": [(186, 268, 78), (204, 191, 84), (285, 290, 66), (192, 227, 66)],
}


def main() -> None:
    torch.set_num_threads(2)
    ens = Ensemble.load(device="cpu")
    for name, clicks in CLICKS.items():
        img = sitk.ReadImage(str(sample_path(name)))
        a, g = sitk.GetArrayFromImage(img), ImageGeometry.from_sitk(img)
        lungs = chest_lungs(a, g)
        for ijk in clicks:
            r = analyze_point(a, g, g.index_to_lps(np.array(ijk, float)), ens, map_to_ct=False)
            voxels = np.argwhere(r.segmentation_mask_voi)[:, ::-1].astype(float)
            kji = np.rint(g.lps_to_index(r.voi_geometry.index_to_lps(voxels)))[:, ::-1]
            cells = np.minimum(
                kji.astype(int) // lungs.stride_kji, np.subtract(lungs.field_kji.shape, 1)
            )
            in_field = lungs.field_kji[tuple(cells.T)].mean()
            f = r.scope_figures
            print(
                f"{name} {ijk}: diameter {r.diameter_mm:.1f} mm, score {f['vessel_score']:.2f}, "
                f"outline in the lung field {in_field:.2f}, continuation {f['continuation']:.2f} "
                f"reaching {f['continuation_mm']:.1f} mm"
            )


if __name__ == "__main__":
    main()
