"""Size measurements and evidence-map bookkeeping on synthetic shapes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from NoduleMalignancyLib.core.model.fusion import (
    FEATURES,
    LINEAR_FEATURES,
    MALIGNANCY_PROBABILITY,
    MEASURED_FEATURES,
    MEASUREMENTS,
    apply_fusion,
    check_fusion,
    features_of,
    fit_fusion,
    fusion_oof,
    measured_features,
)
from NoduleMalignancyLib.core.model.metrics import auroc
from NoduleMalignancyLib.core.nodule.evidence import (
    COMBINED,
    evidence_maps,
    integrate,
    spread_to_voi,
)
from NoduleMalignancyLib.core.nodule.measurements import (
    CALCIFIED_HU,
    EMPTY_DENSITY,
    component_at_center,
    measure_nodule,
    nodule_density,
    nodule_size,
)

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


def test_the_component_nearest_the_centre_on_odd_and_even_shapes():
    """The shortcut through the voxels around the centre picks what the full search picks."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for _ in range(300):
        mask = rng.random(tuple(rng.integers(3, 9, 3))) < rng.uniform(0.05, 0.5)
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))  # 26-connected
        coords = np.argwhere(labels > 0)
        centre = (np.asarray(mask.shape) - 1) / 2.0
        nearest = coords[np.argmin(((coords - centre) ** 2).sum(1))]
        assert np.array_equal(component_at_center(mask), labels == labels[tuple(nearest)])


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


def test_density_mean_hu_and_calcified_fraction():
    z, y, x = _grid()
    nodule = z**2 + y**2 + x**2 <= 5.0**2
    hu = np.full(nodule.shape, -850.0)
    hu[nodule] = 30.0
    core = z**2 + y**2 + x**2 <= 2.0**2
    hu[core] = 600.0  # a central calcification
    d = nodule_density(hu, nodule)
    assert np.isclose(d.calcified_fraction, core.sum() / nodule.sum())
    assert np.isclose(d.mean_hu, hu[nodule].mean())
    assert nodule_density(hu, np.zeros_like(nodule)) == EMPTY_DENSITY
    # The threshold is inclusive: exactly CALCIFIED_HU counts as calcium.
    assert (
        nodule_density(
            np.full((2, 2, 2), CALCIFIED_HU), np.ones((2, 2, 2), bool)
        ).calcified_fraction
        == 1.0
    )


def test_shape_of_a_sphere_and_an_elongated_blurred_blob():
    z, y, x = _grid()
    r2 = z**2 + y**2 + x**2
    sphere = r2 <= 6.0**2
    hu = np.where(sphere, 40.0, -850.0)
    m = measure_nodule(hu, sphere, SPACING)
    assert m["elongation"] > 0.9
    assert m["boundary_contrast_hu"] > 800
    cigar = (x / 10.0) ** 2 + (y / 3.0) ** 2 + (z / 3.0) ** 2 <= 1
    blurred = 40.0 - 890.0 * np.clip(
        np.sqrt((x / 10) ** 2 + (y / 3) ** 2 + (z / 3) ** 2) - 0.6, 0, 1
    )
    c = measure_nodule(blurred, cigar, SPACING)
    assert c["elongation"] < 0.45 and c["compactness"] < m["compactness"]
    assert c["boundary_contrast_hu"] < m["boundary_contrast_hu"]
    # Every measurement the fusion needs is there, with the size and density ones.
    assert set(MEASUREMENTS) <= m.keys()
    assert m["volume_mm3"] == nodule_size(sphere, SPACING).volume_mm3
    empty = measure_nodule(hu, np.zeros_like(sphere), SPACING)
    assert empty["volume_mm3"] == 0 and empty["mean_hu"] == EMPTY_DENSITY.mean_hu


def _synthetic_oof(n=600, seed=2):
    """Heads that know little, measurements that decide the targets (as on LIDC)."""
    rng = np.random.default_rng(seed)
    vol = np.exp(rng.uniform(2, 9, n))
    hu = rng.uniform(-800, 100, n)
    calc = np.where(rng.random(n) < 0.15, rng.uniform(0.2, 0.9, n), 0.0)
    values = {m: rng.uniform(0.3, 1.0, n) for m in MEASUREMENTS}  # uninformative shape/margin
    values |= {
        "volume_mm3": vol,
        "diameter_mm": (6 * vol / np.pi) ** (1 / 3),
        "mean_hu": hu,
        "calcified_fraction": calc,
    }
    measured = measured_features(values)
    z = np.log(vol) - 5.5 - 8.0 * calc + rng.normal(scale=0.7, size=n)
    label = (z > 0).astype(float)
    head = 0.3 * z + rng.normal(scale=1.0, size=n)
    texture = 1 / (1 + np.exp(-(hu + 350) / 120))  # soft target from attenuation
    return (
        measured,
        {"malignancy": head, "texture": head * 0.0},
        {
            MALIGNANCY_PROBABILITY: label,
            "texture": texture,
        },
    )


def test_fusion_learns_from_the_measurements():
    measured, heads, targets = _synthetic_oof()
    fusion = fit_fusion(heads, measured, targets)
    check_fusion(fusion)
    assert set(fusion["outputs"]) == {MALIGNANCY_PROBABILITY, "texture"}
    p = apply_fusion(fusion, MALIGNANCY_PROBABILITY, heads["malignancy"], measured)
    y = targets[MALIGNANCY_PROBABILITY]
    assert auroc(y, p) > auroc(y, heads["malignancy"]) + 0.1
    # Calcium pushes towards benign, size towards malignant (standardised coefficients).
    model = fusion["outputs"][MALIGNANCY_PROBABILITY]
    assert model["features"] == list(features_of(MALIGNANCY_PROBABILITY))
    coef = dict(zip(model["features"], model["coef"], strict=True))
    assert coef["log_volume_mm3"] > 0 > coef["calcified_fraction"]
    t = apply_fusion(fusion, "texture", heads["texture"], measured)
    assert np.abs(t - targets["texture"]).mean() < 0.05
    # Without a model for an output the head's own probability is used.
    assert np.allclose(apply_fusion(fusion, "margin", [0.0], measured[:1]), 0.5)
    assert np.allclose(apply_fusion(None, "margin", [0.0], measured[:1]), 0.5)


def test_fusion_out_of_fold_is_not_fitted_on_its_own_rows():
    measured, heads, targets = _synthetic_oof(n=300)
    y = targets[MALIGNANCY_PROBABILITY]
    folds = np.arange(len(y)) % 5
    oof = fusion_oof(MALIGNANCY_PROBABILITY, heads["malignancy"], measured, y, folds)
    assert np.isfinite(oof).all() and auroc(y, oof) > 0.85
    # Changing one fold's labels leaves that fold's own out-of-fold predictions unchanged.
    y2 = y.copy()
    y2[folds == 0] = 1 - y2[folds == 0]
    oof2 = fusion_oof(MALIGNANCY_PROBABILITY, heads["malignancy"], measured, y2, folds)
    assert np.allclose(oof[folds == 0], oof2[folds == 0])
    assert not np.allclose(oof[folds == 1], oof2[folds == 1])


def test_ratings_read_squared_measurements_and_the_probability_does_not():
    """The 1-5 ratings fit a curve in each measurement (texture saturates with attenuation)."""
    measured, heads, targets = _synthetic_oof()
    fusion = fit_fusion(heads, measured, targets)
    texture = fusion["outputs"]["texture"]
    assert texture["features"] == list(FEATURES) and len(texture["coef"]) == len(FEATURES)
    assert len(texture["square_center"]) == len(MEASURED_FEATURES)
    assert "square_center" not in fusion["outputs"][MALIGNANCY_PROBABILITY]
    # A U-shaped target in one measurement: linear features cannot follow it, squares can.
    hu = measured[:, MEASURED_FEATURES.index("mean_hu")]
    u = 1 / (1 + np.exp(-(((hu - hu.mean()) / hu.std()) ** 2 - 1)))
    folds = np.arange(len(u)) % 5
    curved = fusion_oof("texture", heads["texture"], measured, u, folds)
    straight = fusion_oof(MALIGNANCY_PROBABILITY, heads["texture"], measured, u, folds)
    assert np.abs(curved - u).mean() < 0.5 * np.abs(straight - u).mean()


def test_outdated_fusion_entry_is_refused():
    with pytest.raises(ValueError, match="re-export"):
        check_fusion({"type": "logistic", "features": ["mil_logit", "log_volume_mm3"]})
    measured, heads, targets = _synthetic_oof()
    fusion = fit_fusion(heads, measured, targets)
    fusion["outputs"]["texture"]["features"] = list(LINEAR_FEATURES)  # written before squares
    with pytest.raises(ValueError, match="re-export"):
        check_fusion(fusion)
    fusion = fit_fusion(heads, measured, targets)
    fusion["outputs"]["texture"]["square_scale"] = [1.0]
    with pytest.raises(ValueError, match="square_scale"):
        check_fusion(fusion)


def test_connected_components_number_as_simpleitk_does():
    """scipy's labels (the fast path) equal SimpleITK's fully connected ones, numbering too:
    the component at the centre and the largest solid part are picked by label."""
    import SimpleITK as sitk

    from NoduleMalignancyLib.core.nodule.measurements import connected_components

    rng = np.random.default_rng(5)
    for density in (0.03, 0.2, 0.35):
        mask = rng.random((12, 20, 20)) < density
        expected = sitk.GetArrayFromImage(
            sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
        )
        assert np.array_equal(connected_components(mask), expected)


def test_measurements_on_the_mask_s_box_equal_those_on_the_whole_grid():
    """measure_nodule measures density and shape on the mask's box (a click measures six
    masks): the numbers are those of the whole grid, bit for bit, for a mask in the middle,
    one cut by the grid's faces, two pieces, with and without a shared gradient."""
    from dataclasses import asdict

    from NoduleMalignancyLib.core.nodule.measurements import (
        hu_gradient_magnitude,
        nodule_density,
        nodule_shape,
        nodule_size,
    )

    rng = np.random.default_rng(6)
    spacing = (1.0, 0.7, 0.7)
    hu = rng.normal(-700, 200, (20, 30, 30)).astype(np.float32)
    valid = np.ones(hu.shape, np.float32)
    valid[:, :, :3] = 0
    z, y, x = np.ogrid[:20, :30, :30]
    blob = ((z - 9) / 4) ** 2 + ((y - 14) / 6) ** 2 + ((x - 15) / 5) ** 2 < 1
    edge = ((z - 1) / 3) ** 2 + ((y - 14) / 5) ** 2 + ((x - 28) / 5) ** 2 < 1  # cut by 2 faces
    gradient = hu_gradient_magnitude(hu, spacing)
    for mask in (blob, edge, blob | edge):
        for shared in (gradient, None):
            size = nodule_size(mask & (valid > 0.5), spacing)
            m = mask & (valid > 0.5)
            whole = {
                **asdict(size),
                **asdict(nodule_density(hu, m)),
                **asdict(nodule_shape(hu, m, spacing, size, valid, gradient)),
            }
            assert measure_nodule(hu, mask, spacing, valid, shared) == whole
