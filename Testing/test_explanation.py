"""The shown malignancy decomposed exactly (docs/DESIGN.md §11): parts, maps, columns."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.model.fusion import (
    MALIGNANCY_PROBABILITY,
    MEASURED_FEATURES,
    apply_fusion,
    calibration_slope,
    fit_fusion,
    fit_logit_slope,
    malignancy_calibration,
)
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.nodule.evidence import COMBINED, integrate
from NoduleMalignancyLib.core.nodule.explanation import FEATURE_GROUPS, PARTS, explain_malignancy
from NoduleMalignancyLib.core.settings import shipped_models_dir
from NoduleMalignancyLib.files.samples import nodule_points_lps


def test_groups_cover_every_measurement_once():
    grouped = [f for features in FEATURE_GROUPS.values() for f in features]
    assert sorted(grouped) == sorted(MEASURED_FEATURES)
    assert PARTS[0] == "baseline" and PARTS[-1] == "image_evidence"


def _fitted_fusion(rng):
    n = 300
    head = rng.normal(size=n)
    measured = rng.normal(size=(n, len(MEASURED_FEATURES)))
    label = (head + measured[:, 0] - 0.5 * measured[:, 2] + rng.normal(size=n) > 0).astype(float)
    return fit_fusion({"malignancy": head}, measured, {MALIGNANCY_PROBABILITY: label})


def test_parts_sum_to_the_mean_fold_logit_of_the_fused_model():
    rng = np.random.default_rng(3)
    fusion = _fitted_fusion(rng)
    for _ in range(20):
        k = 5
        head = rng.normal(scale=2.0, size=k)
        measured = rng.normal(size=(k, len(MEASURED_FEATURES)))
        e = explain_malignancy(fusion, head, measured)
        fold_p = apply_fusion(fusion, MALIGNANCY_PROBABILITY, head, measured)
        fold_logit = np.log(fold_p / (1 - fold_p))
        assert sum(e.parts.values()) == pytest.approx(e.logit, abs=1e-9)
        assert e.logit == pytest.approx(fold_logit.mean(), abs=1e-9)
        assert e.mil_logit == pytest.approx(head.mean())
        assert e.parts["image_evidence"] == pytest.approx(e.image_coefficient * head.mean())
    # A positive size effect is fitted, so a larger log volume raises the size part.
    small = explain_malignancy(fusion, [0.0], np.zeros((1, len(MEASURED_FEATURES))))
    bigger = np.zeros((1, len(MEASURED_FEATURES)))
    bigger[0, 0] = 2.0
    assert explain_malignancy(fusion, [0.0], bigger).parts["size"] > small.parts["size"]


def test_calibration_slope_scales_every_part_and_keeps_the_sum():
    rng = np.random.default_rng(4)
    fusion = _fitted_fusion(rng)
    head = rng.normal(scale=2.0, size=5)
    measured = rng.normal(size=(5, len(MEASURED_FEATURES)))
    plain = explain_malignancy(fusion, head, measured)
    calibrated = explain_malignancy(
        fusion | {"calibration": {"type": "logit_slope", "logit_slope": 0.8}}, head, measured
    )
    assert calibrated.logit == pytest.approx(0.8 * plain.logit)
    assert sum(calibrated.parts.values()) == pytest.approx(calibrated.logit, abs=1e-9)
    for part in PARTS:
        assert calibrated.parts[part] == pytest.approx(0.8 * plain.parts[part], abs=1e-12)
    assert calibrated.image_coefficient == pytest.approx(0.8 * plain.image_coefficient)


def test_logit_slope_recovers_a_known_slope_and_cross_fits():
    rng = np.random.default_rng(5)
    z = rng.normal(scale=3.0, size=4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-0.5 * z))).astype(float)
    assert fit_logit_slope(z, y) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="both classes"):
        fit_logit_slope(z, np.ones_like(z))
    n = 400
    head = rng.normal(size=n)
    measured = rng.normal(size=(n, len(MEASURED_FEATURES)))
    label = (head + measured[:, 0] + rng.normal(size=n) > 0).astype(float)
    cal = malignancy_calibration(head, measured, label, np.arange(n) % 5)
    assert cal["type"] == "logit_slope" and 0.5 < cal["logit_slope"] < 1.5


def test_without_fusion_everything_is_image_evidence():
    e = explain_malignancy(None, [1.0, 3.0], np.zeros((2, len(MEASURED_FEATURES))))
    assert e.parts["image_evidence"] == e.logit == e.mil_logit == 2.0
    assert e.image_coefficient == 1.0
    assert all(e.parts[p] == 0.0 for p in PARTS if p != "image_evidence")


@pytest.fixture(scope="module")
def shipped_result(ct_0001_path, data_dir):
    image = sitk.ReadImage(str(ct_0001_path))
    ensemble = Ensemble.load(shipped_models_dir(), device="cpu")
    point = np.array(nodule_points_lps("LIDC-IDRI-0001", data_dir)[0][1])
    result = analyze_point(
        sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image), point, ensemble
    )
    return result, ensemble


def test_shipped_ensemble_explanation_and_maps_add_up(shipped_result):
    result, ensemble = shipped_result
    e = result.explanation
    assert sum(e.parts.values()) == pytest.approx(e.logit, abs=1e-6)
    fold = np.asarray(result.fold_malignancy_probabilities)
    assert e.logit == pytest.approx(np.log(fold / (1 - fold)).mean(), abs=1e-4)
    # One malignancy number: the shown probability is the explained one.
    assert result.malignancy_probability == pytest.approx(
        1 / (1 + np.exp(-sum(e.parts.values()))), abs=1e-9
    )
    model = ensemble.manifest.fusion["outputs"][MALIGNANCY_PROBABILITY]
    slope = calibration_slope(ensemble.manifest.fusion)
    assert e.image_coefficient == pytest.approx(slope * model["coef"][0] / model["scale"][0])
    voxel = result.voi_geometry.voxel_volume_mm3()
    assert integrate(result.evidence_voi[COMBINED], voxel) == pytest.approx(
        e.parts["image_evidence"], abs=1e-3 * max(1.0, abs(e.parts["image_evidence"]))
    )
    summary = result.summary()["explanation"]
    assert set(summary["parts"]) == set(PARTS) and summary["logit"] == e.logit


def test_result_carries_gate_health_per_fold_and_scale(shipped_result):
    result, ensemble = shipped_result
    gates = result.summary()["gates"]
    assert len(gates["folds"]) == len(ensemble.models)
    for fold in gates["folds"]:
        assert set(fold) == {"fine", "medium", "coarse"}
        assert sum(s["mass_share"] for s in fold.values()) == pytest.approx(1.0)
        assert all(0.0 < s["spread"] <= 1.0 + 1e-9 for s in fold.values())
