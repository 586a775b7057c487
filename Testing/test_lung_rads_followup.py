"""Lung-RADS v2022 follow-up rules (core/clinical/lung_rads_followup.py) at every threshold: new nodules
(solid 4 / 6 / 8 mm, part solid 6 mm total and 4 mm solid, non solid 30 mm), growth (> 1.5 mm
within 12 months, pro rata beyond, rounding to 0.1 mm), stepped management of stable nodules,
slow-growing ground glass; and the category table (core/clinical/lung_rads_table.py)."""

from __future__ import annotations

import pytest

from NoduleMalignancyLib.core.clinical.lung_rads import (
    GROUND_GLASS,
    PART_SOLID,
    SOLID,
    suggest_lung_rads,
)
from NoduleMalignancyLib.core.clinical.lung_rads_followup import (
    DECREASED,
    GROWING,
    NEW,
    SLOW_GROWTH,
    STABLE,
    PriorMeasurement,
    change_behavior,
    followup_lung_rads,
)
from NoduleMalignancyLib.core.clinical.lung_rads_table import (
    CATEGORY_ORDER,
    LUNG_RADS_VERSION,
    TABLE,
    more_suspicious,
    row,
)


def current(mean, texture=SOLID, solid=0.0, calcification=0.0, spiculation=1.0):
    return suggest_lung_rads(mean, texture, solid, calcification, spiculation)


def new(mean, texture=SOLID, solid=0.0, **kw):
    return followup_lung_rads(current(mean, texture, solid, **kw), None, new=True)


def after(prior_mean, mean, texture=SOLID, prior_solid=None, solid=0.0, days=365.0, **kw):
    prior = PriorMeasurement(prior_mean, prior_solid, texture, days)
    return followup_lung_rads(current(mean, texture, solid, **kw), prior)


@pytest.mark.parametrize(
    ("prior", "now", "days", "expected"),
    [
        (6.0, 7.5, 365, STABLE),  # +1.5 mm: not more than 1.5
        (6.0, 7.6, 365, GROWING),
        (6.0, 7.54, 365, STABLE),  # 7.54 rounds to 7.5
        (6.0, 7.55, 365, GROWING),  # 7.55 rounds to 7.6
        (6.0, 7.6, 90, GROWING),
        (6.0, 7.6, None, GROWING),  # interval unknown: taken as within 12 months
        (6.0, 7.6, 365.25, GROWING),
        (6.0, 8.0, 731, SLOW_GROWTH),  # +2.0 mm in 2 years: 1.0 mm per 12 months
        (6.0, 9.2, 730.5, GROWING),  # +3.2 mm in 2 years: 1.6 per 12 months
        (6.0, 9.0, 730.5, SLOW_GROWTH),  # +3.0 mm in 2 years: 1.5 per 12 months
        (6.0, 5.9, 365, DECREASED),
        (6.0, 6.0, 365, STABLE),
    ],
)
def test_growth_is_more_than_1_5_mm_within_12_months(prior, now, days, expected):
    assert change_behavior(prior, now, days) == expected


@pytest.mark.parametrize(
    ("mean", "expected"),
    [(3.9, "2"), (4.0, "3"), (5.9, "3"), (6.0, "4A"), (7.9, "4A"), (8.0, "4B"), (20.0, "4B")],
)
def test_new_solid_nodule_thresholds_4_6_8_mm(mean, expected):
    s = new(mean)
    assert (s.category, s.behavior, s.screen) == (expected, NEW, "follow-up screen")
    assert "not on the prior CT: new" in s.reasons
    assert not any("need a prior CT" in r for r in s.reasons)


@pytest.mark.parametrize(
    ("total", "solid", "expected"),
    [(5.9, 3.0, "3"), (6.0, 0.1, "4A"), (10.0, 3.9, "4A"), (10.0, 4.0, "4B"), (20.0, 9.0, "4B")],
)
def test_new_part_solid_thresholds(total, solid, expected):
    assert new(total, PART_SOLID, solid).category == expected


@pytest.mark.parametrize(("mean", "expected"), [(10.0, "2"), (29.9, "2"), (30.0, "3")])
def test_new_ground_glass_threshold_30_mm(mean, expected):
    assert new(mean, GROUND_GLASS).category == expected


@pytest.mark.parametrize(("mean", "expected"), [(5.0, "4A"), (7.9, "4A"), (8.0, "4B")])
def test_growing_solid_nodule_8_mm(mean, expected):
    s = after(mean - 2.0, mean)
    assert (s.category, s.behavior) == (expected, GROWING)
    assert any("+2.0 mm" in r and "growing" in r for r in s.reasons)


@pytest.mark.parametrize(("solid", "expected"), [(3.9, "4A"), (4.0, "4B")])
def test_part_solid_grows_by_its_solid_component_4_mm(solid, expected):
    s = after(12.0, 12.0, PART_SOLID, prior_solid=solid - 1.6, solid=solid)
    assert (s.category, s.behavior) == (expected, GROWING)
    assert any("solid component" in r and "grows by its solid component" in r for r in s.reasons)


def test_part_solid_whose_ground_glass_grows_but_not_its_solid_part_is_not_growing():
    s = after(10.0, 14.0, PART_SOLID, prior_solid=5.0, solid=5.0)
    assert s.behavior == STABLE and s.category == "2"  # prior 3 (solid part < 6), stepped


def test_a_solid_component_appearing_in_ground_glass_is_growth():
    prior = PriorMeasurement(12.0, None, GROUND_GLASS, 365.0)
    s = followup_lung_rads(current(12.0, PART_SOLID, 5.0), prior)
    assert (s.category, s.behavior) == ("4B", GROWING)


@pytest.mark.parametrize(
    ("prior_mean", "now", "expected"),
    [
        (10.0, 10.5, "3"),  # 4A at the prior, stable -> 3
        (10.0, 9.0, "3"),  # decreased -> 3
        (7.0, 7.5, "2"),  # 3 -> 2
        (5.0, 5.0, "2"),  # 2 stays 2
        (16.0, 16.5, "4B"),  # 4B stays 4B until proven benign
    ],
)
def test_stable_nodules_step_down_as_v2022_says(prior_mean, now, expected):
    assert after(prior_mean, now).category == expected


def test_slow_growing_ground_glass_stays_category_2_at_any_size():
    assert after(30.0, 33.0, GROUND_GLASS, days=1095.0).behavior == SLOW_GROWTH
    assert after(30.0, 33.0, GROUND_GLASS, days=1095.0).category == "2"
    assert after(32.0, 32.5, GROUND_GLASS).category == "2"  # stable >= 30 mm
    assert after(20.0, 25.0, GROUND_GLASS).category == "2"  # growing < 30 mm
    assert after(28.0, 31.0, GROUND_GLASS).category == "3"  # growing >= 30 mm, not slowly


def test_slow_growing_solid_nodule_is_flagged_for_multiple_exams():
    s = after(7.0, 9.0, days=900.0)  # prior category 3, slow growth
    assert s.behavior == SLOW_GROWTH and s.category == "2"
    assert any("4B if it grew over multiple screening exams" in r for r in s.reasons)


def test_interval_unknown_is_said():
    s = after(6.0, 8.0, days=None)
    assert s.category == "4B" and any("interval unknown" in r for r in s.reasons)


def test_benign_calcification_stays_category_1():
    s = after(6.0, 9.0, calcification=0.95)
    assert s.category == "1" and any("instead of 4B" in r for r in s.reasons)


def test_4x_features_follow_the_follow_up_category():
    grown = after(3.0, 5.0, spiculation=3.5)  # baseline 2 (no 4X), growing -> 4A
    assert current(5.0, spiculation=3.5).supports_4x == []
    assert grown.category == "4A" and len(grown.supports_4x) == 1
    stepped = after(5.0, 5.0, spiculation=3.5)
    assert stepped.category == "2" and stepped.supports_4x == []


def test_juxtapleural_rule_is_left_to_the_reader_for_small_solid_nodules():
    assert any("juxtapleural" in r for r in new(6.5).reasons)  # new 4A, < 10 mm
    assert any("juxtapleural" in r for r in current(9.0).reasons)  # baseline 4A
    assert not any("juxtapleural" in r for r in current(10.0).reasons)
    assert not any("juxtapleural" in r for r in new(6.5, PART_SOLID, 2.0).reasons)
    assert not any("juxtapleural" in r for r in after(5.0, 7.0).reasons)  # growing


def test_a_nodule_is_new_or_has_a_prior():
    with pytest.raises(ValueError, match="either new"):
        followup_lung_rads(current(5.0), PriorMeasurement(4.0), new=True)
    with pytest.raises(ValueError, match="either new"):
        followup_lung_rads(current(5.0), None)


def test_the_table_has_every_category_with_its_management():
    assert LUNG_RADS_VERSION == "ACR Lung-RADS v2022"
    assert set(CATEGORY_ORDER) | {"S"} == set(TABLE)
    for category in TABLE:
        r = row(category)
        assert r.descriptor and r.findings and r.management, category
    assert row("1").management == row("2").management == "12-month screening LDCT"
    assert row("3").management == "6-month LDCT"
    assert row("4A").management.startswith("3-month LDCT")
    assert "Diagnostic chest CT" in row("4B").management and "4B" in row("4X").management
    assert more_suspicious("4X", "4B") and more_suspicious("4A", "3")
    assert not more_suspicious("2", "3")
    with pytest.raises(KeyError, match="Lung-RADS"):
        row("5")
