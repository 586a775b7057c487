"""Answer tiers (core/scope/assessment.py): decided once from the scope codes, obeyed by every surface.

A point that is not assessed (probably not a lung nodule) shows no headline malignancy and no
Lung-RADS suggestion anywhere, its reason first; a flagged one shows its warning before the
numbers. One test per surface: the predict CSV, result.json, the CLI print, the report image,
the batch review page, the DICOM SR, the LUNA25 path, the MRML table and the status line.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
from test_result_schema import result  # noqa: F401 (the fixture: a real analysis)

from NoduleMalignancyLib.core.clinical.lung_rads import SOLID, suggest_lung_rads
from NoduleMalignancyLib.core.result_schema import csv_row, labelled, shown
from NoduleMalignancyLib.core.scope.assessment import (
    ASSESSED,
    FLAGGED,
    NOT_ASSESSED,
    NOT_ASSESSED_CODES,
    REFUSED,
    answer_lines,
    assess,
    assess_codes,
    withheld,
)
from NoduleMalignancyLib.core.scope.validation import WARNINGS, Finding

OFF_LUNG = Finding("outside_lung", "The point lies outside the lungs (chest wall test).")
TRUNCATED = Finding("exceeds_field_of_view", "The lesion reaches the edge (field test).")
LUNG_RADS = suggest_lung_rads(
    mean_diameter_mm=12.0,
    texture_class=SOLID,
    solid_mean_diameter_mm=12.0,
    calcification_probability=0.0,
    spiculation_score=1.0,
)


def test_the_rule_not_assessed_codes_lead_then_flags_then_assessed():
    assert set(NOT_ASSESSED_CODES) == {
        "outside_lung",
        "vessel_at_point",
        "point_off_nodule",
        "no_contrast_at_centre",
    }
    assert assess([]).tier == ASSESSED and assess([]).reason == ""
    flagged = assess([TRUNCATED])
    assert flagged.tier == FLAGGED and flagged.reason == TRUNCATED.message
    both = assess([TRUNCATED, OFF_LUNG])
    assert both.tier == NOT_ASSESSED and both.reason == OFF_LUNG.message  # the deciding one
    assert not both.answered and flagged.answered
    for code in WARNINGS:  # every warning code has a tier; the not-assessing ones exactly
        assert (assess_codes([code]).tier == NOT_ASSESSED) == (code in NOT_ASSESSED_CODES)
    assert assess_codes(["no_tissue"]).tier == REFUSED
    assert assess_codes(["", "large_mass"]).tier == FLAGGED
    assert shown("assessment", NOT_ASSESSED) == "Not assessed"  # words, not the code
    assert withheld("malignancy_probability") and withheld("malignancy_score")
    assert withheld("lung_rads") and withheld("malignancy_logit")
    assert not withheld("diameter_mm") and not withheld("assessment")


@pytest.fixture(scope="module")
def analyzed(result, ct_0001_path):  # noqa: F811 (the imported fixture)
    """A real analysis (tiny random ensemble, test_result_schema's) and its CT."""
    from NoduleMalignancyLib.core.geometry import ImageGeometry

    image = sitk.ReadImage(str(ct_0001_path))
    return result, sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)


@pytest.fixture(scope="module")
def not_assessed(analyzed):
    """The analysis with a not-assessing warning (and a Lung-RADS it must not show)."""
    return dataclasses.replace(analyzed[0], warnings=[TRUNCATED, OFF_LUNG], lung_rads=LUNG_RADS)


@pytest.fixture(scope="module")
def flagged(analyzed):
    return dataclasses.replace(analyzed[0], warnings=[TRUNCATED], lung_rads=LUNG_RADS)


def test_values_and_result_json(not_assessed, flagged):
    summary = json.loads(json.dumps(not_assessed.summary()))
    assert summary["assessment"] == NOT_ASSESSED
    assert summary["assessment_reason"] == OFF_LUNG.message
    assert summary["lung_rads"] == "" and summary["lung_rads_reasons"] == []
    assert not_assessed.suggested_lung_rads is None
    assert flagged.summary()["assessment"] == FLAGGED
    assert flagged.summary()["lung_rads"] == LUNG_RADS.category != ""


def test_analyze_point_drops_the_lung_rads_of_a_point_outside_the_lung(analyzed, tiny_dir):
    """The chest wall (LIDC-IDRI-0001's lateral chest wall muscle): not assessed, no Lung-RADS."""
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.nodule.analysis import analyze_point
    from NoduleMalignancyLib.core.scope.validation import RefusedError

    _, array, geometry = analyzed
    ensemble = Ensemble.load(tiny_dir, device="cpu")
    point = geometry.index_to_lps(np.array([80.0, 250.0, 66.0]))
    try:
        result = analyze_point(array, geometry, point, ensemble, map_to_ct=False)
    except RefusedError:
        pytest.skip("refused (no numbers at all) by this ensemble")
    assert result.assessment.tier == NOT_ASSESSED, [w.code for w in result.warnings]
    assert result.lung_rads is None and result.values()["lung_rads"] == ""


def test_predict_csv(not_assessed, flagged):
    from NoduleMalignancyLib.batch.predict import PREDICT_COLUMNS, result_columns

    assert PREDICT_COLUMNS.index("assessment") < PREDICT_COLUMNS.index("malignancy_probability")
    row = result_columns(not_assessed)
    assert row["assessment"] == NOT_ASSESSED and row["lung_rads"] == ""
    assert row["malignancy_probability"] != ""  # the numbers may stay in the CSV
    assert result_columns(flagged)["assessment"] == FLAGGED


def test_predict_csv_refused_row(analyzed, tiny_dir):
    from NoduleMalignancyLib.batch.predict import _predict_row
    from NoduleMalignancyLib.core.model.ensemble import Ensemble

    _, array, geometry = analyzed
    air = geometry.index_to_lps(np.array([256.0, 50.0, 66.0]))  # outside the body
    row = {"id": "air", "x": air[0], "y": air[1], "z": air[2]}
    rec = _predict_row(row, array, geometry, Ensemble.load(tiny_dir, device="cpu"), None, None)
    assert rec["assessment"] == REFUSED and rec["error"].startswith("no_")


def test_cli_print(not_assessed, flagged, capsys):
    from NoduleMalignancyLib import cli

    cli._print_result(not_assessed)
    out = capsys.readouterr().out
    assert out.startswith(f"Not assessed: {OFF_LUNG.message}")
    assert labelled("malignancy_probability", not_assessed.malignancy_probability) not in out
    assert "Malignancy " not in out and LUNG_RADS.wording not in out
    cli._print_result(flagged)
    out = capsys.readouterr().out
    assert out.startswith(f"Assessed, with a warning: {TRUNCATED.message}")
    assert labelled("malignancy_probability", flagged.malignancy_probability) in out
    assert LUNG_RADS.wording in out


def test_report_image(not_assessed, flagged, tmp_path):
    from NoduleMalignancyLib.files.report_image import title_text, write_report

    title = title_text(not_assessed)
    first = title.splitlines()[0]
    assert first.startswith("NOT ASSESSED") and OFF_LUNG.message in first
    assert "Malignancy " not in title and "Lung-RADS category" not in title
    assert title.count(OFF_LUNG.message) == 1  # the reason leads, not repeated as a warning
    assert TRUNCATED.message in title  # the other warning still said
    flagged_title = title_text(flagged)
    assert flagged_title.splitlines()[0] == f"WARNING exceeds_field_of_view: {TRUNCATED.message}"
    assert labelled("lung_rads", LUNG_RADS.category) in flagged_title
    hu = np.zeros(not_assessed.segmentation_mask_voi.shape, np.float32)
    assert write_report(not_assessed, hu, tmp_path / "r.png").stat().st_size > 0


def test_batch_report_page(not_assessed, flagged):
    from NoduleMalignancyLib.files.batch_report import (
        ReportHeader,
        ReportRow,
        batch_counts,
        render_report,
    )

    rows = [
        ReportRow("na", "ct.nii.gz", {"id": "na", "error": ""} | csv_row(not_assessed.values())),
        ReportRow("fl", "ct.nii.gz", {"id": "fl", "error": ""} | csv_row(flagged.values())),
    ]
    counts = batch_counts(rows)
    assert counts["not_assessed"] == 1 and counts["warned"] == 1
    page = render_report(rows, ReportHeader())
    na, fl = (
        page[page.index(f'<tr class="{k}">') :].split("</tr>")[0]
        for k in ("not-assessed", "warned")
    )
    assert "Not assessed" in na and OFF_LUNG.message in na
    assert shown("malignancy_probability", not_assessed.malignancy_probability) not in na
    assert ">4A<" not in na and f">{LUNG_RADS.category}<" not in na
    malignancy = shown("malignancy_probability", flagged.malignancy_probability)
    assert fl.index(TRUNCATED.message) < fl.index(malignancy)  # the warning first
    assert f">{LUNG_RADS.category}<" in fl


def test_dicom_sr_content(not_assessed, flagged):
    pytest.importorskip("highdicom")
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from NoduleMalignancyLib.files import dicom_outputs as do

    algorithm = hd.sr.AlgorithmIdentification(name="t", version="1")
    names = [m.name for m in do._measurements(not_assessed, algorithm)]
    assert codes.DCM.ProbabilityOfCancer not in names and do.MALIGNANCY_SD not in names
    assert do.attribute_score_code("malignancy") not in names
    assert codes.SCT.Volume in names  # the outline's size stays
    evaluations = do._evaluations(not_assessed)
    concepts = [e[0].ConceptNameCodeSequence[0].CodeValue for e in evaluations]
    assert concepts[0] == "ASSESS"
    assert evaluations[0][0].ConceptCodeSequence[0].CodeMeaning == "Not assessed"
    assert "LRSUG" not in concepts and "MALIGNAN" not in concepts
    assert {e[0].ConceptCodeSequence[0].CodeValue for e in evaluations[1:3]} == {
        "SCOPE-EFOV",
        "SCOPE-OL",
    }
    flagged_evaluations = do._evaluations(flagged)
    assert flagged_evaluations[0][0].ConceptCodeSequence[0].CodeValue == "ASSESS-F"
    assert flagged_evaluations[1][0].ConceptCodeSequence[0].CodeValue == "SCOPE-EFOV"
    assert "LRSUG" in [e[0].ConceptNameCodeSequence[0].CodeValue for e in flagged_evaluations]
    assert codes.DCM.ProbabilityOfCancer in [m.name for m in do._measurements(flagged, algorithm)]


def test_luna25_gives_the_default_and_logs_the_reason(not_assessed, flagged, monkeypatch):
    from NoduleMalignancyLib.batch import luna25
    from NoduleMalignancyLib.core.nodule import analysis

    lines = []
    for answer in (not_assessed, flagged):
        monkeypatch.setattr(analysis, "analyze_point", lambda *a, r=answer, **k: r)
        score = luna25._score_one("p", None, None, None, None)
        luna25._report(score, lines.append)
        if answer is not_assessed:
            assert score.status == NOT_ASSESSED and score.code == "outside_lung"
            assert score.probability == luna25.DEFAULT_PROBABILITY
            assert lines[-1].startswith("point p: not_assessed (outside_lung): ")
            assert OFF_LUNG.message in lines[-1] and "default probability" in lines[-1]
        else:
            assert score.scored and score.probability == flagged.malignancy_probability
            assert "exceeds_field_of_view" in lines[-1]


def test_status_line(not_assessed, flagged):
    """The module's status line and the logic's log line (core.scope.assessment.answer_lines)."""
    lines = answer_lines(not_assessed, "P-1")
    assert lines[0] == f"P-1: Not assessed (no malignancy, no Lung-RADS): {OFF_LUNG.message}"
    assert not any("Malignancy" in line or "Lung-RADS " in line for line in lines[1:])
    lines = answer_lines(flagged, "P-1")
    assert lines[0] == f"Warning: {TRUNCATED.message}"
    assert lines[1].startswith(
        f"P-1: {labelled('malignancy_probability', flagged.malignancy_probability)}"
    )
    assert lines[-1] == LUNG_RADS.wording


def test_mrml_results_table(not_assessed, flagged, mrml_scene):
    from NoduleMalignancyLib.mrml.nodes import ResultNodes
    from NoduleMalignancyLib.mrml.requests import PointRequest

    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    markups = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    nodes = ResultNodes(mrml_scene)
    table = nodes.table_node(volume, markups, [])
    for i, answer in enumerate((not_assessed, flagged)):
        point = PointRequest(f"id{i}", f"P-{i}", i, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        nodes.update_row(table, point, answer)
    vtable = table.GetTable()

    def cell(name, row):
        return vtable.GetColumnByName(name).GetValue(row)

    assert (
        cell("assessment", 0) == "Not assessed" and cell("assessment_reason", 0) == OFF_LUNG.message
    )
    assert np.isnan(cell("malignancy_probability", 0)) and np.isnan(cell("malignancy_score", 0))
    assert cell("lung_rads", 0) == ""
    assert cell("assessment", 1) == "Assessed, with a warning"
    assert cell("malignancy_probability", 1) == pytest.approx(
        100 * flagged.malignancy_probability, abs=0.06
    )
    assert cell("lung_rads", 1) == LUNG_RADS.category
