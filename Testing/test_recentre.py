"""The VOI is centred on the segmented nodule, not on the pixel clicked (issue 29 item 3).

Phantoms check the pieces (the centre snapped to the CT grid, when two outlines are the same
nodule, the point's distance measured from the click when the VOI is centred elsewhere); a real
LIDC VOI checks the promise: clicks 1 mm apart on a nodule give the network the same input, so
the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.nodule.recentre import (
    nodule_centre,
    reaches_field_edge,
    same_nodule,
    snap_to_voxel,
)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _grid(origin=(0.0, 0.0, 0.0), spacing=(0.7, 0.7, 2.5), size=(40, 40, 10)) -> ImageGeometry:
    return ImageGeometry(origin, spacing, IDENTITY, size)


def test_the_centre_is_snapped_to_the_nearest_ct_voxel_and_kept_inside_the_image():
    ct = _grid()
    np.testing.assert_allclose(snap_to_voxel(ct, (1.1, 0.3, 3.6)), (1.4, 0.0, 2.5))
    np.testing.assert_allclose(snap_to_voxel(ct, (-5.0, 100.0, 12.0)), (0.0, 27.3, 12.5))


def test_the_centre_of_an_outline_is_its_centroid_on_the_ct_grid():
    voi = _grid(origin=(0.1, 0.2, 0.3), spacing=(0.5, 0.5, 1.0), size=(20, 20, 12))
    mask = np.zeros(voi.shape_zyx, bool)
    mask[4:7, 8:11, 2:5] = True  # centroid at index (3, 9, 5): LPS (1.6, 4.7, 5.3)
    np.testing.assert_allclose(nodule_centre(mask, voi, _grid()), (1.4, 4.9, 5.0))


def test_outlines_on_two_grids_are_the_same_nodule_only_when_they_share_a_voxel():
    a, b = _grid(spacing=(1.0, 1.0, 1.0)), _grid(origin=(3.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0))
    mask = np.zeros(a.shape_zyx, bool)
    mask[5, 5, 10:13] = True  # x 10-12 mm
    other = np.zeros(b.shape_zyx, bool)
    other[5, 5, 9] = True  # x 12 mm on b
    assert same_nodule(mask, a, other, b)
    other[5, 5, 9], other[5, 5, 12] = False, True  # x 15 mm: beside it
    assert not same_nodule(mask, a, other, b)
    assert not same_nodule(np.zeros_like(mask), a, other, b)


def test_point_off_nodule_is_measured_from_the_click_not_the_voi_centre():
    from NoduleMalignancyLib.core.scope.validation import ScopeConfig, check_result

    spacing = (1.0, 0.667, 0.667)
    hu = np.full((32, 48, 48), -850.0)
    valid = np.ones_like(hu)
    blob = np.zeros(hu.shape, bool)
    blob[13:19, 19:29, 19:29] = True  # around the VOI centre
    hu[blob] = 40.0
    limit = ScopeConfig().max_point_distance_mm
    click = np.array([15.5, 23.5, 23.5 + (limit + 3.0) / spacing[2] + 5])  # beside the blob
    findings, figures = check_result(blob, valid, hu, spacing, 6.7, 0.01, point_zyx=click)
    assert figures["point_distance_mm"] > limit
    assert "point_off_nodule" in {f.code for f in findings}
    assert check_result(blob, valid, hu, spacing, 6.7, 0.01)[1]["point_distance_mm"] < 1.0


@pytest.fixture(scope="module")
def fold_model(data_dir):
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.settings import shipped_models_dir

    ensemble = Ensemble.load(shipped_models_dir(), device="cpu")
    ensemble.similar_index = None
    return ensemble


def test_clicks_near_the_centre_of_a_real_nodule_give_the_same_answer(data_dir, fold_model):
    import SimpleITK as sitk

    from NoduleMalignancyLib.core.nodule.analysis import analyze_point
    from NoduleMalignancyLib.training.dataset import load_records

    record = next(r for r in load_records(data_dir) if r.name == "LIDC-IDRI-0298_R_5")
    image = sitk.ReadImage(str(record.image_path))
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    centre = np.asarray(record.center_lps)
    answers = [
        analyze_point(array, geometry, centre + offset, fold_model, map_to_ct=False)
        for offset in ((0.0, 0.0, 0.0), (0.6, -0.5, 0.3), (-0.4, 0.2, -0.8))
    ]
    for a in answers[1:]:
        assert a.voi_geometry == answers[0].voi_geometry
        assert a.malignancy_probability == answers[0].malignancy_probability
        assert a.diameter_mm == answers[0].diameter_mm
    assert [a.point_lps for a in answers][1] == tuple(centre + (0.6, -0.5, 0.3))
    assert all(not a.warnings for a in answers)


class _GrowsEachPass:
    """A stand-in network whose outline, a ball at the VOI centre, is 8 mm wider at every pass:
    an outline that grows with the crops built on it never settles, and reaches the edge of the
    32 mm field of view at the fifth pass (a 38 mm ball)."""

    def __init__(self):
        from NoduleMalignancyLib.core.config import VoiConfig

        self.manifest = type("Manifest", (), {"voi": VoiConfig()})()
        self.radii_mm: list[float] = []

    def run(self, channels):
        from NoduleMalignancyLib.core.model.ensemble import FoldOutputs

        cfg = self.manifest.voi
        grid = np.stack(np.indices(cfg.shape_zyx), -1).astype(float)
        offsets = (grid - (np.asarray(cfg.shape_zyx) - 1) / 2.0) * np.asarray(cfg.spacing_zyx)
        self.radii_mm.append(3.0 + 4.0 * len(self.radii_mm))
        ball = np.linalg.norm(offsets, axis=-1) <= self.radii_mm[-1]
        self.last_outline = ball & (channels[0, -1] > 0.5)
        seg = self.last_outline.astype(np.float32)[None, None]
        return FoldOutputs(np.zeros((1, 1, 9)), seg, [], [])


def test_passes_that_never_settle_stop_before_the_outline_reaches_the_field_edge():
    from NoduleMalignancyLib.core.nodule.analysis import (
        MAX_CONTEXT_PASSES,
        nodule_mask,
        sample_and_run,
    )
    from NoduleMalignancyLib.core.nodule.measurements import nodule_size

    ct = _grid(spacing=(0.7, 0.7, 1.0), size=(200, 200, 60))
    image = np.full(ct.shape_zyx, -800.0, dtype=np.float32)
    network = _GrowsEachPass()
    click = ct.index_to_lps(np.array([100.3, 99.6, 30.2]))
    sample, out, passes = sample_and_run(image, ct, click, network)
    assert passes == MAX_CONTEXT_PASSES == len(network.radii_mm)
    outline = nodule_mask(out.seg_probability.mean(0)[0], sample.valid)
    diameter = nodule_size(outline, network.manifest.voi.spacing_zyx).diameter_mm
    assert reaches_field_edge(network.last_outline)
    assert not reaches_field_edge(outline)
    assert diameter == pytest.approx(2 * network.radii_mm[3], abs=1.5)  # the fourth pass
