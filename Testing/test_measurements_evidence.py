"""Size measurements and evidence-map bookkeeping on synthetic shapes with known answers."""

from __future__ import annotations

import numpy as np

from NoduleMalignancyLib.evidence import COMBINED, evidence_maps, integrate, spread_to_voi
from NoduleMalignancyLib.fusion import apply_fusion, fit_fusion
from NoduleMalignancyLib.measurements import component_at_center, nodule_size

SPACING = (1.0, 0.667, 0.667)


def _grid(shape=(32, 48, 48)):
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = [(n - 1) / 2 for n in shape]
    return (z - c[0]) * SPACING[0], (y - c[1]) * SPACING[1], (x - c[2]) * SPACING[2]


def test_sphere_volume_and_diameter():
    z, y, x = _grid()
    r = 7.0
    mask = z**2 + y**2 + x**2 <= r**2
    s = nodule_size(mask, SPACING)
    assert abs(s.volume_mm3 - 4 / 3 * np.pi * r**3) / (4 / 3 * np.pi * r**3) < 0.03
    assert abs(s.diameter_mm - 2 * r) < 1.0
    assert abs(s.short_axis_mm - 2 * r) < 1.0


def test_ellipse_long_and_short_axis():
    z, y, x = _grid()
    mask = (x / 9.0) ** 2 + (y / 4.0) ** 2 + (z / 3.0) ** 2 <= 1
    s = nodule_size(mask, SPACING)
    assert abs(s.diameter_mm - 18.0) < 1.0
    assert abs(s.short_axis_mm - 8.0) < 1.0
    assert np.isclose(s.mean_diameter_mm, (s.diameter_mm + s.short_axis_mm) / 2)


def test_empty_mask_and_component_selection():
    assert nodule_size(np.zeros((4, 4, 4), bool), SPACING).volume_mm3 == 0
    z, y, x = _grid()
    centre = z**2 + y**2 + x**2 <= 9
    other = (z - 8) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 <= 9
    kept = component_at_center(centre | other)
    assert np.array_equal(kept, centre)


def test_spread_preserves_the_sum():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(2, 9, 4, 6, 6))
    v = spread_to_voi(c, (32, 48, 48))
    assert v.shape == (2, 9, 32, 48, 48)
    assert np.allclose(v.sum(axis=(-3, -2, -1)), c.sum(axis=(-3, -2, -1)))


def test_evidence_maps_add_up_to_the_fold_mean_logit():
    rng = np.random.default_rng(1)
    shape = (32, 48, 48)
    contributions = [rng.normal(size=(3, 9, *(n // s for n in shape))) for s in (2, 4, 8)]
    logits = sum(c.sum(axis=(-3, -2, -1)) for c in contributions)  # (K, A)
    vox = float(np.prod(SPACING))
    maps = evidence_maps(contributions, 6, shape, vox)
    assert np.isclose(integrate(maps[COMBINED], vox), logits[:, 6].mean(), rtol=1e-5, atol=1e-4)


def test_fusion_uses_size_and_logit():
    rng = np.random.default_rng(2)
    vol = np.exp(rng.uniform(2, 9, 400))
    logit = rng.normal(size=400)
    y = (np.log(vol) + 0.5 * logit + rng.normal(scale=0.5, size=400) > 5.5).astype(float)
    fusion = fit_fusion(logit, vol, y)
    p = apply_fusion(fusion, logit, vol)
    assert fusion["coef"][1] > 0 and np.all((p > 0) & (p < 1))
    assert np.allclose(apply_fusion(None, [0.0], [10.0]), 0.5)


def test_attribute_calibration_removes_a_bias_out_of_fold():
    from NoduleMalignancyLib.fusion import (
        apply_attribute_calibration,
        attribute_calibration_oof,
        fit_attribute_calibration,
    )

    rng = np.random.default_rng(3)
    t = rng.uniform(0.1, 0.9, 600)
    z = 2.5 * (np.log(t / (1 - t)) + 0.8) + rng.normal(scale=0.3, size=600)  # biased, too steep
    raw = 1 / (1 + np.exp(-z))
    cal = fit_attribute_calibration({"margin": z}, {"margin": t})
    fitted = apply_attribute_calibration(cal, "margin", z)
    assert np.abs(fitted - t).mean() < 0.5 * np.abs(raw - t).mean()
    folds = np.arange(600) % 5
    oof = attribute_calibration_oof(raw, t, folds)
    assert np.abs(oof - t).mean() < 0.5 * np.abs(raw - t).mean()
    # Without an entry the head's own probability is used.
    assert np.allclose(apply_attribute_calibration(None, "margin", [0.0]), 0.5)
