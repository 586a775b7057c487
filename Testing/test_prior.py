"""The prior CT (issue 31 item 2, docs/DESIGN.md §17): the volume-doubling time and its
interval (core/prior/growth.py), the registration and its residual (core/prior/registration.py), what the
comparison refuses or flags and how a re-segmentation is judged (core/prior/prior_compare.py), the
synthetic pairs (evaluation/synthetic_pairs.py) on a chest phantom, the exam with a prior end to
end on the phantom (the shipped model) and ``nodule-malignancy exam --prior`` on LIDC-IDRI-0006
against a synthetic prior (docs/experiments/prior_pairs.md has the measured figures)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.prior import prior_compare
from NoduleMalignancyLib.core.prior.growth import growth, volume_doubling_days
from NoduleMalignancyLib.core.prior.registration import (
    CORRELATION_FLAG,
    DICE_FLAG,
    DICE_REFUSE,
    Registration,
    register_prior,
)
from NoduleMalignancyLib.evaluation.synthetic_pairs import (
    affine,
    grow_nodule,
    insert_nodule,
    nodule_region,
    transformed_ct,
)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
NODULES_LPS = {"a": (-60.0, -20.0, 40.0), "b": (70.0, 10.0, 0.0), "c": (55.0, -30.0, -45.0)}


# Growth ------------------------------------------------------------------------------------
def test_the_volume_doubling_time_is_interval_ln2_over_ln_ratio():
    assert volume_doubling_days(100.0, 200.0, 365.0) == pytest.approx(365.0)
    assert volume_doubling_days(100.0, 150.0, 90.0) == pytest.approx(
        90 * math.log(2) / math.log(1.5)
    )
    assert volume_doubling_days(200.0, 100.0, 365.0) == pytest.approx(-365.0)  # halving
    assert volume_doubling_days(100.0, 100.0, 365.0) is None  # no change: no doubling
    assert volume_doubling_days(100.0, 200.0, None) is None  # a date is missing


def test_the_interval_comes_from_the_folds_paired_ratios():
    grown = growth(100.0, 200.0, 365.0, [90, 100, 110], [170, 200, 250])
    assert grown.volume_change_percent == pytest.approx(100.0)
    lo, hi = grown.ratio_range
    assert (lo, hi) == pytest.approx((170 / 90, 250 / 110))
    fast, slow = grown.vdt_interval_days
    assert fast == pytest.approx(365 * math.log(2) / math.log(hi))
    assert slow == pytest.approx(365 * math.log(2) / math.log(lo))
    assert fast < grown.vdt_days < slow
    assert grown.ratio_interval == grown.ratio_range  # the headline lies inside the folds'
    # Folds that disagree on growing or not: stable within the uncertainty, no interval.
    unsure = growth(100.0, 110.0, 365.0, [100, 100], [95, 125])
    assert unsure.vdt_interval_days == (None, None) and "containing 1" in unsure.note
    assert unsure.vdt_days == pytest.approx(365 * math.log(2) / math.log(1.1))
    shrinking = growth(100.0, 50.0, 365.0, [100, 100], [40, 60])
    assert all(b < 0 for b in shrinking.vdt_interval_days)
    no_date = growth(100.0, 200.0, None, [100], [200])
    assert no_date.vdt_days is None and no_date.vdt_interval_days is None
    assert "date is missing" in no_date.note
    with pytest.raises(ValueError):
        growth(0.0, 100.0, 365.0)


def test_the_interval_contains_the_reported_vdt_when_the_ensemble_lies_outside_the_folds():
    """LIDC-IDRI-0006 n0 against a noisy copy of itself (test_exam_report): the ensemble's
    outlines gave ratio 1.088, every fold's paired ratio lay below it (1.043-1.084), and the
    folds' range of doubling times 3161-5976 days excluded the VDT of 3010. The interval now
    spans the headline and the folds' ratios."""
    folds_prior = [100.0, 100.0, 100.0, 100.0, 100.0]
    folds_current = [104.3, 106.0, 107.0, 108.0, 108.4]
    odd = growth(100.0, 108.8, 365.0, folds_prior, folds_current)
    assert odd.ratio_range == pytest.approx((1.043, 1.084))
    assert odd.ratio_interval == pytest.approx((1.043, 1.088))
    fast, slow = odd.vdt_interval_days
    assert fast == pytest.approx(odd.vdt_days) and fast <= odd.vdt_days <= slow
    assert "ensemble's 1.088 lies outside the folds' 1.043-1.084" in odd.note
    assert odd.to_dict()["volume_ratio_interval"] == pytest.approx([1.043, 1.088])


@pytest.mark.parametrize("seed", range(200))
def test_the_vdt_interval_always_contains_the_reported_vdt(seed):
    """Random headline and fold volumes, growing, shrinking or either: where there is an
    interval it contains the VDT, and where there is none its ratios contain 1."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    prior, current = rng.uniform(20, 2000, 2)
    folds_prior = prior * rng.uniform(0.8, 1.2, n)
    folds_current = current * rng.uniform(0.8, 1.2, n)
    g = growth(prior, current, float(rng.uniform(30, 1000)), folds_prior, folds_current)
    lo, hi = g.ratio_interval
    assert lo <= g.volume_ratio <= hi and lo <= g.ratio_range[0] <= g.ratio_range[1] <= hi
    fast, slow = g.vdt_interval_days
    if fast is None:
        assert slow is None and lo <= 1.0 <= hi
    else:
        assert fast <= g.vdt_days <= slow


# A chest phantom ---------------------------------------------------------------------------
def chest_phantom(nodules=NODULES_LPS, seed=0) -> tuple[np.ndarray, ImageGeometry]:
    """Air, a body (40 HU), two lungs (-850 HU) with 'vessels' (0 HU balls, the registration's
    texture; none within 15 mm of a nodule's site), a spine (400 HU), 10 mm solid nodules (30 HU) at ``nodules``; 15 HU noise."""
    geometry = ImageGeometry((-150.0, -150.0, -90.0), (1.5, 1.5, 2.5), IDENTITY, (200, 200, 72))
    k, j, i = np.meshgrid(*(np.arange(n) for n in geometry.shape_zyx), indexing="ij")
    x, y, z = (geometry.origin[a] + idx * geometry.spacing[a] for a, idx in enumerate((i, j, k)))
    image = np.full(geometry.shape_zyx, -1000.0, dtype=np.float32)
    image[(x / 140) ** 2 + (y / 100) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        lung = ((x - side * 65) / 50) ** 2 + (y / 70) ** 2 + (z / 80) ** 2 <= 1
        image[lung] = -850.0
    image[(x / 20) ** 2 + ((y - 70) / 15) ** 2 <= 1] = 400.0
    rng = np.random.default_rng(seed)
    lungs = image == -850.0
    for _ in range(120):
        c = np.array([rng.uniform(-110, 110), rng.uniform(-60, 60), rng.uniform(-70, 70)])
        r = rng.uniform(1.5, 3.5)
        if min(np.linalg.norm(c - site) for site in NODULES_LPS.values()) < 15.0:
            continue  # no 'vessel' where a nodule may be: it would be a small nodule there
        ball = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r**2
        image[ball & lungs] = 0.0
    for centre in nodules.values():
        ball = sum((v - c) ** 2 for v, c in zip((x, y, z), centre, strict=True)) <= 5.0**2
        image[ball] = 30.0
    image += rng.normal(0, 15, image.shape).astype(np.float32)
    return np.rint(image).astype(np.int16), geometry


@pytest.fixture(scope="module")
def phantom():
    return chest_phantom()


@pytest.fixture(scope="module")
def moved_phantom(phantom):
    """The phantom under a known rigid map (prior point -> phantom point), with noise."""
    transform = affine((0.0, 0.0, 0.0), (1.0, -1.0, 4.0), (1.0, 1.0, 1.0), (6.0, -4.0, 3.0))
    image, geometry = transformed_ct(*phantom, transform, 10.0, seed=1)
    return image, geometry, transform


# Registration ------------------------------------------------------------------------------
def test_registration_recovers_a_known_rigid_map(phantom, moved_phantom):
    image, geometry, transform = moved_phantom
    registration = register_prior(*phantom, image, geometry)
    truth = transform.GetInverse()  # phantom (current) point -> prior point
    for point in NODULES_LPS.values():
        expected = np.array(truth.TransformPoint(point))
        assert np.linalg.norm(registration.current_to_prior(point) - expected) < 1.5
        back = registration.prior_to_current(registration.current_to_prior(point))
        np.testing.assert_allclose(back, point, atol=1e-6)
    assert registration.verdict == "good", registration.verdict_reason
    assert registration.lung_dice > registration.lung_dice_before
    d = registration.to_dict()
    assert set(d["seconds"]) == {"lung_masks", "coarse_volumes", "rigid", "affine", "residual"}


def test_registration_needs_two_chests(phantom):
    crop = phantom[0][30:40, 60:100, 20:60]  # lung on every border: no body outline
    box = ImageGeometry((0.0, 0.0, 0.0), (1.5, 1.5, 2.5), IDENTITY, crop.shape[::-1])
    with pytest.raises(ValueError, match="no lung mask on the prior CT"):
        register_prior(*phantom, crop, box)


@pytest.mark.parametrize(
    ("dice", "correlation", "verdict"),
    [
        (DICE_FLAG, CORRELATION_FLAG, "good"),
        (DICE_FLAG - 0.001, 0.9, "flagged"),
        (0.99, CORRELATION_FLAG - 0.01, "flagged"),
        (DICE_REFUSE, 0.9, "flagged"),
        (DICE_REFUSE - 0.001, 0.9, "refused"),
    ],
)
def test_the_residual_sets_the_verdict_at_its_thresholds(dice, correlation, verdict):
    r = Registration(np.eye(4), dice, 0.5, correlation, -1.0, ("rigid",))
    assert r.verdict == verdict
    assert f"lung Dice {dice:.3f}" in r.verdict_reason


# What the comparison refuses or flags ------------------------------------------------------
def _geometry(slice_mm):
    return ImageGeometry((0.0, 0.0, 0.0), (0.7, 0.7, slice_mm), IDENTITY, (10, 10, 10))


def test_comparison_findings_name_what_is_wrong():
    def codes(current, prior, interval, registration=None):
        found = prior_compare.comparison_findings(current, prior, interval, registration)
        return {f.code: f.level for f in found}

    assert codes(_geometry(1.0), _geometry(1.5), 365.0) == {}
    assert codes(_geometry(1.0), _geometry(1.51), 365.0) == {"reconstructions_differ": "flagged"}
    assert codes(_geometry(2.5), _geometry(1.0), None) == {
        "reconstructions_differ": "flagged",
        "date_missing": "flagged",
    }
    assert codes(_geometry(1.0), _geometry(1.0), -3.0) == {"prior_not_before": "refused"}

    # Kernels are compared where both are known (DICOM ConvolutionKernel), case and spaces aside.
    def kernel_codes(kernels):
        found = prior_compare.comparison_findings(
            _geometry(1.0), _geometry(1.0), 365.0, None, kernels
        )
        return {f.code: f.level for f in found}

    assert kernel_codes(("B30f", "B70f")) == {"kernels_differ": "flagged"}
    assert kernel_codes(("B30f", " b30F ")) == {} and kernel_codes(("B30f", None)) == {}
    assert kernel_codes((None, None)) == {}
    poor = Registration(np.eye(4), DICE_REFUSE - 0.1, 0.5, 0.1, -1.0, ("rigid",))
    assert codes(_geometry(1.0), _geometry(1.0), 365.0, poor) == {"registration_poor": "refused"}


# Judging a re-segmentation at the mapped point ---------------------------------------------
class _Assessment(SimpleNamespace):
    pass


def _result(centre_lps, tier="assessed", reason="", volume=500.0, diameter=10.0, folds=None):
    """A stand-in analysis: a 3-voxel outline centred on ``centre_lps``."""
    voi = ImageGeometry(tuple(np.asarray(centre_lps) - 1.0), (1.0, 1.0, 1.0), IDENTITY, (3, 3, 3))
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, :] = True
    lr = SimpleNamespace(solid_mean_diameter_mm=0.0, texture_class="solid")
    return SimpleNamespace(
        point_lps=tuple(centre_lps), voi_geometry=voi, segmentation_mask_voi=mask,
        assessment=_Assessment(tier=tier, reason=reason), volume_mm3=volume,
        diameter_mm=diameter, mean_diameter_mm=diameter - 1.0, lung_rads=lr,
        fold_volumes_mm3=folds or [volume] * 3, voi_center_lps=None, context_box=None,
    )  # fmt: skip


def test_a_re_segmentation_is_the_nodule_only_when_answered_and_near(monkeypatch):
    from NoduleMalignancyLib.core.scope.validation import RefusedError

    answers = {}

    def analyze(image, geometry, point, ensemble, context=None, map_to_ct=True):
        answer = answers["next"]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(prior_compare, "analyze_point", analyze)
    point = np.array([10.0, 20.0, 30.0])

    def judged(answer):
        answers["next"] = answer
        return prior_compare.find_nodule(None, None, point, None, tolerance_mm=5.0)

    result, distance, why = judged(_result(point + [3.0, 0, 0]))
    assert why == "" and distance == pytest.approx(3.0)
    _, distance, why = judged(_result(point + [6.0, 0, 0]))
    assert distance == pytest.approx(6.0) and "centred 6.0 mm away (> 5.0 mm)" in why
    _, _, why = judged(_result(point, tier="not_assessed", reason="a vessel"))
    assert why == "probably not a nodule at the mapped point: a vessel"
    result, _, why = judged(RefusedError("no_tissue", "no tissue at the point"))
    assert result is None and why == "refused at the mapped point: no tissue at the point"
    assert prior_compare.match_tolerance_mm(4.0) == prior_compare.MATCH_MM
    assert prior_compare.match_tolerance_mm(20.0) == 10.0


def _rigid(centre, rotation_deg, translation_mm, scale=(1.0, 1.0, 1.0)):
    """A world map (points -> points) of synthetic_pairs.affine and its inverse."""
    transform = affine(centre, rotation_deg, scale, translation_mm)
    inverse = transform.GetInverse()

    def along(t):
        def mapped(points):
            points = np.asarray(points, dtype=float)
            flat = np.array([t.TransformPoint(tuple(p)) for p in points.reshape(-1, 3)])
            return flat.reshape(points.shape)

        return mapped

    return along(transform), along(inverse)


def test_the_other_date_samples_the_same_points_in_the_same_crop():
    """The other CT is shown this answer's view (prior_compare.same_view): its grid placed in
    this CT's world, the answer's VOI centre and crop. A CT and the same voxels under a rigid
    map: the VOI samples equal, and the crop admits the same samples. Mapping the crop onto the
    other CT and centring a VOI there (the earlier way) admitted 5 of the 6 samples a 3-slice
    crop at 2.5 mm admits at the answer's voxel-centred VOI (LIDC-IDRI-0006's 6.6 mm nodule
    measured 19 % less on the other date of stable synthetic pairs)."""
    from NoduleMalignancyLib.core.config import VoiConfig
    from NoduleMalignancyLib.core.nodule.voi import sample_voi

    cfg = VoiConfig()
    ct = ImageGeometry((0.0, 0.0, 0.0), (0.7, 0.7, 2.5), IDENTITY, (120, 120, 30))
    image = np.random.default_rng(3).normal(-600.0, 200.0, ct.shape_zyx).astype(np.float32)
    centre = ct.index_to_lps(np.array([60.0, 61.0, 15.0]))  # a voxel: the answer's VOI centre
    crop = ImageGeometry(tuple(ct.index_to_lps(np.array([38.0, 39.0, 14.0]))), ct.spacing,
                         IDENTITY, (44, 44, 3))  # fmt: skip
    to_other, to_this = _rigid((40.0, 40.0, 40.0), (1.5, -1.0, 5.0), (4.3, -3.1, 2.2))
    other = prior_compare.mapped_grid(ct, to_other)  # the same voxels, another world
    result = _result(tuple(centre))
    result.voi_center_lps, result.context_box = centre, crop

    seen_centre, seen_crop, placed = prior_compare.same_view(result, other, to_this)
    here = sample_voi(image, ct, centre, cfg, context=crop)
    there = sample_voi(image, placed, seen_centre, cfg, context=seen_crop)
    np.testing.assert_array_equal(there.valid, here.valid)
    np.testing.assert_allclose(there.hu, here.hu, atol=1e-2)
    # The samples each column of the nodule's footprint (10 mm across) has in the crop: its
    # 5 mm, both ends on a sample; the earlier way's crop was tilted against the VOI's samples.
    columns = here.valid[:, 17:31, 17:31].sum(0)
    assert np.all(columns == 6)
    mapped_crop = prior_compare.mapped_grid(crop, to_other)
    before = sample_voi(image, other, to_other(centre), cfg, context=mapped_crop)
    assert np.mean(before.valid[:, 17:31, 17:31].sum(0)) < 5.5
    # Without a recorded crop, the other date gets its own context passes from the centre.
    result.context_box = None
    assert prior_compare.same_view(result, other, to_this)[1] is None


def test_a_result_seen_in_this_world_is_moved_back_to_its_own():
    """The other date's analysis, made with its CT placed in this CT's world, is given in its
    own world: grids and points mapped, volumes by the map's determinant, lengths by its cube
    root."""
    to_other, _ = _rigid((0.0, 0.0, 0.0), (2.0, 0.0, 4.0), (5.0, 1.0, -2.0), (1.03, 0.98, 1.01))
    found = _result((10.0, 20.0, 30.0), volume=300.0, diameter=9.0, folds=[290, 300, 310])
    found.short_axis_mm = 7.0
    found.voi_center_lps = np.array([10.0, 20.0, 30.0])
    found.context_box = ImageGeometry((0.0, 10.0, 20.0), (0.7, 0.7, 2.5), IDENTITY, (44, 44, 4))
    voi, box = found.voi_geometry, found.context_box
    det = 1.03 * 0.98 * 1.01
    assert prior_compare.map_scale(to_other) == pytest.approx(det)
    moved = prior_compare.moved_to_own_world(found, to_other)
    np.testing.assert_allclose(moved.point_lps, to_other(np.array([10.0, 20.0, 30.0])))
    np.testing.assert_allclose(moved.voi_center_lps, to_other(np.array([10.0, 20.0, 30.0])))
    ijk = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 2.0]])
    np.testing.assert_allclose(
        moved.voi_geometry.index_to_lps(ijk), to_other(voi.index_to_lps(ijk))
    )
    np.testing.assert_allclose(moved.context_box.index_to_lps(ijk), to_other(box.index_to_lps(ijk)))
    assert moved.volume_mm3 == pytest.approx(300.0 * det)
    assert moved.fold_volumes_mm3 == pytest.approx([290 * det, 300 * det, 310 * det])
    assert moved.diameter_mm == pytest.approx(9.0 * det ** (1 / 3))
    assert moved.short_axis_mm == pytest.approx(7.0 * det ** (1 / 3))


class _ThresholdNetwork:
    """A stand-in ensemble whose two folds 'segment' what is brighter than -300 HU where the
    VOI saw the image (the first window channel: -1000 to 400 HU)."""

    def __init__(self):
        from NoduleMalignancyLib.core.config import VoiConfig

        self.manifest = SimpleNamespace(voi=VoiConfig())
        self.runs = 0

    def run(self, channels):
        self.runs += 1
        seen = channels[:, -1] > 0.5
        prob = ((channels[:, 0] > 0.5) & seen).astype(np.float32)  # (N, D, H, W)
        return SimpleNamespace(seg_probability=np.stack([prob, prob]))  # (K, N, D, H, W)


def test_a_nodule_past_the_field_of_view_is_measured_through_windows():
    """A 38 mm ball: one 32 x 31 x 31 mm window holds a part of it; windows shifted by half
    the field of view along the axes it reaches past, in the crop rebuilt from their outline
    (its z extent no longer cut to one field of view), measure all of it, on both dates."""
    from NoduleMalignancyLib.core.nodule.voi import context_box_for_nodule, sample_voi

    network = _ThresholdNetwork()
    ct = ImageGeometry((0.0, 0.0, 0.0), (0.7, 0.7, 1.25), IDENTITY, (130, 130, 70))
    k, j, i = np.meshgrid(*(np.arange(n) for n in ct.shape_zyx), indexing="ij")
    centre = np.array([45.5, 45.5, 43.75])
    radius = 19.0
    distance = np.sqrt((i * 0.7 - centre[0]) ** 2 + (j * 0.7 - centre[1]) ** 2
                       + (k * 1.25 - centre[2]) ** 2)  # fmt: skip
    image = np.where(distance <= radius, 40.0, -850.0).astype(np.float32)
    truth = 4.0 / 3.0 * np.pi * radius**3
    # The single analysis' crop: the rule's z extent cut to the field of view.
    points = centre + radius * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0.0]])
    crop = context_box_for_nodule(ct, centre, points, axial_diameter_mm=2 * radius, fov_z_mm=31.0)
    one = sample_voi(image, ct, centre, network.manifest.voi, context=crop)
    single = float((one.hu > -300).sum()) * np.prod(network.manifest.voi.spacing_zyx)
    assert single < 0.85 * truth
    ball = SimpleNamespace(segmentation_mask_voi=one.hu > -300, diameter_mm=2 * radius)
    axes = prior_compare.beyond_field(ball, ball, network)
    assert axes == [True, True, True]
    volumes = prior_compare.windowed_volumes((image, ct), (image, ct), centre, crop, axes, network)
    assert volumes["this"][0] == pytest.approx(truth, rel=0.03)
    assert volumes["other"] == volumes["this"] and len(volumes["this"][1]) == 2
    assert network.runs == 3 * 27
    # A nodule well inside the field of view is measured as it was.
    small = SimpleNamespace(segmentation_mask_voi=np.pad(np.ones((4, 4, 4), bool), 10),
                            diameter_mm=10.0)  # fmt: skip
    assert prior_compare.beyond_field(small, small, network) == [False, False, False]


def test_the_measured_prior_entry_has_both_dates_and_the_change():
    prior = _result((0, 0, 0), volume=400.0, diameter=9.0, folds=[380, 400, 420])
    current = _result((1, 0, 0), volume=600.0, diameter=11.0, folds=[560, 600, 650])
    match = prior_compare.NoduleMatch("n", prior_compare.MATCHED, current, prior, np.zeros(3), 0.4)
    entry = prior_compare.measured_prior_entry(match, "2024-01-01", 200.0, [])
    assert entry["source"] == "measured" and entry["matched"] and not entry["new"]
    assert (entry["volume_mm3"], entry["diameter_mm"]) == (400.0, 9.0)
    assert entry["diameter_change_mm"] == pytest.approx(2.0)
    assert entry["volume_change_percent"] == pytest.approx(50.0)
    assert entry["vdt_days"] == pytest.approx(200 * math.log(2) / math.log(1.5))
    assert entry["volume_ratio_fold_range"] == pytest.approx([560 / 380, 650 / 420])
    new = prior_compare.NoduleMatch("m", prior_compare.NEW, current, None, np.zeros(3), None, "x")
    entry = prior_compare.measured_prior_entry(new, None, None, [])
    assert entry["new"] and entry["volume_mm3"] is None and entry["vdt_days"] is None


# Synthetic pairs ---------------------------------------------------------------------------
def _nodule_mass_mm3(image, geometry, centre_lps, radius_mm=10.0) -> float:
    """The phantom's nodule volume as its density above the lung's, in a ball: insensitive to
    the 2.5 mm slices, which make a 10 mm ball's voxel count vary by 15 %."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in geometry.shape_zyx), indexing="ij")
    ijk = np.stack([i, j, k], -1).reshape(-1, 3).astype(float)
    distance = np.linalg.norm(geometry.index_to_lps(ijk) - np.asarray(centre_lps), axis=1)
    inside = distance.reshape(geometry.shape_zyx) <= radius_mm
    density = (image[inside].astype(float) + 850.0) / 880.0  # lung 0, nodule 1
    return float(density.sum() * geometry.voxel_volume_mm3())


def test_a_grown_nodule_has_the_volume_factor_and_an_inserted_one_appears_once(phantom):
    image, geometry = phantom
    region = nodule_region(image, geometry, NODULES_LPS["a"], 8.0)
    assert region.volume_mm3 == pytest.approx(4 / 3 * math.pi * 125, rel=0.15)
    np.testing.assert_allclose(region.centre_lps, NODULES_LPS["a"], atol=0.5)
    before = _nodule_mass_mm3(image, geometry, NODULES_LPS["a"])
    for factor in (1.5, 2.0):
        grown = grow_nodule(image, geometry, region, factor)
        after = _nodule_mass_mm3(grown, geometry, NODULES_LPS["a"])
        assert after / before == pytest.approx(factor, rel=0.03)
    target = np.array([-70.0, 20.0, -20.0])
    with_copy = insert_nodule(image, geometry, region, target)
    copy = _nodule_mass_mm3(with_copy, geometry, target) - _nodule_mass_mm3(image, geometry, target)
    assert copy == pytest.approx(before, rel=0.05)
    changed = np.abs(np.asarray(with_copy, float) - image) > 0
    kji = np.column_stack(np.nonzero(changed))
    distance = np.linalg.norm(geometry.index_to_lps(kji[:, ::-1].astype(float)) - target, axis=1)
    assert distance.max() < 15.0  # nothing changed away from the copy


def test_a_transformed_ct_drops_the_slices_a_tilt_would_fill(phantom):
    image, geometry = phantom
    tilt = affine((0.0, 0.0, 0.0), (3.0, 0.0, 0.0), (1, 1, 1), (0.0, 0.0, 0.0))
    moved, grid = transformed_ct(image, geometry, tilt, 0.0, seed=0)
    assert grid.size[2] < geometry.size[2] and moved.dtype == np.int16
    assert moved.shape == grid.shape_zyx


# The exam with a prior, end to end ---------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_exam(phantom):
    """The phantom as the current CT with nodules a and b (c removed), its moved copy with a
    and c (b removed) as the prior, a year before; all three listed where they are."""
    from NoduleMalignancyLib.core.clinical.exam import ExamPoint
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.prior.exam_prior import PriorCT, analyze_exam_with_prior

    current, geometry = chest_phantom({k: NODULES_LPS[k] for k in "ab"})
    before, _ = chest_phantom({k: NODULES_LPS[k] for k in "ac"})
    transform = affine((0.0, 0.0, 0.0), (0.0, 0.0, 3.0), (1.0, 1.0, 1.0), (5.0, 2.0, -2.5))
    prior, prior_geometry = transformed_ct(before, geometry, transform, 10.0, seed=2)
    on_prior = {k: transform.GetInverse().TransformPoint(NODULES_LPS[k]) for k in "ac"}
    ensemble = Ensemble.load(device="cpu")
    exam = analyze_exam_with_prior(
        current,
        geometry,
        [ExamPoint(k, NODULES_LPS[k]) for k in "ab"],
        ensemble,
        PriorCT(
            prior, prior_geometry, "2024-03-01", tuple(ExamPoint(k, p) for k, p in on_prior.items())
        ),  # fmt: skip
        365.0,
    )
    return exam.to_dict()


def test_the_exam_with_a_prior_matches_finds_new_and_lists_what_is_gone(phantom_exam):
    from NoduleMalignancyLib.core.result_schema import unknown_names

    d = phantom_exam
    assert unknown_names(d) == []
    prior_ct = d["prior_ct"]
    assert prior_ct["compared"] and prior_ct["registration"]["verdict"] == "good"
    assert prior_ct["matched"] == ["a"] and prior_ct["new"] == ["b"]
    assert [e["name"] for e in prior_ct["not_found_in_current"]] == ["c"]
    a, b = d["nodules"]
    assert a["prior"]["status"] == "matched" and a["prior"]["mapping_distance_mm"] < 2.0
    # The same 10 mm ball on both dates: the same volume within the segmentation's noise.
    assert abs(a["prior"]["volume_change_percent"]) < 10.0
    assert abs(a["prior"]["mean_diameter_change_mm"]) <= 1.5  # not growth (> 1.5 mm)
    assert a["lung_rads_behavior"] in ("stable", "decreased")
    assert a["lung_rads_screen"] == "follow-up screen"
    assert b["prior"]["status"] == "new" and b["lung_rads_behavior"] == "new"
    assert b["prior"]["reason"]
    timings = d["timings_s"]
    assert {"registration", "analysis", "prior_matching"} <= set(timings)


@pytest.fixture(scope="module")
def exam_0006_prior(data_dir, tmp_path_factory):
    """``nodule-malignancy exam --prior`` on 3 nodules of LIDC-IDRI-0006 against a synthetic
    prior: the same CT under a known rigid map with 20 HU noise, dated a year before."""
    from NoduleMalignancyLib.cli import main
    from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path

    path = sample_path("LIDC-IDRI-0006", data_dir=data_dir)
    image = sitk.ReadImage(str(path))
    geometry = ImageGeometry.from_sitk(image)
    centre = geometry.index_to_lps(np.asarray(geometry.size) / 2.0)
    transform = affine(centre, (1.0, -0.5, 3.0), (1.0, 1.0, 1.0), (7.0, -5.0, 4.0))
    moved, grid = transformed_ct(sitk.GetArrayFromImage(image), geometry, transform, 20.0, 3)
    tmp = tmp_path_factory.mktemp("exam_prior")
    prior = sitk.GetImageFromArray(moved)
    grid.apply_to_sitk(prior)
    sitk.WriteImage(prior, str(tmp / "prior.nrrd"), True)
    points = nodule_points_lps("LIDC-IDRI-0006", data_dir)[:3]
    document = {"name": "exam", "type": "Multiple points", "version": {"major": 1, "minor": 0},
                "points": [{"name": n, "point": list(p)} for n, p in points]}  # fmt: skip
    (tmp / "points.json").write_text(json.dumps(document))
    out = tmp / "out"
    args = ["exam", "--ct", str(path), "--points", str(tmp / "points.json"),
            "--prior", str(tmp / "prior.nrrd"), "--prior-date", "2024-06-01",
            "--date", "2025-06-01", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "exam.json").read_text())


def test_exam_with_a_synthetic_prior_on_lidc_0006(exam_0006_prior, capsys):
    from NoduleMalignancyLib.core.result_schema import unknown_names

    d = exam_0006_prior
    assert unknown_names(d) == [] and d["prior_ct"]["registration"]["verdict"] == "good"
    assert d["prior_ct"]["interval_days"] == 365.0 and d["prior_ct"]["findings"] == []
    for n in d["nodules"]:
        p = n["prior"]
        assert unknown_names(n) == [] and p["status"] == "matched", p
        assert p["source"] == "measured" and p["mapping_distance_mm"] < 3.0
        assert abs(p["volume_change_percent"]) < 25.0  # the same nodules, resampled with noise
        lo, hi = p["volume_ratio_fold_range"]
        assert lo <= hi
        assert n["lung_rads_screen"] == "follow-up screen"
    stages = d["timings_s"]["stages"]
    assert set(stages) == {"read", "read_prior", "weights", "exam", "report"}
    assert d["files"] == {"html": "exam.html"}  # an NRRD CT: no DICOM SR (test_exam_report)
    assert {"registration", "prior_matching"} <= set(d["timings_s"]["exam"])


def test_typed_in_priors_and_a_prior_ct_are_not_mixed(tmp_path, capsys):
    from NoduleMalignancyLib.cli import main

    points = tmp_path / "points.json"
    points.write_text(json.dumps({"name": "x", "type": "Multiple points", "version": {},
                                  "points": [{"name": "a", "point": [1, 2, 3],
                                              "prior": "new"}]}))  # fmt: skip
    out = tmp_path / "out"
    args = ["exam", "--ct", str(tmp_path / "none.nrrd"), "--points", str(points), "--out", str(out)]
    assert main([*args, "--prior", str(tmp_path / "p.nrrd")]) == 2
    assert "typed-in priors and --prior" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--prior-date", "2024-01-01"]) == 2
    assert "--prior-date without --prior" in capsys.readouterr().err


def test_a_prior_that_cannot_be_registered_is_not_compared_and_says_why(phantom):
    """A prior without a chest (a crop: no lung mask) is refused: the nodules keep their
    baseline answers, each with a ``prior`` saying it was not compared, and ``prior_ct`` why."""
    from NoduleMalignancyLib.core.clinical.exam import ExamPoint
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.prior.exam_prior import PriorCT, analyze_exam_with_prior

    image, geometry = phantom
    crop = np.ascontiguousarray(image[30:40, 60:100, 20:60])
    box = ImageGeometry((0.0, 0.0, 0.0), (1.5, 1.5, 2.5), IDENTITY, crop.shape[::-1])
    exam = analyze_exam_with_prior(
        image,
        geometry,
        [ExamPoint("a", NODULES_LPS["a"])],
        Ensemble.load(device="cpu"),
        PriorCT(crop, box, None),
        None,
    ).to_dict()
    prior_ct = exam["prior_ct"]
    assert not prior_ct["compared"] and prior_ct["registration"] is None
    codes = {f["code"]: f["level"] for f in prior_ct["findings"]}
    assert codes == {"date_missing": "flagged", "registration_failed": "refused"}
    assert "no lung mask on the prior CT" in prior_ct["registration_error"]
    (a,) = exam["nodules"]
    assert a["assessment"] == "assessed" and a["prior"]["status"] == "not compared"
    assert "not compared" in a["prior"]["reason"] and a["lung_rads_screen"] == "baseline screen"
    assert "registration" in exam["timings_s"]


def test_the_exam_reads_each_dicom_series_reconstruction_kernel(data_dir):
    """``exam`` compares the kernels it reads from the headers (LIDC-IDRI-0006: GE 'STANDARD');
    a CT without headers has none, so nothing is compared."""
    from NoduleMalignancyLib.batch.predict import read_input
    from NoduleMalignancyLib.files.ct_input import convolution_kernel

    archive = data_dir / "lidc_ct" / "LIDC-IDRI-0006.tar.gz"
    _, _, datasets, _ = read_input(archive, None, dicom=True)
    assert convolution_kernel(datasets) == str(datasets[0].ConvolutionKernel) == "STANDARD"
    assert convolution_kernel(None) is None and convolution_kernel([{}]) is None
