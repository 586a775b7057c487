"""``bench --cold`` (issue 27, item 7): ``analyze`` in a fresh process, split into its stages."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from NoduleMalignancyLib import benchmark


def test_a_cold_run_splits_a_fresh_analyze(tmp_path):
    """A synthetic 12 mm solid nodule in lung: every stage of the split is timed, and the
    stages inside the process add up to no more than the wall time of the process."""
    k, j, i = np.ogrid[:48, :64, :64]
    ct = np.full((48, 64, 64), -850, dtype=np.int16)
    ct[((k - 24) ** 2 + (j - 32) ** 2 + (i - 32) ** 2) <= 8**2] = 40  # 0.75 mm voxels
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((0.75, 0.75, 0.75))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    point = np.array(image.TransformContinuousIndexToPhysicalPoint((32.0, 32.0, 24.0)))
    split = benchmark.cold_run(tmp_path / "ct.nrrd", point, None, "cpu")
    assert set(split) == {label for label, _ in benchmark.COLD_SPLIT} | {"total"}
    assert all(seconds > 0 for seconds in split.values()), split
    inside = sum(v for label, v in split.items() if label not in ("total",))
    assert inside <= split["total"] + 1e-9
