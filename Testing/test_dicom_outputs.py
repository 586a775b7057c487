"""DICOM outputs (docs/DESIGN.md §16): SEG and TID 1500 SR of LIDC-IDRI-0001 read back.

The reference for "which slice is which" is built here independently of the product: the
archive is extracted with tarfile, every header read with pydicom and the slices sorted by
their z position (the series is axial), so a SEG frame must point at the instance that holds
the same voxels as the NIfTI mask.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
import tarfile

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.core.config import ORDINAL_ATTRIBUTES
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.result_schema import score_field
from NoduleMalignancyLib.files import dicom_outputs
from NoduleMalignancyLib.files.samples import read_ct, read_ct_with_dicom, read_dicom_instances

POINT_LPS = (56.17, 86.2, -115.86)  # the LIDC-IDRI-0001 nodule


@pytest.fixture(scope="module")
def archive(data_dir):
    return data_dir / "lidc_ct" / "LIDC-IDRI-0001.tar.gz"


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory):
    """(files, headers) of the archive's slices, sorted by z here, independently."""
    folder = tmp_path_factory.mktemp("lidc_0001_dicom")
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    files = sorted(folder.rglob("*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    order = np.argsort([float(h.ImagePositionPatient[2]) for h in headers])
    return [files[i] for i in order], [headers[i] for i in order]


@pytest.fixture(scope="module")
def analyzed(archive, tmp_path_factory):
    """``analyze --dicom-out`` with the shipped ensemble: (output folder, DICOM folder)."""
    out = tmp_path_factory.mktemp("analyze")
    dicom = out / "dicom"
    point = ",".join(map(str, POINT_LPS))
    args = ["analyze", "--ct", str(archive), "--point", point, "--out", str(out)]
    assert cli.main([*args, "--dicom-out", str(dicom), "--device", "cpu"]) == 0
    return out, dicom


def test_seg_and_sr_pass_the_dicom3tools_validator(analyzed):
    """David Clunie's ``dciodvfy`` (Debian dicom3tools, installed by .ci/run) checks each file
    against its IOD: no error. Its warnings are the source CT's (the anonymised LIDC headers
    have no Study Time or Study ID, which highdicom copies) and the private coding scheme
    99NODMAL of the LIDC attributes (docs/DESIGN.md §16)."""
    _, dicom = analyzed
    for name, iod in (("seg.dcm", "Segmentation"), ("sr.dcm", "Comprehensive3DSR")):
        assert_passes_dciodvfy(dicom / name, iod)


def assert_passes_dciodvfy(path, iod: str) -> None:
    """``dciodvfy`` finds ``path`` an ``iod`` without error and with no warning but the source
    CT's missing Study ID and Study Time and the private scheme (skips where not installed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools; .ci/run does)")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    lines = (run.stdout + run.stderr).splitlines()
    assert iod in lines, lines[:5]
    assert not [line for line in lines if line.startswith("Error")], lines
    expected = ("Study ID", "Study Time", "<99NODMAL>")
    warnings = [w for w in lines if w.startswith("Warning")]
    assert not [w for w in warnings if not any(e in w for e in expected)], warnings


def _frames_by_instance(seg) -> dict[str, list[int]]:
    """Source SOP instance UID -> the SEG frame indices (0-based) derived from it."""
    frames: dict[str, list[int]] = {}
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        frames.setdefault(source.ReferencedSOPInstanceUID, []).append(i)
    return frames


def _full_nifti_mask(path, geometry: ImageGeometry) -> np.ndarray:
    mask = sitk.ReadImage(str(path))
    lo = np.rint(geometry.lps_to_index(mask.GetOrigin())).astype(int)
    full = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    m = sitk.GetArrayFromImage(mask)
    nz, ny, nx = m.shape
    full[lo[2] : lo[2] + nz, lo[1] : lo[1] + ny, lo[0] : lo[0] + nx] = m
    return full


def test_read_ct_with_dicom_keeps_the_series_headers_in_slice_order(archive, reference):
    image, headers = read_ct_with_dicom(archive)
    _, ref_headers = reference
    assert [h.SOPInstanceUID for h in headers] == [h.SOPInstanceUID for h in ref_headers]
    assert not any("PixelData" in h for h in headers)  # headers only
    geometry = ImageGeometry.from_sitk(image)
    dicom_outputs.check_slices(headers, geometry)  # slice k lies where the image's slice k does
    same = sitk.GetArrayFromImage(read_ct(archive)) == sitk.GetArrayFromImage(image)
    assert same.all()  # read_ct is unchanged
    with pytest.raises(ValueError, match="not the series"):
        dicom_outputs.check_slices(headers[::-1], geometry)


def test_dicom_instances_in_any_order_give_the_same_series(reference):
    files, ref_headers = reference
    shuffled = list(files)
    random.Random(0).shuffle(shuffled)
    image, headers = read_dicom_instances(shuffled)
    assert [h.SOPInstanceUID for h in headers] == [h.SOPInstanceUID for h in ref_headers]
    assert image.GetSize() == (512, 512, 133)


def test_seg_frames_are_the_source_slices_of_the_nifti_mask(analyzed, reference, ct_0001_path):
    out, dicom = analyzed
    _, headers = reference
    seg = hd.seg.segread(dicom / dicom_outputs.SEG_FILE)
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == 1
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Nodule.value
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    version = Ensemble.load(None, device="cpu").version
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("NoduleMalignancy", version)
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    geometry = ImageGeometry.from_sitk(sitk.ReadImage(str(ct_0001_path)))
    full = _full_nifti_mask(out / "nodule_mask.nii.gz", geometry)
    frames = _frames_by_instance(seg)
    slice_of = {h.SOPInstanceUID: k for k, h in enumerate(headers)}
    pixels = seg.pixel_array.reshape(-1, geometry.size[1], geometry.size[0])
    assert set(frames) <= set(slice_of)
    assert sorted(slice_of[uid] for uid in frames) == np.flatnonzero(full.any((1, 2))).tolist()
    for uid, indices in frames.items():
        assert len(indices) == 1
        np.testing.assert_array_equal(pixels[indices[0]], full[slice_of[uid]], err_msg=uid)
        position = seg.PerFrameFunctionalGroupsSequence[indices[0]].PlanePositionSequence[0]
        assert np.allclose(
            [float(v) for v in position.ImagePositionPatient],
            [float(v) for v in headers[slice_of[uid]].ImagePositionPatient],
        )
    assert full.sum() > 100


def test_sr_measurements_equal_result_json_and_reference_seg_and_ct(analyzed, reference):
    out, dicom = analyzed
    _, headers = reference
    result = json.loads((out / "result.json").read_text())
    seg = pydicom.dcmread(dicom / dicom_outputs.SEG_FILE)
    sr = hd.sr.srread(dicom / dicom_outputs.SR_FILE)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.PatientID == headers[0].PatientID and sr.StudyInstanceUID == seg.StudyInstanceUID
    (group,) = sr.content.get_volumetric_roi_measurement_groups()

    def value(name, derivation=None):
        found = [
            m
            for m in group.get_measurements(name=name)
            if derivation is None or (m.derivation is not None and m.derivation == derivation)
        ]
        assert found, name
        return found[0].value

    pairs = {
        "volume_mm3": value(codes.SCT.Volume),
        "diameter_mm": value(codes.SCT.LongAxis),
        "short_axis_mm": value(codes.SCT.ShortAxis),
        "mean_diameter_mm": value(codes.SCT.Diameter, codes.SCT.Mean),
        "mean_hu": value(codes.DCM.AttenuationCoefficient, codes.SCT.Mean),
        "malignancy_probability": value(codes.DCM.ProbabilityOfCancer),
        "malignancy_sd": value(dicom_outputs.MALIGNANCY_SD),
        "calcification_probability": value(dicom_outputs.CALCIFICATION_PROBABILITY),
    }
    for key, got in pairs.items():
        assert got == pytest.approx(result[key], rel=1e-9, abs=1e-12), key
    for attribute in ORDINAL_ATTRIBUTES:
        score = result[score_field(attribute)]
        assert value(dicom_outputs.attribute_score_code(attribute)) == pytest.approx(score)
    solid = result["lung_rads_solid_mean_diameter_mm"]
    assert value(dicom_outputs.SOLID_COMPONENT_DIAMETER) == solid
    units = {m.name.value: m.unit.value for m in group.get_measurements()}
    assert units[codes.SCT.Volume.value] == "mm3" and units[codes.SCT.LongAxis.value] == "mm"
    assert units[codes.DCM.AttenuationCoefficient.value] == "[hnsf'U]"
    assert units[codes.DCM.ProbabilityOfCancer.value] == "1"
    # Qualitative evaluations: the Lung-RADS suggestion and the attribute wording.
    (category,) = group.get_qualitative_evaluations(name=dicom_outputs.LUNG_RADS)
    assert category.value.value == f"LR-{result['lung_rads']}"
    assert category.value.scheme_designator == dicom_outputs.PRIVATE_SCHEME
    assert "suggested" in category.value.meaning
    (spiculation,) = group.get_qualitative_evaluations(
        name=dicom_outputs.attribute_code("spiculation")
    )
    assert spiculation.value.meaning == result["spiculation_wording"]
    # References: the segment of the SEG, its source CT instances, the CT series as evidence.
    referenced = group.referenced_segment
    assert referenced.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert referenced.referenced_segment_numbers == [1]
    assert group.tracking_uid == seg.SegmentSequence[0].TrackingUID
    sources = {s.referenced_sop_instance_uid for s in referenced.source_images_for_segmentation}
    assert sources == set(_frames_by_instance(seg))
    evidence = {
        s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence}
        for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    }
    assert evidence[headers[0].SeriesInstanceUID] == {h.SOPInstanceUID for h in headers}
    assert evidence[seg.SeriesInstanceUID] == {seg.SOPInstanceUID}
    names = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmName, recursive=True)
    versions = hd.sr.utils.find_content_items(
        group[0], name=codes.DCM.AlgorithmVersion, recursive=True
    )
    assert names and {n.TextValue for n in names} == {"NoduleMalignancy"}
    assert {v.TextValue for v in versions} == {result["model_version"]}


def test_analyze_dicom_out_needs_a_dicom_ct(tiny_dir, ct_0001_path, tmp_path, capsys):
    code = cli.main(
        ["analyze", "--ct", str(ct_0001_path), "--point", ",".join(map(str, POINT_LPS)),
         "--out", str(tmp_path / "out"), "--dicom-out", str(tmp_path / "dicom"),
         "--models", str(tiny_dir)]
    )  # fmt: skip
    assert code == 2
    assert "--dicom-out needs a DICOM CT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any analysis


def test_predict_dicom_out_writes_one_seg_and_sr_per_dicom_ct(
    tiny_dir, archive, ct_0001_path, reference, tmp_path, capsys
):
    x, y, z = POINT_LPS
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"id,image,x,y,z\nn1,{archive},{x},{y},{z}\nn2,{archive},{x + 2},{y},{z}\n"
        f"nrrd,{ct_0001_path},{x},{y},{z}\n"
    )
    dicom = tmp_path / "dicom"
    args = ["predict", "--manifest", str(manifest), "--out", str(tmp_path / "p.csv")]
    assert cli.main([*args, "--dicom-out", str(dicom), "--models", str(tiny_dir)]) == 0
    assert "is not DICOM" in capsys.readouterr().err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["error"] for r in rows] == ["", "", ""]
    assert all(r["lung_rads"] in ("1", "2", "3", "4A", "4B") for r in rows)
    (series,) = list(dicom.iterdir())
    assert series.name == reference[1][0].SeriesInstanceUID
    seg = hd.seg.segread(series / dicom_outputs.SEG_FILE)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["n1", "n2"]
    sr = hd.sr.srread(series / dicom_outputs.SR_FILE)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["n1", "n2"]
    for g, row in zip(groups, rows, strict=False):
        p = g.get_measurements(name=codes.DCM.ProbabilityOfCancer)[0].value
        assert p == pytest.approx(float(row["malignancy_probability"]), abs=1e-6)


def test_mrml_logic_exports_dicom_of_the_scene_results(
    slicer_runtime, mrml_scene, ct_0001_path, archive, data_dir, reference, tmp_path
):
    """The volume is loaded from the cached NRRD (no DICOM source): the series is given."""
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.mrml.logic import InputError, NoduleMalignancyLogic
    from NoduleMalignancyLib.mrml.selftest import random_test_ensemble

    volume = slicer_runtime.util.loadVolume(str(ct_0001_path))
    markups = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
    markups.AddControlPoint(*lps_to_ras(POINT_LPS), "nodule A")
    logic = NoduleMalignancyLogic(ensemble=random_test_ensemble())
    with pytest.raises(InputError, match="analyze a nodule first"):
        logic.exportDicom(tmp_path, archive)
    output = logic.analyze(volume, markups, device="cpu")
    result = output.results[0]
    files = logic.exportDicom(tmp_path / "dicom", archive)
    seg = hd.seg.segread(files["seg"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["nodule A"]
    _, headers = reference
    geometry = ImageGeometry.from_sitk(sitk.ReadImage(str(ct_0001_path)))
    full = dicom_outputs.mask_on_ct(result, geometry)
    slice_of = {h.SOPInstanceUID: k for k, h in enumerate(headers)}
    pixels = seg.pixel_array.reshape(-1, 512, 512)
    for uid, (index,) in _frames_by_instance(seg).items():
        np.testing.assert_array_equal(pixels[index], full[slice_of[uid]])
    sr = hd.sr.srread(files["sr"])
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    volume_mm3 = group.get_measurements(name=codes.SCT.Volume)[0].value
    assert volume_mm3 == pytest.approx(result.volume_mm3, rel=1e-9)
    with pytest.raises(InputError, match="not on this DICOM series' grid"):
        logic.exportDicom(tmp_path / "wrong", data_dir / "lidc_ct" / "LIDC-IDRI-0006.tar.gz")
    with pytest.raises(InputError, match="not a DICOM series"):
        logic.exportDicom(tmp_path / "wrong", ct_0001_path)
