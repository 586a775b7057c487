"""Lung-RADS v2022 baseline suggestion (docs/DESIGN.md §16): every edge of the size tables,
rounding to 0.1 mm, the texture cut-offs, category 1 for calcification, the 4X features, the
solid component's measurement, and the suggestion an analysis of a real LIDC VOI carries."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from NoduleMalignancyLib.core.clinical.lung_rads import (
    GROUND_GLASS,
    HIGH_CALCIFICATION_PROBABILITY,
    PART_SOLID,
    SOLID,
    SOLID_COMPONENT_HU,
    SPICULATION_SUPPORTS_4X,
    round_mm,
    solid_component_mean_diameter_mm,
    suggest_lung_rads,
    texture_class,
)
from NoduleMalignancyLib.core.nodule.measurements import nodule_size


def category(mean, texture=SOLID, solid=0.0, calcification=0.0, spiculation=1.0):
    return suggest_lung_rads(mean, texture, solid, calcification, spiculation).category


@pytest.mark.parametrize(
    ("mean", "expected"),
    [(3.0, "2"), (5.9, "2"), (6.0, "3"), (7.9, "3"), (8.0, "4A"), (14.9, "4A"), (15.0, "4B"),
     (40.0, "4B")],
)  # fmt: skip
def test_solid_thresholds(mean, expected):
    assert category(mean, SOLID) == expected


@pytest.mark.parametrize(
    ("total", "solid", "expected"),
    [
        (5.9, 0.0, "2"),
        (5.9, 5.9, "2"),  # total < 6: 2 whatever the solid part
        (6.0, 0.1, "3"),
        (6.0, 5.9, "3"),
        (12.0, 5.9, "3"),
        (12.0, 6.0, "4A"),
        (12.0, 7.9, "4A"),
        (12.0, 8.0, "4B"),
        (25.0, 14.0, "4B"),
    ],
)
def test_part_solid_thresholds(total, solid, expected):
    assert category(total, PART_SOLID, solid) == expected


def test_a_part_solid_texture_without_a_solid_component_is_read_as_ground_glass():
    """No segmented voxel at or above the solid threshold: no part-solid row applies (a review
    found a 6.0 mm nodule with a 0.0 mm solid component suggested 3 as part-solid)."""
    s = suggest_lung_rads(6.0, PART_SOLID, 0.0, 0.0, 1.0, texture_score=3.2)
    assert (s.category, s.texture_class) == ("2", GROUND_GLASS)
    assert any("no solid component" in r and "ground-glass" in r for r in s.reasons), s.reasons
    assert category(30.0, PART_SOLID, 0.0) == "3"  # ground glass >= 30 mm
    assert category(6.0, PART_SOLID, 0.04) == "2"  # rounds to 0.0 mm: none


@pytest.mark.parametrize(("mean", "expected"), [(10.0, "2"), (29.9, "2"), (30.0, "3")])
def test_ground_glass_thresholds(mean, expected):
    assert category(mean, GROUND_GLASS, solid=12.0) == expected  # the solid part is not used


def test_sizes_are_rounded_to_a_tenth_half_up():
    assert round_mm(5.95) == 6.0 and round_mm(5.85) == 5.9 and round_mm(5.9499) == 5.9
    assert category(5.95) == "3" and category(5.949) == "2"
    assert category(7.95) == "4A" and category(14.949) == "4A" and category(14.95) == "4B"
    assert category(29.95, GROUND_GLASS) == "3" and category(29.94, GROUND_GLASS) == "2"
    assert category(10.0, PART_SOLID, 5.95) == "4A" and category(10.0, PART_SOLID, 7.949) == "4A"
    s = suggest_lung_rads(8.04, PART_SOLID, 6.06, 0.0, 1.0)
    assert (s.mean_diameter_mm, s.solid_mean_diameter_mm) == (8.0, 6.1)


def test_texture_cut_offs_follow_the_lidc_ratings():
    assert [texture_class(s) for s in (1.0, 2.0, 2.49)] == [GROUND_GLASS] * 3
    assert [texture_class(s) for s in (2.5, 3.0, 4.0, 4.49)] == [PART_SOLID] * 4
    assert [texture_class(s) for s in (4.5, 5.0)] == [SOLID] * 2
    with pytest.raises(ValueError, match="texture class"):
        category(10.0, "mixed")


def test_category_1_only_with_a_high_calcification_probability():
    high = HIGH_CALCIFICATION_PROBABILITY
    s = suggest_lung_rads(10.0, SOLID, 9.0, high, 4.0)
    assert s.category == "1"
    assert any("category 1 (benign calcification) instead of 4A" in r for r in s.reasons)
    assert s.supports_4x == []  # 4X applies to categories 3 and 4 only
    below = suggest_lung_rads(10.0, SOLID, 9.0, high - 0.01, 1.0)
    assert below.category == "4A"
    assert any("possibly calcified" in r for r in below.reasons)
    assert category(10.0, SOLID, calcification=0.2) == "4A"
    assert category(4.0, GROUND_GLASS, calcification=0.99) == "1"


def test_spiculation_is_shown_as_supporting_4x_not_decided():
    s = suggest_lung_rads(16.0, SOLID, 15.0, 0.0, 4.2)
    assert s.category == "4B"  # never 4X: that is the reader's call
    assert len(s.supports_4x) == 1 and "Near marked spiculation" in s.supports_4x[0]
    assert suggest_lung_rads(16.0, SOLID, 15.0, 0.0, 2.4).supports_4x == []
    assert suggest_lung_rads(16.0, SOLID, 15.0, 0.0, 2.5).supports_4x
    assert suggest_lung_rads(4.0, SOLID, 4.0, 0.0, 5.0).supports_4x == []  # category 2


def test_the_suggestion_says_it_is_one_and_keeps_its_inputs():
    s = suggest_lung_rads(9.27, PART_SOLID, 6.52, 0.1, 2.0, texture_score=3.4)
    assert s.category == "4A"
    assert s.wording == "Suggested Lung-RADS 4A (baseline screen) — the reader decides"
    d = s.to_dict()
    assert d["wording"] == s.wording
    assert (d["texture_class"], d["mean_diameter_mm"], d["solid_mean_diameter_mm"]) == (
        PART_SOLID,
        9.3,
        6.5,
    )
    assert d["texture_score"] == 3.4 and d["calcification_probability"] == 0.1
    text = " ".join(s.reasons)
    assert "9.3 mm" in text and "6.5 mm" in text and "3.40" in text and "prior CT" in text
    assert "-> 4A" in text


def test_solid_component_is_the_largest_dense_part_of_the_segmentation():
    spacing = (1.0, 0.5, 0.5)
    hu = np.full((9, 60, 60), -650.0)  # ground glass
    mask = np.zeros(hu.shape, dtype=bool)
    mask[1:8, 5:55, 5:55] = True
    yy, xx = np.mgrid[:60, :60]
    core = np.zeros(hu.shape, dtype=bool)
    core[3:6] = (yy - 28) ** 2 + (xx - 28) ** 2 <= 7.5**2  # an 8 mm solid disc, 3 slices
    hu[core] = 20.0
    hu[4, 50, 50] = 100.0  # a dense speck (vessel), elsewhere in the nodule
    hu[4, 2, 2] = 100.0  # dense but outside the segmentation
    measured = solid_component_mean_diameter_mm(hu, mask, spacing)
    assert measured == pytest.approx(nodule_size(core, spacing).mean_diameter_mm)
    assert 7.5 < measured < 9.0
    assert solid_component_mean_diameter_mm(np.full(hu.shape, -700.0), mask, spacing) == 0.0
    # The threshold is inclusive and documented.
    hu2 = np.where(core, SOLID_COMPONENT_HU, -700.0)
    assert solid_component_mean_diameter_mm(hu2, mask, spacing) == pytest.approx(measured)


def test_a_real_lidc_voi_carries_a_category_consistent_with_its_size(data_dir):
    """Shipped ensemble on the LIDC-IDRI-0001 VOI (a solid, spiculated 23 mm nodule)."""
    import SimpleITK as sitk

    from NoduleMalignancyLib.core.geometry import ImageGeometry
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.nodule.analysis import analyze_point

    image = sitk.ReadImage(str(data_dir / "lidc_vois" / "image" / "LIDC-IDRI-0001_R_1.nii.gz"))
    with open(data_dir / "lidc_vois" / "metadata.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["patient_id"] == "LIDC-IDRI-0001")
    point = [float(row[f"coord{a}"]) for a in "XYZ"]
    geometry = ImageGeometry.from_sitk(image)
    ens = Ensemble.load(None, device="cpu")
    r = analyze_point(sitk.GetArrayFromImage(image), geometry, point, ens, map_to_ct=False)
    lr = r.lung_rads
    assert lr is not None and lr.mean_diameter_mm == round_mm(r.mean_diameter_mm)
    assert lr.texture_class == texture_class(r.scores["texture"]) == SOLID
    assert r.calcification_probability < HIGH_CALCIFICATION_PROBABILITY
    expected = suggest_lung_rads(
        r.mean_diameter_mm,
        lr.texture_class,
        lr.solid_mean_diameter_mm,
        r.calcification_probability,
        r.scores["spiculation"],
    ).category
    assert lr.category == expected == ("4B" if lr.mean_diameter_mm >= 15.0 else "4A")
    assert lr.mean_diameter_mm > 15.0  # readers: about 23 mm
    spiculated = r.scores["spiculation"] >= SPICULATION_SUPPORTS_4X  # readers: 1 to 5
    assert len(lr.supports_4x) == spiculated
    # The solid component of a solid nodule is most of it.
    assert lr.solid_mean_diameter_mm > 0.7 * lr.mean_diameter_mm
    summary = r.summary()  # result.json: the category and its inputs under schema names
    assert summary["lung_rads"] == lr.category and summary["lung_rads_reasons"] == lr.reasons
    assert summary["lung_rads_texture_class"] == lr.texture_class
