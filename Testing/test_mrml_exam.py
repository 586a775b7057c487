"""The module's exam (mrml/logic.py ``exam``, docs/DESIGN.md §17): the session's analyzed
nodules, in the results table's order and under their point names, make the exam that
``nodule-malignancy exam`` writes, with the clinical inputs the reader enters."""

from __future__ import annotations

import pytest


def test_the_module_reports_its_nodules_as_an_exam(
    slicer_runtime, mrml_scene, ct_0001_path, data_dir
):
    from NoduleMalignancyLib.core.brock import DEFAULT, ENTERED
    from NoduleMalignancyLib.core.ensemble import Ensemble
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.core.lung_rads_table import row
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


def test_the_module_compares_its_nodules_with_a_prior_ct(
    slicer_runtime, mrml_scene, ct_0001_path, data_dir
):
    """A prior CT volume node and the dates: the session's nodule is looked for on it (here the
    same CT loaded again, so matched, unchanged); the exam is ``exam --prior``'s document."""
    from NoduleMalignancyLib.core.ensemble import Ensemble
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.core.result_schema import unknown_names
    from NoduleMalignancyLib.files.samples import nodule_points_lps
    from NoduleMalignancyLib.mrml.logic import InputError, NoduleMalignancyLogic

    volume = slicer_runtime.util.loadVolume(str(ct_0001_path))
    prior = slicer_runtime.util.loadVolume(str(ct_0001_path))
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
    assert logic.exam()["prior_ct"] is None  # without a prior: the baseline exam
