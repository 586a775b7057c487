"""CT inputs read as they are or refused (issue 28 findings 3, 4 and 10's file parts).

Two patients' series in one folder are refused with their list and read with ``--series``;
what was read (series, patient, study date) is recorded; a truncated NIfTI, a declared size
above the limit, a pipe, an oversized archive are refused before voxels are read; extraction
folders of killed runs are removed at the next start.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.files import samples

UID = {name: record.series_instance_uid for name, record in samples.SAMPLES.items()}


@pytest.fixture(scope="module")
def two_patients(data_dir, tmp_path_factory) -> Path:
    """The slices of LIDC-IDRI-0001 and -0006 in one flat folder (the finding's layout)."""
    out = tmp_path_factory.mktemp("two_patients")
    for name in ("LIDC-IDRI-0001", "LIDC-IDRI-0006"):
        with tarfile.open(data_dir / "lidc_ct" / samples.SAMPLES[name].archive) as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.endswith(".dcm"):
                    member.name = f"{name}_{Path(member.name).name}"
                    archive.extract(member, out, filter="data")
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _unblock_later(pipe: Path) -> threading.Thread:
    """Open the pipe's writing end once a reader waits on it (within 30 s), so a reader that
    blocks on it fails the test instead of hanging the suite."""

    def run():
        for _ in range(60):
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader (yet)
                time.sleep(0.5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_folder_with_two_patients_is_refused_with_the_list(two_patients):
    with pytest.raises(ValueError, match="2 DICOM series; choose one with --series") as info:
        samples.read_ct(two_patients)
    message = str(info.value)
    assert UID["LIDC-IDRI-0001"] in message and UID["LIDC-IDRI-0006"] in message
    assert message.count("133 slices") == 2
    image = samples.read_ct(two_patients, series_uid=UID["LIDC-IDRI-0006"])
    assert image.GetMetaData("0010|0020") == "LIDC-IDRI-0006"
    assert samples.voxel_sha256(image) == samples.SAMPLES["LIDC-IDRI-0006"].voxel_sha256
    with pytest.raises(ValueError, match="no series 1.2.3"):
        samples.read_ct(two_patients, series_uid="1.2.3")


def test_analyze_refuses_two_series_and_records_the_one_chosen(
    two_patients, tiny_dir, data_dir, tmp_path, capsys
):
    point = samples.nodule_points_lps("LIDC-IDRI-0001", data_dir)[0][1]
    argv = ["analyze", "--ct", str(two_patients), "--point", ",".join(map(str, point))]
    argv += ["--out", str(tmp_path / "out"), "--models", str(tiny_dir), "--device", "cpu"]
    assert cli.main(argv) == 2
    assert "--series" in capsys.readouterr().err
    assert not (tmp_path / "out" / "result.json").exists()
    assert cli.main([*argv, "--series", UID["LIDC-IDRI-0001"]]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["series_uid"] == UID["LIDC-IDRI-0001"]
    assert result["patient_id"] == "LIDC-IDRI-0001"
    assert result["study_date"] == "20000101"


def test_predict_records_the_series_read_and_takes_a_series_column(
    two_patients, tiny_dir, data_dir, tmp_path
):
    x, y, z = samples.nodule_points_lps("LIDC-IDRI-0001", data_dir)[0][1]
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,image,x,y,z,series_uid\n"
        f"mixed,{two_patients},{x},{y},{z},\n"
        f"chosen,{two_patients},{x},{y},{z},{UID['LIDC-IDRI-0001']}\n"
    )
    out = tmp_path / "p.csv"
    argv = ["predict", "--manifest", str(manifest), "--out", str(out), "--models", str(tiny_dir)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    assert "2 DICOM series" in rows[0]["error"] and rows[0]["malignancy_probability"] == ""
    assert rows[1]["error"] == "" and rows[1]["series_uid"] == UID["LIDC-IDRI-0001"]
    assert rows[1]["patient_id"] == "LIDC-IDRI-0001" and rows[1]["study_date"] == "20000101"


def _small_image() -> sitk.Image:
    array = (np.arange(40 * 50 * 60) % 1000 - 500).astype(np.int16).reshape(40, 50, 60)
    return sitk.GetImageFromArray(array)


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_a_truncated_nifti_is_refused(tmp_path, name):
    path = tmp_path / name
    sitk.WriteImage(_small_image(), str(path))
    assert samples.read_ct(path).GetSize() == (60, 50, 40)  # whole: read
    if name.endswith(".gz"):  # 60 % of the voxel bytes, recompressed (a copy cut short)
        data = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(data[: int(len(data) * 0.6)]))
    else:
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    with pytest.raises(ValueError, match="truncated"):
        samples.read_ct(path)


def test_a_cut_gzip_stream_is_refused(tmp_path):
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_small_image(), str(path))
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    with pytest.raises(ValueError, match="damaged compressed data|truncated"):
        samples.read_ct(path)


def test_a_declared_size_above_the_limit_is_refused_before_reading(tmp_path):
    small = tmp_path / "small.nii"
    sitk.WriteImage(sitk.Image(2, 2, 2, sitk.sitkInt16), str(small))
    header = bytearray(small.read_bytes()[:352])
    header[40:56] = struct.pack("<8h", 3, 1024, 1024, 1024, 1, 1, 1, 1)
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(bytes(header)))
    assert bomb.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(ValueError, match="1024 x 1024 x 1024 voxels"):
        samples.read_ct(bomb)
    assert time.perf_counter() - start < 5


def test_a_named_pipe_is_refused_not_read(tmp_path, tiny_dir):
    pipe = tmp_path / "ct.nii"
    os.mkfifo(pipe)
    _unblock_later(pipe)
    with pytest.raises(ValueError, match="named pipe"):
        samples.read_ct(pipe)
    folder = tmp_path / "series"
    folder.mkdir()
    os.mkfifo(folder / "slice.dcm")
    _unblock_later(folder / "slice.dcm")
    with pytest.raises(ValueError, match="named pipe"):
        samples.read_ct(folder)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,image,x,y,z\npipe,{pipe},1,2,3\n")
    _unblock_later(pipe)
    out = tmp_path / "p.csv"
    argv = ["predict", "--manifest", str(manifest), "--out", str(out), "--models", str(tiny_dir)]
    assert cli.main(argv) == 1  # nothing scored, and no hang
    assert "named pipe" in next(csv.DictReader(open(out, newline="")))["error"]


def _archive(tmp_path: Path, size: int) -> Path:
    payload = tmp_path / "slice.dcm"
    payload.write_bytes(b"\0" * size)
    path = tmp_path / "ct.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(payload, arcname="series/slice.dcm")
    return path


def test_extraction_is_capped_and_leaves_nothing(tmp_path, monkeypatch):
    from NoduleMalignancyLib.files import ct_input

    monkeypatch.setattr(ct_input.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(ct_input, "MAX_EXTRACTED_BYTES", 1000)
    with pytest.raises(ValueError, match="extracts to at least 4,096 bytes"):
        samples.read_ct(_archive(tmp_path, 4096))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_killed_extraction_is_removed_at_the_next_start(tmp_path, data_dir):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    archive = data_dir / "lidc_ct" / samples.SAMPLES["LIDC-IDRI-0001"].archive
    code = (
        "import sys, time; from pathlib import Path\n"
        "from NoduleMalignancyLib.files.ct_input import extracted_archive\n"
        f"with extracted_archive(Path({str(archive)!r})) as folder:\n"
        "    print(folder, flush=True); time.sleep(600)\n"
    )
    env = os.environ | {"TMPDIR": str(tmp)}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    folder = Path(child.stdout.readline().decode().strip())
    assert folder.parent == tmp and any(folder.rglob("*.dcm"))
    child.kill()  # kill -9: no finally, no atexit
    child.wait()
    assert folder.is_dir()  # left behind ...
    old = tmp / "NoduleMalignancy-ct-abcd1234"  # an older version's folder, a day old
    old.mkdir()
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    mine = tmp / f"NoduleMalignancy-ct-{os.getpid()}-x"  # a live run's: kept
    mine.mkdir()
    from NoduleMalignancyLib.files.ct_input import remove_stale_extractions

    removed = remove_stale_extractions(tmp)  # ... until the next start
    assert sorted(removed) == sorted([folder, old]) and mine.is_dir()


def test_the_station_and_module_loader_apply_the_same_checks(mrml_scene, tmp_path, two_patients):
    """The station and the Slicer module open CTs through mrml/ct_loading, which hands NIfTI
    and NRRD straight to Slicer's reader: the checks must run there too."""
    from NoduleMalignancyLib.mrml.ct_loading import CTLoadError, load_ct_volume

    path = tmp_path / "ct.nii"
    sitk.WriteImage(_small_image(), str(path))
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    with pytest.raises(CTLoadError, match="truncated"):
        load_ct_volume(path)
    pipe = tmp_path / "pipe.nrrd"
    os.mkfifo(pipe)
    _unblock_later(pipe)
    with pytest.raises(CTLoadError, match="named pipe"):
        load_ct_volume(pipe)
    with pytest.raises(CTLoadError, match="2 DICOM series"):
        load_ct_volume(two_patients)
    volume = load_ct_volume(two_patients, series_uid=UID["LIDC-IDRI-0006"])
    assert volume.GetImageData().GetDimensions() == samples.SAMPLES["LIDC-IDRI-0006"].size_xyz


def test_the_station_app_takes_series_too():
    args = cli.build_parser().parse_args(["app", "--ct", "folder", "--series", "1.2.3"])
    assert args.series == "1.2.3"  # station/cli.py hands it to app.load -> load_ct_volume
