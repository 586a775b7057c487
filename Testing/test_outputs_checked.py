"""Outputs checked before work (issue 28 finding 5, finding 8's ``analyze --out``): an output
that cannot be written is refused with exit 2 before the first row; rows computed when the
final write fails anyway go to a fallback file with a message."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.batch import predict
from NoduleMalignancyLib.core.nodule import analysis


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path no folder can be made at (its parent is a file): unwritable even for root."""
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "inside"


@pytest.fixture
def manifest(tmp_path) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(f"id,image,x,y,z\nr1,{tmp_path / 'none.nrrd'},1,2,3\n")
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any row is computed."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(predict, "predict_rows", refuse)
    monkeypatch.setattr(analysis, "analyze_point", refuse)


def _predict(manifest, tiny_dir, *extra) -> list[str]:
    argv = ["predict", "--manifest", str(manifest), "--models", str(tiny_dir), *extra]
    return argv if "--out" in extra else [*argv, "--out", str(manifest.parent / "p.csv")]


@pytest.mark.parametrize("flag", ["--out", "--masks-dir", "--dicom-out"])
def test_predict_refuses_an_unwritable_output_before_the_first_row(
    flag, blocked, manifest, tiny_dir, no_work, capsys
):
    target = blocked / "p.csv" if flag == "--out" else blocked
    assert cli.main(_predict(manifest, tiny_dir, flag, str(target))) == 2
    err = capsys.readouterr().err
    assert f"{flag} {target} cannot be written" in err and "Traceback" not in err


def test_predict_refuses_a_folder_as_out(manifest, tiny_dir, no_work, tmp_path, capsys):
    assert cli.main(_predict(manifest, tiny_dir, "--out", str(tmp_path))) == 2
    assert "is a folder" in capsys.readouterr().err


def test_analyze_refuses_an_unwritable_out_before_analysing(
    blocked, tiny_dir, ct_0001_path, no_work, capsys
):
    argv = ["analyze", "--ct", str(ct_0001_path), "--point", "0,0,0", "--out", str(blocked)]
    assert cli.main([*argv, "--models", str(tiny_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--out {blocked} cannot be written" in err and "Traceback" not in err


def test_rows_survive_a_final_write_that_fails(manifest, tiny_dir, tmp_path, monkeypatch, capsys):
    from NoduleMalignancyLib.files import csv_cells

    out = tmp_path / "p.csv"
    write = csv_cells.write_csv

    def full_disk(path, *args, **kwargs):
        if Path(path) == out:
            raise OSError(28, "No space left on device", str(path))
        return write(path, *args, **kwargs)

    monkeypatch.setattr(csv_cells, "write_csv", full_disk)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)
    assert cli.main(_predict(manifest, tiny_dir, "--out", str(out))) == 2
    err = capsys.readouterr().err
    saved = list((tmp_path / "tmp").glob("p-unsaved-*.csv"))
    assert len(saved) == 1 and str(saved[0]) in err and "No space left" in err
    rows = list(csv.DictReader(open(saved[0], newline="")))
    assert [r["id"] for r in rows] == ["r1"] and rows[0]["error"]


def test_export_and_luna25_refuse_an_unwritable_output_first(blocked, tmp_path, capsys):
    table = tmp_path / "points.csv"
    table.write_text(f"id,image,x,y,z\nr1,{tmp_path / 'none.nrrd'},1,2,3\n")
    assert cli.main(["export", "--points", str(table), "--out", str(blocked), "--quiet"]) == 2
    assert f"--out {blocked} cannot be written" in capsys.readouterr().err
    (tmp_path / "in" / "images" / "chest-ct").mkdir(parents=True)
    (tmp_path / "in" / "images" / "chest-ct" / "ct.mha").write_text("not read: refused first")
    locations = '{"type": "Multiple points", "points": [{"name": "a", "point": [1, 2, 3]}]}'
    (tmp_path / "in" / "nodule-locations.json").write_text(locations)
    assert cli.main(["luna25", "--input", str(tmp_path / "in"), "--output", str(blocked)]) == 2
    assert f"--output {blocked} cannot be written" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_refused(tmp_path, manifest, tiny_dir, no_work, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        argv = _predict(manifest, tiny_dir, "--out", str(folder / "p.csv"))
        assert cli.main(argv) == 2
        assert "cannot be written" in capsys.readouterr().err
    finally:
        folder.chmod(0o700)
