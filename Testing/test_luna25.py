"""LUNA25 grand-challenge I/O (docs/DESIGN.md §13): a case folder in, the likelihoods file out.

The case is LIDC-IDRI-0001 written as the challenge ships it (one ``.mha`` under
``images/chest-ct/``, a "Multiple points" JSON in world LPS mm); its nodule is malignant (four
readers rated it highly suspicious). A point in the air in front of the chest and one beyond
the last slice cannot be scored: they get the default probability and a line on stderr.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.batch import luna25
from NoduleMalignancyLib.core.geometry import ImageGeometry

AIR_LPS = [14.0, -157.5, -175.0]  # anterior to the chest wall, mid-scan: about -1000 HU
OUTSIDE_LPS = [0, 0, 500]  # integers on purpose: they must come back as integers
# grand-challenge's "Multiple points" schema: additionalProperties false at both levels.
SCHEMA_DOCUMENT_KEYS = {"name", "type", "points", "version"}
SCHEMA_POINT_KEYS = {"name", "type", "point", "probability"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The machine's cores are shared: the ensemble runs on one thread here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def ct_mha(ct_0001_path, tmp_path_factory):
    """LIDC-IDRI-0001 as an uncompressed .mha (what the challenge mounts)."""
    path = tmp_path_factory.mktemp("luna25_ct") / "1.2.840.113654.mha"
    sitk.WriteImage(sitk.ReadImage(str(ct_0001_path)), str(path))
    return path


@pytest.fixture(scope="module")
def locations(data_dir):
    """The challenge's point document for the case, plus the two unscorable points."""
    table = json.loads((data_dir / "lidc_ct" / "nodule_locations_world_LPS.json").read_text())
    document = table["LIDC-IDRI-0001"]
    document["points"] += [
        {"name": "air", "point": AIR_LPS},
        {"name": "outside", "point": OUTSIDE_LPS},
    ]
    return document


def make_case(folder, ct_path=None, locations=None, clinical=None, mha_names=("ct.mha",)):
    """An input folder as grand-challenge lays it out; the CT is linked, not copied."""
    ct_dir = folder / luna25.CT_FOLDER
    ct_dir.mkdir(parents=True)
    for name in mha_names:
        if ct_path is None:
            (ct_dir / name).write_bytes(b"")
        else:
            os.symlink(ct_path, ct_dir / name)
    if locations is not None:
        text = locations if isinstance(locations, str) else json.dumps(locations)
        (folder / luna25.LOCATIONS_FILE).write_text(text)
    if clinical is not None:
        (folder / luna25.CLINICAL_FILE).write_text(clinical)
    return folder


def test_shipped_ensemble_scores_the_case_and_keeps_the_layout(ct_mha, locations, tmp_path, capsys):
    case = make_case(tmp_path / "input", ct_mha, locations, '{"age": 64, "gender": "Male"}')
    out = tmp_path / "output"
    start = time.perf_counter()
    code = cli.main(["luna25", "--input", str(case), "--output", str(out), "--device", "cpu"])
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(os.listdir(out)) == [luna25.OUTPUT_FILE]  # no temporary file left behind
    written = (out / luna25.OUTPUT_FILE).read_text()
    document = json.loads(written)

    # The layout: the input's keys in the input's order, each point gaining only probability.
    assert list(document) == list(locations) and set(document) <= SCHEMA_DOCUMENT_KEYS
    for key in ("name", "type", "version"):
        assert document[key] == locations[key]
    assert len(document["points"]) == len(locations["points"]) == 3
    for given, got in zip(locations["points"], document["points"], strict=True):
        assert list(got) == [*given, "probability"] and set(got) <= SCHEMA_POINT_KEYS
        assert got["name"] == given["name"]
        assert got["point"] == given["point"]
        assert [type(v) for v in got["point"]] == [type(v) for v in given["point"]]
        assert isinstance(got["probability"], float) and 0.0 <= got["probability"] <= 1.0
    assert '"point": [\n        0,\n        0,\n        500\n      ]' in written

    nodule, air, outside = document["points"]
    assert nodule["probability"] > 0.9, nodule  # malignant nodule, shipped ensemble
    assert air["probability"] == outside["probability"] == luna25.DEFAULT_PROBABILITY
    assert "point air: refused (no_tissue): There is no tissue" in captured.err
    assert "point outside: refused (outside_image): Point (LPS)" in captured.err
    assert "default probability 0.4844" in captured.err
    assert f"note: read {luna25.CLINICAL_FILE} (age, gender); not used" in captured.err
    assert "scored 1/3 points (2 given the default 0.4844)" in captured.out
    print(f"\nnodule probability {nodule['probability']:.4f}, luna25 run {elapsed:.1f} s")


def test_a_malformed_clinical_file_and_unnamed_points_do_not_stop_the_run(
    ct_mha, tiny_dir, tmp_path, capsys
):
    points = {"type": "Multiple points", "points": [{"point": AIR_LPS}], "name": "x"}
    case = make_case(tmp_path / "input", ct_mha, points, clinical="{not json")
    out = tmp_path / "output"
    argv = ["luna25", "--input", str(case), "--output", str(out), "--models", str(tiny_dir)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"note: {luna25.CLINICAL_FILE} could not be read" in err
    assert "point #0: refused (no_tissue)" in err
    document = json.loads((out / luna25.OUTPUT_FILE).read_text())
    # The grader's schema requires version: added when the input lacked it.
    assert document == {
        "type": "Multiple points",
        "points": [{"point": AIR_LPS, "probability": luna25.DEFAULT_PROBABILITY}],
        "name": "x",
        "version": {"major": 1, "minor": 0},
    }


def test_an_error_while_scoring_a_point_is_reported_and_defaulted(ct_mha, locations, capsys):
    image = sitk.ReadImage(str(ct_mha))
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    nodule = locations["points"][:1]
    scores = luna25.score_points(array, geometry, nodule, ensemble=object())
    assert [(s.status, s.code, s.probability) for s in scores] == [
        ("failed", "AttributeError", luna25.DEFAULT_PROBABILITY)
    ]
    assert "point LIDC-IDRI-0001_n0: failed (AttributeError):" in capsys.readouterr().err
    with pytest.raises(ValueError, match="1 scores for 2 points"):
        luna25.build_output({"points": [{"point": [0, 0, 0]}] * 2}, scores)


def test_a_point_over_the_row_timeout_gets_the_default_and_the_next_is_scored(
    ct_mha, locations, tmp_path, capsys, monkeypatch, tiny_dir
):
    """``luna25 --row-timeout``: a stuck point fails with its reason, the case goes on."""
    from NoduleMalignancyLib.core.nodule import analysis

    score = analysis.analyze_point
    first = tuple(locations["points"][0]["point"])

    def stuck_first(array, geometry, point, *args, **kwargs):
        if tuple(point) == first:
            time.sleep(60)
        return score(array, geometry, point, *args, **kwargs)

    monkeypatch.setattr(analysis, "analyze_point", stuck_first)
    two = {**locations, "points": [locations["points"][0], {**locations["points"][0]}]}
    two["points"][1]["point"] = [v + 1.0 for v in first]
    two["points"][1]["name"] = "moved"
    case = make_case(tmp_path / "in", ct_mha, two)
    start = time.perf_counter()
    argv = ["luna25", "--input", str(case), "--output", str(tmp_path / "out")]
    argv += ["--models", str(tiny_dir), "--device", "cpu"]
    assert cli.main([*argv, "--row-timeout", "10"]) == 0
    assert time.perf_counter() - start < 50
    err = capsys.readouterr().err
    name = locations["points"][0]["name"]
    assert f"point {name}: failed (row_timeout): point {name} took longer than the row" in err
    out = json.loads((tmp_path / "out" / luna25.OUTPUT_FILE).read_text())
    assert out["points"][0]["probability"] == luna25.DEFAULT_PROBABILITY
    assert "point moved: failed" not in err, "the next point is scored"


GOOD = {"name": "Points of interest", "type": "Multiple points", "points": [], "version": {}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not valid JSON"),
        ("[]", "holds a list, expected an object"),
        (json.dumps({**GOOD, "type": "Point"}), "type is 'Point', expected 'Multiple points'"),
        (json.dumps({**GOOD, "points": {}}), "points is {}, expected a list"),
        (json.dumps({**GOOD, "points": [[1, 2, 3]]}), r"points\[0\] is list, expected an object"),
        (json.dumps({**GOOD, "points": [{"point": [1, 2]}]}), r"point is \[1, 2\], expected"),
        (json.dumps({**GOOD, "points": [{"point": [1, "2", 3]}]}), "3 finite numbers"),
        (json.dumps({**GOOD, "points": [{"point": [1, True, 3]}]}), "3 finite numbers"),
        (json.dumps({**GOOD, "points": [{"point": [1, 2, float("nan")]}]}), "3 finite numbers"),
        ('{"type": "Multiple points", "points": [{"point": [1, 2, 1e999]}]}', "3 finite numbers"),
        ('{"type": "Multiple points", "points": [{"point": [1, 2, 1%s]}]}' % ("0" * 400), "finite"),
        (json.dumps({**GOOD, "points": [{"name": "a"}]}), r"point is None"),
        (json.dumps({**GOOD, "points": [{"name": 3, "point": [1, 2, 3]}]}), "name is 3"),
        (json.dumps({**GOOD, "version": "1.0"}), "version is '1.0', expected an object"),
    ],
)
def test_a_bad_points_file_is_an_input_error(tmp_path, text, message):
    case = make_case(tmp_path, locations=text)
    with pytest.raises(luna25.InputError, match=message):
        luna25.read_inputs(case)


def test_input_errors_exit_2_naming_the_folder_and_what_was_found(tmp_path, capsys):
    def run(case):
        out = tmp_path / f"out_{case.name}"
        code = cli.main(["luna25", "--input", str(case), "--output", str(out)])
        assert not out.exists()  # nothing written on an input error
        return code, capsys.readouterr().err

    code, err = run(tmp_path / "missing")
    assert code == 2 and "input folder" in err and "does not exist" in err
    code, err = run(make_case(tmp_path / "none", locations=GOOD, mha_names=()))
    assert code == 2 and "expected exactly one .mha in" in err and "found 0" in err
    assert "chest-ct" in err and "the folder is empty" in err
    two = make_case(tmp_path / "two", locations=GOOD, mha_names=("a.mha", "b.mha"))
    (two / luna25.CT_FOLDER / "notes.txt").write_text("")
    code, err = run(two)
    assert code == 2 and "found 2: a.mha, b.mha, notes.txt" in err
    code, err = run(make_case(tmp_path / "nojson"))
    assert code == 2 and f"no {luna25.LOCATIONS_FILE}" in err
    broken = make_case(tmp_path / "broken", locations=GOOD)
    (broken / luna25.CT_FOLDER / "ct.mha").write_bytes(b"not an image")
    code, err = run(broken)
    assert code == 2 and "cannot read a CT from" in err and "ct.mha" in err


def test_default_probability_is_the_training_prevalence():
    assert luna25.DEFAULT_PROBABILITY == pytest.approx(326 / 673, abs=1e-4)
    assert np.isfinite(luna25.DEFAULT_PROBABILITY) and 0 < luna25.DEFAULT_PROBABILITY < 1


def test_luna25_reproduces_predict_on_the_same_points(ct_mha, locations, tmp_path):
    """The challenge command and `predict` give the same probability to 1e-6 (issue target)."""
    import csv

    scored = [p for p in locations["points"] if p["name"] not in ("air", "outside")]
    case = make_case(tmp_path / "input", ct_mha, dict(locations, points=scored))
    out = tmp_path / "output"
    assert cli.main(["luna25", "--input", str(case), "--output", str(out), "--device", "cpu"]) == 0
    likelihoods = json.loads((out / luna25.OUTPUT_FILE).read_text())["points"]

    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "x", "y", "z"])
        for p in scored:
            w.writerow([p["name"], ct_mha, *p["point"]])
    predictions = tmp_path / "predictions.csv"
    args = ["predict", "--manifest", str(manifest), "--out", str(predictions), "--device", "cpu"]
    assert cli.main(args) == 0
    with open(predictions, newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    for p in likelihoods:
        # predict writes 6 decimals: equal to 1e-6 means within its rounding.
        assert abs(float(rows[p["name"]]["malignancy_probability"]) - p["probability"]) <= 1e-6
