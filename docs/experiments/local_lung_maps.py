"""The lung side and vessel checks on boxes vs on the whole CT's maps: the same decisions?

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/local_lung_maps.py [N]
    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/local_lung_maps.py --warm

A click computes the lung mask's distance map and lung field only in the boxes that decide it
(core/scope/lung_mask.py, issue 27 item 7). On the two full CTs this calls ``lung_side`` and
``vessel_figures`` with a ``LungMask`` whose whole maps are built (what every click read before)
and with a fresh one (boxes), side by side: N random lung voxels, N voxels within 6 mm outside
the lung and N anywhere per CT, each with a random diameter of 3-40 mm; at the points inside the
lung (up to 400) a synthetic outline (a ball or a tube along a random axis) for the vessel
figures; and 60 random boxes of the lung field per CT. Prints the counts of differences.
``--warm``: a repeated click on the bench nodule (its lung side and vessel figures), the whole
maps' slices against the boxes kept from the first click, interleaved, 40 times each.
"""

import os
import sys
import time

import numpy as np
import SimpleITK as sitk

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.scope.lung_mask import LungMask
from NoduleMalignancyLib.core.scope.validation import chest_lungs, lung_side, vessel_figures
from NoduleMalignancyLib.files.samples import sample_path

VOI_MM, VOI_N = 0.6, 56


def outline(rng, radius_mm: float) -> np.ndarray:
    """A ball or a tube (30 mm long) on a VOI grid centred on the point."""
    axes = [(np.arange(VOI_N) - (VOI_N - 1) / 2) * VOI_MM] * 3
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    r = min(radius_mm, 16.0)
    if rng.random() < 0.5:
        return np.linalg.norm(points, axis=-1) <= r
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    along = points @ axis
    across = np.linalg.norm(points - along[..., None] * axis, axis=-1)
    return (across <= r / 3) & (np.abs(along) <= 15.0)


def main(n: int) -> dict:
    rng = np.random.default_rng(0)
    counts = dict(points=0, side_differs=0, figures_differ=0, outlines=0, vessel_differs=0)
    counts |= dict(field_boxes=0, field_differs=0)
    for name in ("LIDC-IDRI-0001", "LIDC-IDRI-0006"):
        image = sitk.ReadImage(str(sample_path(name)))
        array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
        mask = chest_lungs(array, geometry)
        whole = LungMask(mask.mask_kji, mask.stride_kji, mask.spacing_kji)
        distance, field = whole.distance_kji, whole.field_kji
        shape = np.array(mask.mask_kji.shape)
        for _ in range(60):
            lo = rng.integers(0, shape - 5)
            hi = np.minimum(lo + rng.integers(5, 60, size=3), shape)
            local = LungMask(mask.mask_kji, mask.stride_kji, mask.spacing_kji)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            counts["field_boxes"] += 1
            counts["field_differs"] += not np.array_equal(local.field_box(lo, hi), field[box])
        near = np.argwhere(mask.mask_kji ^ (distance <= 6.0))
        sets = (np.argwhere(mask.mask_kji), near, None)
        stride = np.asarray(mask.stride_kji)
        for cells in sets:
            picked = (
                rng.integers(0, shape, size=(n, 3))
                if cells is None
                else cells[rng.integers(len(cells), size=n)]
            )
            for cell in picked:
                point = np.asarray(geometry.index_to_lps((cell * stride + (stride - 1) / 2)[::-1]))
                diameter = float(rng.uniform(3, 40))
                local = LungMask(mask.mask_kji, mask.stride_kji, mask.spacing_kji)
                new = lung_side(array, geometry, point, diameter, lungs=local)
                old = lung_side(array, geometry, point, diameter, lungs=whole)
                counts["points"] += 1
                counts["side_differs"] += new[0] != old[0]
                counts["figures_differ"] += new[1] != old[1]
                if old[0] != "inside" or counts["outlines"] >= 400:
                    continue
                voi = ImageGeometry(
                    tuple(float(v) for v in point - VOI_MM * (VOI_N - 1) / 2),
                    (VOI_MM,) * 3,
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                    (VOI_N,) * 3,
                )
                piece = outline(rng, diameter / 2)
                counts["outlines"] += 1
                counts["vessel_differs"] += vessel_figures(
                    array, geometry, piece, voi, diameter, lungs=local
                ) != vessel_figures(array, geometry, piece, voi, diameter, lungs=whole)
    print(counts)
    return counts


def warm(repeats: int = 40) -> None:
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.nodule.analysis import analyze_point
    from NoduleMalignancyLib.files.samples import nodule_points_lps

    image = sitk.ReadImage(str(sample_path("LIDC-IDRI-0001")))
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    point = np.array(nodule_points_lps("LIDC-IDRI-0001")[0][1])
    result = analyze_point(array, geometry, point, Ensemble.load(None), map_to_ct=False)
    mask = chest_lungs(array, geometry)
    whole = LungMask(mask.mask_kji, mask.stride_kji, mask.spacing_kji)
    whole.distance_kji, whole.field_kji  # noqa: B018 (built, as before)
    boxes = LungMask(mask.mask_kji, mask.stride_kji, mask.spacing_kji)

    def click(lungs: LungMask) -> None:
        lung_side(array, geometry, point, result.diameter_mm, lungs=lungs)
        outline, voi = result.segmentation_mask_voi, result.voi_geometry
        vessel_figures(array, geometry, outline, voi, result.diameter_mm, lungs=lungs)

    click(boxes)  # the first click computes the boxes; later ones read them
    seconds: dict[str, list[float]] = {"whole maps": [], "boxes": []}
    for _ in range(repeats):
        for name, lungs in (("whole maps", whole), ("boxes", boxes)):
            t = time.perf_counter()
            click(lungs)
            seconds[name].append(time.perf_counter() - t)
    for name, values in seconds.items():
        q1, median, q3 = np.percentile(values, [25, 50, 75]) * 1000
        print(f"{name}: median {median:.1f} ms (quartiles {q1:.1f}-{q3:.1f})")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--warm"]:
        warm()
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
