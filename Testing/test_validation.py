"""The scope layer (core/validation.py): refusals with codes, warnings that flag, on real CTs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.core.analysis import analyze_point
from NoduleMalignancyLib.core.ensemble import Ensemble
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.settings import shipped_models_dir
from NoduleMalignancyLib.core.validation import (
    REFUSALS,
    WARNINGS,
    RefusedError,
    check_image,
    check_point,
)
from NoduleMalignancyLib.files.samples import nodule_points_lps

GEOMETRY = ImageGeometry(
    (0.0, 0.0, 0.0), (0.7, 0.7, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (64, 64, 20)
)


def _refused(code, fn, *args):
    with pytest.raises(RefusedError) as caught:
        fn(*args)
    assert caught.value.code == code and code in REFUSALS
    assert len(str(caught.value)) > 40  # a sentence a radiologist can act on
    return caught.value


def test_images_that_cannot_be_answered_are_refused():
    ct = np.full((20, 64, 64), -1000, np.int16)
    ct[:, 20:40, 20:40] = 40
    assert check_image(ct, GEOMETRY) == []
    _refused("not_3d", check_image, ct[10])
    _refused("not_3d", check_image, ct[:1])
    noise = np.random.default_rng(0).integers(0, 255, size=(20, 64, 64), dtype=np.uint8)
    assert "8-bit" in str(_refused("not_ct", check_image, noise))
    _refused("not_ct", check_image, np.linspace(0, 1000, 20 * 64 * 64).reshape(20, 64, 64))
    _refused("not_ct", check_image, ct, GEOMETRY, "MR")
    _refused("no_tissue", check_image, np.full((20, 64, 64), -2048, np.int16))
    # A tight crop of a ground-glass nodule has no voxel above 0 HU and is still a CT.
    ground_glass = np.full((3, 43, 43), -950, np.int16)
    ground_glass[1, 15:28, 15:28] = -450
    assert check_image(ground_glass, GEOMETRY) == []


def test_thick_slices_are_flagged_and_air_is_refused():
    ct = np.full((20, 64, 64), -1000, np.int16)
    ct[:, 20:40, 20:40] = 40
    thick = ImageGeometry((0.0, 0.0, 0.0), (0.7, 0.7, 5.0), GEOMETRY.direction, GEOMETRY.size)
    (finding,) = check_image(ct, thick)
    assert (
        finding.code == "thick_slices" and finding.code in WARNINGS and "5.0 mm" in finding.message
    )
    check_point(ct, GEOMETRY, GEOMETRY.index_to_lps(np.array([30.0, 30.0, 10.0])))
    _refused(
        "no_tissue", check_point, ct, GEOMETRY, GEOMETRY.index_to_lps(np.array([5.0, 5.0, 10]))
    )


@pytest.fixture(scope="module")
def ct(ct_0001_path):
    image = sitk.ReadImage(str(ct_0001_path))
    return image, sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)


@pytest.fixture(scope="module")
def shipped():
    return Ensemble.load(shipped_models_dir(), device="cpu")


@pytest.fixture(scope="module")
def nodule(data_dir):
    return np.array(nodule_points_lps("LIDC-IDRI-0001", data_dir)[0][1])


def test_the_real_nodule_gets_numbers_without_warnings(ct, shipped, nodule):
    _, array, geometry = ct
    result = analyze_point(array, geometry, nodule, shipped, map_to_ct=False)
    assert result.warnings == []
    assert result.scope_figures["lung_share"] > 0.5
    assert result.summary()["warnings"] == []


def test_out_of_scope_inputs_on_the_real_ct(ct, shipped, nodule):
    image, array, geometry = ct
    # A point in the air outside the body.
    air = geometry.index_to_lps(np.array([3.0, 3.0, array.shape[0] // 2]))
    _refused("no_tissue", analyze_point, array, geometry, air, shipped)
    # A 2D slice: a message, not a numpy broadcast error.
    _refused("not_3d", analyze_point, array[60], geometry, nodule, shipped)
    # The same CT with 5 mm slices.
    spacing = (*image.GetSpacing()[:2], 5.0)
    size = (*image.GetSize()[:2], int(image.GetSize()[2] * image.GetSpacing()[2] / 5.0))
    thick = sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        spacing,
        image.GetDirection(),
        -2048.0,
    )
    result = analyze_point(
        sitk.GetArrayFromImage(thick),
        ImageGeometry.from_sitk(thick),
        nodule,
        shipped,
        map_to_ct=False,
    )
    assert "thick_slices" in [w.code for w in result.warnings]
    # A 55 mm mass in the lung (a soft-tissue ball around the nodule).
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in array.shape), indexing="ij"), -1)
    centre = np.asarray(geometry.lps_to_index(nodule))[::-1]
    distance = np.linalg.norm((grid - centre) * np.asarray(image.GetSpacing())[::-1], axis=-1)
    mass = array.copy()
    mass[distance < 27.5] = 40
    result = analyze_point(mass, geometry, nodule, shipped, map_to_ct=False)
    codes = {w.code for w in result.warnings}
    assert codes & {"exceeds_field_of_view", "segmentation_leak", "large_mass"}, codes


def test_predict_writes_warning_codes_and_refusal_codes(ct_0001_path, nodule, tmp_path, ct):
    _, array, geometry = ct
    air = geometry.index_to_lps(np.array([3.0, 3.0, array.shape[0] // 2]))
    manifest = tmp_path / "m.csv"
    rows = [("nodule", *nodule), ("air", *air)]
    manifest.write_text(
        "id,image,x,y,z\n" + "".join(f"{n},{ct_0001_path},{x},{y},{z}\n" for n, x, y, z in rows)
    )
    out = tmp_path / "p.csv"
    assert cli.main(["predict", "--manifest", str(manifest), "--out", str(out)]) == 0
    got = {r["id"]: r for r in csv.DictReader(out.open())}
    assert got["nodule"]["error"] == "" and got["nodule"]["warnings"] == ""
    assert got["air"]["error"].startswith("no_tissue: ")


def test_an_empty_segmentation_is_no_nodule_and_a_centred_one_passes():
    from NoduleMalignancyLib.core.validation import check_result

    spacing = (1.0, 0.667, 0.667)
    hu = np.full((32, 48, 48), -850.0)
    valid = np.ones_like(hu)
    centred = np.zeros(hu.shape, bool)
    centred[13:19, 19:29, 19:29] = True
    hu[centred] = 40.0
    findings, figures = check_result(centred, valid, hu, spacing, 6.7, 0.01)
    assert findings == [] and figures["point_distance_mm"] < 1.0
    assert figures["lung_share"] > 0.9
    empty = np.zeros(hu.shape, bool)
    _refused("no_nodule_at_point", check_result, empty, valid, hu, spacing, 0.0, 0.01)
    (finding,) = check_result(centred, valid, hu, spacing, 6.7, 0.3)[0]
    assert finding.code == "folds_disagree"


def test_a_click_on_normal_lung_is_no_nodule_at_the_point():
    lung = np.full((20, 64, 64), -850, np.int16)  # tissue around, but no nodule at the point
    lung[:, 20:40, 20:40] = 40
    check_point(lung, GEOMETRY, GEOMETRY.index_to_lps(np.array([30.0, 30.0, 10.0])))
    point = GEOMETRY.index_to_lps(np.array([50.0, 50.0, 10.0]))
    assert "normal lung" in str(_refused("no_nodule_at_point", check_point, lung, GEOMETRY, point))
