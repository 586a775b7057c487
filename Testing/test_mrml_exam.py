"""The module's exam (mrml/logic.py ``exam``, docs/DESIGN.md §17): the session's analyzed
nodules, in the results table's order and under their point names, make the exam that
``nodule-malignancy exam`` writes, with the clinical inputs the reader enters."""

from __future__ import annotations

import math

import pytest


def test_the_module_reports_its_nodules_as_an_exam(
    slicer_runtime, mrml_scene, ct_0001_path, data_dir
):
    from NoduleMalignancyLib.core.clinical.brock import DEFAULT, ENTERED
    from NoduleMalignancyLib.core.clinical.lung_rads_table import row
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.result_schema import unknown_names
    from NoduleMalignancyLib.files.samples import nodule_points_lps
    from NoduleMalignancyLib.mrml.logic import InputError, NoduleMalignancyLogic

    volume = slicer_runtime.util.loadVolume(str(ct_0001_path))
    markups = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
    point = nodule_points_lps("LIDC-IDRI-0001", data_dir)[0][1]
    markups.AddControlPoint(*lps_to_ras(point), "nodule A")
    logic = NoduleMalignancyLogic(ensemble=Ensemble.load(None, device="cpu"))  # shipped
    with pytest.raises(InputError, match="Nothing to report as an exam yet"):
        logic.exam()
    output = logic.analyze(volume, markups, device="cpu")
    exam = logic.exam()
    assert unknown_names(exam) == []
    (nodule,) = exam["nodules"]
    assert nodule["name"] == "nodule A" and unknown_names(nodule) == []
    values = output.results[0].values()
    assert nodule["malignancy_probability"] == values["malignancy_probability"]
    assert nodule["assessment"] == values["assessment"]
    assert nodule["assessment"] == "assessed"  # the 23 mm nodule: it sets the category
    assert (exam["lung_rads"], exam["lung_rads_nodule"]) == (nodule["lung_rads"], "nodule A")
    assert nodule["lung_rads"] == values["lung_rads"] == "4B"  # baseline: no prior here
    assert nodule["brock_probability"] is None and "not computed" in nodule["brock"]["note"]
    entered = logic.exam(age=70, female=True, familyHistory=False)["nodules"][0]["brock"]
    assert entered["computed"] and entered["inputs"]["age"]["source"] == ENTERED
    defaults = logic.exam(useDefaults=True)["nodules"][0]["brock"]
    assert defaults["computed"] and defaults["inputs"]["female"]["source"] == DEFAULT
    assert exam["lung_rads_management"].startswith(row(exam["lung_rads"]).management)
    assert exam["emphysema"]["source"] == "measured"
    # The CT's identity heads the document (an NRRD: none known) as exam.json's does.
    assert exam["ct"] == volume.GetName() and exam["date"] is None
    assert (exam["patient_id"], exam["study_date"], exam["series_uid"]) == ("", "", "")


def test_the_module_compares_its_nodules_with_a_prior_ct(
    slicer_runtime, mrml_scene, ct_0001_path, data_dir
):
    """A prior CT volume node and the dates: the session's nodule is looked for on it (here the
    same CT loaded again, so matched, unchanged); the exam is ``exam --prior``'s document with
    both CTs' identity, and its comparison is in the results table."""
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.result_schema import unknown_names
    from NoduleMalignancyLib.files.samples import nodule_points_lps
    from NoduleMalignancyLib.mrml import parameters
    from NoduleMalignancyLib.mrml.identity import set_volume_identity
    from NoduleMalignancyLib.mrml.logic import InputError, NoduleMalignancyLogic

    volume = slicer_runtime.util.loadVolume(str(ct_0001_path))
    prior = slicer_runtime.util.loadVolume(str(ct_0001_path))
    # As the CT loader keeps them (mrml/ct_loading.py): whose CT, which series, which day.
    set_volume_identity(volume, {"patient_id": "P1", "study_date": "20250601", "series_uid": "1.1"})
    set_volume_identity(prior, {"patient_id": "P1", "study_date": "20240601", "series_uid": "1.2"})
    markups = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
    markups.AddControlPoint(*lps_to_ras(nodule_points_lps("LIDC-IDRI-0001", data_dir)[0][1]), "A")
    logic = NoduleMalignancyLogic(ensemble=Ensemble.load(None, device="cpu"))
    logic.analyze(volume, markups, device="cpu")
    with pytest.raises(InputError, match="other than the CT analyzed"):
        logic.exam(priorVolume=volume)
    with pytest.raises(InputError, match="not before the exam's date"):
        logic.exam(priorVolume=prior, priorDate="2025-07-01", examDate="2025-06-01")
    with pytest.raises(InputError, match="is not YYYY-MM-DD"):
        logic.exam(priorVolume=prior, priorDate="1 June 2024", examDate="2025-06-01")
    exam = logic.exam(priorVolume=prior, priorDate="20240601", examDate="2025-06-01", device="cpu")
    assert unknown_names(exam) == []
    prior_ct = exam["prior_ct"]
    assert prior_ct["compared"] and prior_ct["registration"]["verdict"] == "good"
    assert (prior_ct["date"], prior_ct["interval_days"]) == ("2024-06-01", 365.0)
    assert prior_ct["volume"] == prior.GetName() and prior_ct["matched"] == ["A"]
    (nodule,) = exam["nodules"]
    p = nodule["prior"]
    assert p["status"] == "matched" and p["source"] == "measured"
    assert abs(p["volume_change_percent"]) < 2.0  # the same CT: the same nodule
    assert nodule["lung_rads_screen"] == "follow-up screen"
    # Both CTs' identity (issue 31: whose CTs were compared).
    assert (exam["patient_id"], exam["series_uid"], exam["study_date"]) == ("P1", "1.1", "20250601")
    assert exam["date"] == "2025-06-01" and exam["ct"] == volume.GetName()
    assert (prior_ct["patient_id"], prior_ct["series_uid"]) == ("P1", "1.2")
    assert prior_ct["study_date"] == "20240601"
    _assert_comparison_in_the_table(logic, exam)

    # The panel's way: the prior and its dates in the parameter node (none typed: the study
    # dates), "Compare with prior".
    node = logic.getParameterNode()
    with pytest.raises(InputError, match="Choose the prior CT"):
        logic.compareWithPrior()
    parameters.write_inputs(node, parameters.PanelInputs(volume, markups, prior_volume=prior))
    again = logic.compareWithPrior(device="cpu")
    assert again["prior_ct"]["interval_days"] == 365.0 and again["prior_ct"]["matched"] == ["A"]
    _assert_comparison_in_the_table(logic, again)
    # Analyzed again: the row's comparison is emptied (it described the outline before).
    logic.analyze(volume, markups, device="cpu")
    table = node.GetNodeReference("ResultsTable").GetTable()
    assert table.GetColumnByName("prior_status").GetValue(0) == ""
    assert math.isnan(table.GetColumnByName("prior_volume_mm3").GetValue(0))
    assert logic.exam()["prior_ct"] is None  # without a prior: the baseline exam


def _assert_comparison_in_the_table(logic, exam):
    """The results table's comparison columns hold the exam's prior entry of each row."""
    from NoduleMalignancyLib.mrml.prior_table import PRIOR_COLUMNS, vdt_interval_text

    table = logic.getParameterNode().GetNodeReference("ResultsTable")
    vtable = table.GetTable()
    (nodule,) = exam["nodules"]
    p = nodule["prior"]

    def cell(name):
        return vtable.GetColumnByName(name).GetValue(0)

    assert all(vtable.GetColumnByName(name) is not None for name, *_ in PRIOR_COLUMNS)
    assert table.GetColumnTitle("prior_volume_change_percent") == "Volume change (%)"
    assert cell("point") == nodule["name"]
    assert (cell("prior_status"), cell("prior_date")) == ("matched", "2024-06-01")
    assert cell("prior_interval_days") == 365.0
    for column, key, decimals in (
        ("prior_diameter_mm", "diameter_mm", 1),
        ("prior_volume_mm3", "volume_mm3", 1),
        ("prior_mean_diameter_change_mm", "mean_diameter_change_mm", 1),
        ("prior_volume_change_percent", "volume_change_percent", 1),
    ):
        assert cell(column) == round(p[key], decimals), column
    vdt = cell("prior_vdt_days")
    assert vdt == round(p["vdt_days"]) if p["vdt_days"] is not None else math.isnan(vdt)
    assert cell("prior_vdt_interval_days") == vdt_interval_text(p)
    assert cell("followup_lung_rads") == nodule["lung_rads"]
    assert cell("followup_behavior") == nodule["lung_rads_behavior"] != ""


def test_a_new_nodule_and_a_refused_comparison_in_the_table(slicer_runtime, mrml_scene):
    """No invented numbers: a new nodule has its status and reason only, a row the exam does
    not list is left empty, a refused comparison is said in the status line."""
    from NoduleMalignancyLib.mrml.nodes import ResultNodes
    from NoduleMalignancyLib.mrml.prior_table import comparison_summary, write_prior_columns

    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "results")
    ResultNodes._set_up_table(table, None)
    for label in ("A", "B", "C"):
        row = table.AddEmptyRow()
        table.GetTable().GetColumnByName("point").SetValue(row, label)
    new = {"status": "new", "date": "2024-06-01", "interval_days": 365.0, "vdt_days": None,
           "reason": "refused at the mapped point: no nodule tissue", "warnings": []}  # fmt: skip
    grown = {"status": "matched", "date": "2024-06-01", "interval_days": 365.0,
             "diameter_mm": 8.04, "mean_diameter_mm": 7.0, "volume_mm3": 200.0,
             "mean_diameter_change_mm": 2.0, "volume_change_percent": 50.0,
             "vdt_days": 624.0, "vdt_interval_days": [600.0, 700.0], "warnings": [],
             "vdt_note": "interval from the ensemble's ratio and the 5 folds' paired ratios"}  # fmt: skip
    exam = {
        "lung_rads": "4A",
        "lung_rads_descriptor": "suspicious",
        "prior_ct": {
            "volume": "prior CT",
            "date": "2024-06-01",
            "compared": True,
            "matched": ["B"],
            "new": ["A"],
            "not_found_in_current": [],
        },  # fmt: skip
        "nodules": [
            {"name": "A", "lung_rads": "3", "lung_rads_behavior": "new", "prior": new},
            {"name": "B", "lung_rads": "4A", "lung_rads_behavior": "growing", "prior": grown},
        ],
    }
    assert write_prior_columns(table, exam) == 2
    vtable = table.GetTable()

    def cells(row, *names):
        return tuple(vtable.GetColumnByName(n).GetValue(row) for n in names)

    assert cells(0, "prior_status", "followup_lung_rads", "followup_behavior") == (
        "new",
        "3",
        "new",
    )
    assert "no nodule tissue" in cells(0, "prior_note")[0]
    assert all(math.isnan(v) for v in cells(0, "prior_volume_mm3", "prior_vdt_days"))
    assert cells(0, "prior_vdt_interval_days") == ("",)
    assert cells(1, "prior_volume_mm3", "prior_diameter_mm", "prior_vdt_days") == (200.0, 8.0, 624)
    assert cells(1, "prior_vdt_interval_days", "followup_behavior") == ("600-700", "growing")
    assert cells(2, "prior_status") == ("",) and math.isnan(cells(2, "prior_volume_mm3")[0])
    assert comparison_summary(exam) == (
        "Compared with prior CT of 2024-06-01: 1 matched, 1 new. Exam: Lung-RADS 4A suspicious."
    )
    refused = {"volume": "prior CT", "date": None, "compared": False,
               "findings": [{"level": "refused", "message": "registration failed: lung Dice 0.5"}]}  # fmt: skip
    assert comparison_summary({"prior_ct": refused}) == (
        "prior CT (no date: no VDT) was not compared: registration failed: lung Dice 0.5"
    )
