"""The issue's table of out-of-scope inputs (issue: trust on every click), rerun on the shipped
ensemble: what each input gets today.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/scope_table.py

Built from the full LIDC-IDRI-0001 CT and its 33 mm nodule (the inputs the issue describes; the
tests in Testing/test_validation.py check the same outcomes), and LIDC-IDRI-0006 for the small
nodule: a liver point on the CT resampled to 3 mm voxels (no thorax-abdomen CT is in the data),
a 55 mm soft-tissue ball around the nodule, the CT resampled to 5 mm slices, uint8 noise, a
volume of -2048 HU padding, one axial slice, and a 6.6 mm reader nodule on its full CT.
"""

import numpy as np
import SimpleITK as sitk
import torch

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.scope.validation import RefusedError
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path


def resampled(image: sitk.Image, spacing) -> sitk.Image:
    size = [
        int(n * s / t) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)
    ]
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
        image.GetDirection(), -2048.0,
    )  # fmt: skip


def outcome(array: np.ndarray, geometry: ImageGeometry, point, ensemble: Ensemble) -> str:
    try:
        r = analyze_point(np.asarray(array), geometry, point, ensemble, map_to_ct=False)
    except RefusedError as e:
        return f"refused `{e.code}`: {e}"
    codes = ", ".join(f"`{w.code}`" for w in r.warnings) or "no warning"
    return (
        f"malignancy {100 * r.malignancy_probability:.1f} %, diameter {r.diameter_mm:.1f} mm; "
        f"{codes}"
    )


def main() -> None:
    torch.set_num_threads(2)
    ens = Ensemble.load(device="cpu")
    image = sitk.ReadImage(str(sample_path("LIDC-IDRI-0001")))
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    nodule = np.array(nodule_points_lps("LIDC-IDRI-0001")[0][1])
    rows = []
    coarse = resampled(image, (3.0, 3.0, 3.0))
    liver = geometry.index_to_lps(np.array([180.0, 230.0, 39.0]))  # (i, j, k), negative_clicks
    rows.append(
        ("a liver point, CT at 3 mm voxels", outcome(
            sitk.GetArrayFromImage(coarse), ImageGeometry.from_sitk(coarse), liver, ens
        ))
    )  # fmt: skip
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in array.shape), indexing="ij"), -1)
    centre = np.asarray(geometry.lps_to_index(nodule))[::-1]
    distance = np.linalg.norm((grid - centre) * np.asarray(image.GetSpacing())[::-1], axis=-1)
    mass = array.copy()
    mass[distance < 27.5] = 40
    rows.append(("a 55 mm soft-tissue ball in the lung", outcome(mass, geometry, nodule, ens)))
    thick = resampled(image, (*image.GetSpacing()[:2], 5.0))
    rows.append(
        ("the CT at 5 mm slices, the nodule", outcome(
            sitk.GetArrayFromImage(thick), ImageGeometry.from_sitk(thick), nodule, ens
        ))
    )  # fmt: skip
    noise = np.random.default_rng(0).integers(0, 256, array.shape, dtype=np.uint8)
    rows.append(("uint8 random noise", outcome(noise, geometry, nodule, ens)))
    padding = np.full(array.shape, -2048, dtype=np.int16)
    rows.append(("all -2048 HU padding", outcome(padding, geometry, nodule, ens)))
    rows.append(("one axial slice (2D)", outcome(array[60], geometry, nodule, ens)))
    small = sitk.ReadImage(str(sample_path("LIDC-IDRI-0006")))
    name, point = nodule_points_lps("LIDC-IDRI-0006")[1]
    rows.append(
        (f"the 6.6 mm reader nodule {name} on its full CT", outcome(
            sitk.GetArrayFromImage(small), ImageGeometry.from_sitk(small), np.array(point), ens
        ))
    )  # fmt: skip
    print(f"ensemble {ens.version}\n\n| input | outcome |\n|---|---|")
    for what, result in rows:
        print(f"| {what} | {result} |")


if __name__ == "__main__":
    main()
