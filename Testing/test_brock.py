"""Brock (PanCan) full model with spiculation (core/clinical/brock.py, docs/DESIGN.md §17): the issue's
reference values to 0.01 percentage points, every coefficient's direction, inputs with their
sources, not computed without the clinical inputs unless with stated defaults."""

from __future__ import annotations

import math

import pytest

from NoduleMalignancyLib.core.clinical.brock import (
    COEFFICIENTS,
    DEFAULT,
    DEFAULTS,
    ENTERED,
    ESTIMATED,
    MEASURED,
    NON_SOLID,
    PART_SOLID,
    SOLID,
    BrockInput,
    brock_logit,
    brock_probability,
    brock_result,
)

WOMAN = dict(
    age=62,
    female=True,
    family_history=False,
    emphysema=False,
    size_mm=10.0,
    nodule_type=SOLID,
    upper_lobe=True,
    nodule_count=1,
    spiculation=True,
)
MAN = dict(WOMAN, female=False, upper_lobe=False, nodule_count=4, spiculation=False)


def test_the_issue_s_reference_values_to_a_hundredth_of_a_percentage_point():
    assert round(100 * brock_probability(**WOMAN), 2) == 20.10
    assert round(100 * brock_probability(**MAN), 2) == 2.51
    assert 100 * brock_probability(**WOMAN) == pytest.approx(20.10, abs=0.005)
    assert 100 * brock_probability(**MAN) == pytest.approx(2.51, abs=0.005)


def test_the_logit_is_the_published_sum_term_by_term():
    base = brock_logit(**MAN)
    size_term = COEFFICIENTS["size_transform"] * (1.0 - 1.58113883)
    assert base == pytest.approx(COEFFICIENTS["intercept"] + size_term, abs=1e-12)
    for name, change, coefficient in (
        ("age", 72, 10 * COEFFICIENTS["age_per_year_minus_62"]),
        ("female", True, COEFFICIENTS["female"]),
        ("family_history", True, COEFFICIENTS["family_history"]),
        ("emphysema", True, COEFFICIENTS["emphysema"]),
        ("nodule_type", NON_SOLID, COEFFICIENTS[NON_SOLID]),
        ("nodule_type", PART_SOLID, COEFFICIENTS[PART_SOLID]),
        ("upper_lobe", True, COEFFICIENTS["upper_lobe"]),
        ("nodule_count", 1, -3 * COEFFICIENTS["nodule_count_minus_4"]),
        ("spiculation", True, COEFFICIENTS["spiculation"]),
    ):
        assert brock_logit(**(MAN | {name: change})) - base == pytest.approx(coefficient), name


def test_size_is_centred_at_4_mm_and_raises_the_risk():
    at_4 = brock_logit(**(MAN | {"size_mm": 4.0}))
    assert at_4 == pytest.approx(COEFFICIENTS["intercept"], abs=1e-8)
    sizes = [2, 4, 6, 8, 15, 30]
    risks = [brock_probability(**(MAN | {"size_mm": s})) for s in sizes]
    assert risks == sorted(risks) and len(set(risks)) == len(risks)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size_mm": 0.0}, "above 0 mm"),
        ({"nodule_count": 0}, "at least 1"),
        ({"nodule_type": "ground-glass"}, "unknown nodule type"),
    ],
)
def test_bad_inputs_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        brock_logit(**(MAN | change))


def _image_inputs():
    return {
        "emphysema": BrockInput(False, MEASURED, "2.0 % below -950 HU"),
        "size_mm": BrockInput(10.0, MEASURED),
        "nodule_type": BrockInput(SOLID, MEASURED),
        "upper_lobe": BrockInput(True, ESTIMATED),
        "nodule_count": BrockInput(1, MEASURED),
        "spiculation": BrockInput(True, MEASURED),
    }


def test_every_input_carries_its_source_and_the_result_its_inputs():
    inputs = _image_inputs() | {
        "age": BrockInput(62, ENTERED),
        "female": BrockInput(True, ENTERED),
        "family_history": BrockInput(False, ENTERED),
    }
    r = brock_result(inputs)
    assert r.computed and r.probability == pytest.approx(brock_probability(**WOMAN))
    d = r.to_dict()
    assert d["note"] == "computed" and d["missing"] == [] and d["defaults_used"] == []
    assert {n: i["source"] for n, i in d["inputs"].items()} == {
        "age": ENTERED,
        "female": ENTERED,
        "family_history": ENTERED,
        "emphysema": MEASURED,
        "size_mm": MEASURED,
        "nodule_type": MEASURED,
        "upper_lobe": ESTIMATED,
        "nodule_count": MEASURED,
        "spiculation": MEASURED,
    }
    with pytest.raises(ValueError, match="unknown source"):
        BrockInput(1, "guessed")


def test_not_computed_without_the_clinical_inputs_unless_with_stated_defaults():
    inputs = _image_inputs() | {"age": BrockInput(70, ENTERED), "female": None}
    r = brock_result(inputs)
    assert not r.computed and r.probability is None
    assert r.missing == ["female", "family_history"]
    assert "not computed" in r.note and "female" in r.note and "family_history" in r.note
    with_defaults = brock_result(inputs, use_defaults=True)
    assert with_defaults.computed and with_defaults.defaults_used == ["female", "family_history"]
    assert with_defaults.inputs["female"].source == DEFAULT
    assert with_defaults.inputs["age"].source == ENTERED
    assert "defaults" in with_defaults.note and "female = False" in with_defaults.note
    expected = brock_probability(**(WOMAN | {"age": 70} | {n: DEFAULTS[n] for n in ("female",)}))
    assert with_defaults.probability == pytest.approx(expected)
    assert math.isclose(DEFAULTS["age"], 62)


def test_a_missing_image_input_is_an_error_not_a_default():
    inputs = _image_inputs() | {"upper_lobe": None}
    with pytest.raises(ValueError, match="upper_lobe"):
        brock_result(inputs, use_defaults=True)
    with pytest.raises(ValueError, match="unknown Brock inputs"):
        brock_result(_image_inputs() | {"smoker": BrockInput(True, ENTERED)})
