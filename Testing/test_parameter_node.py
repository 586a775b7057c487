"""The module's parameter node (mrml/parameters.py) and the widget's sync with it, headless.

The promise under test: a scene saved with the panel's inputs set (CT, point list, device,
evidence scale and opacity, analysis on placement, the prior CT and both dates) and loaded into a fresh scene gives the
inputs back, to the parameter node and through it to the panel's controls. The controls are
stand-ins (the Qt desktop application cannot run here) that hold what the .ui file offers.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from NoduleMalignancyLib.core.errors import InputError
from NoduleMalignancyLib.mrml import parameters
from NoduleMalignancyLib.mrml.parameters import PanelInputs
from NoduleMalignancyLib.mrml.roles import (
    ATTR_ROLE,
    DEVICES,
    EVIDENCE_SCALES,
    MODULE_NAME,
    PARAM_DEVICE,
    PARAM_SCALE,
    ROLE_EVIDENCE,
)

UI_FILE = (
    Path(__file__).resolve().parent.parent / "NoduleMalignancy/Resources/UI/NoduleMalignancy.ui"
)
CHOSEN = {"device": "CPU", "evidence_scale": "medium", "evidence_opacity": 0.35}
DATES = {"prior_date": "20240601", "exam_date": "2025-06-01"}  # DICOM's form is read too


def _ui_items(name: str) -> list[str]:
    root = ET.parse(UI_FILE).getroot()
    widget = next(w for w in root.iter("widget") if w.get("name") == name)
    return [item.findtext("property/string") for item in widget.iter("item")]


def _scene_with_inputs(slicer):
    """A CT-like volume, another volume and a point list, as a user would have them."""
    scene = slicer.mrmlScene
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other CT")
    slicer.util.updateVolumeFromArray(other, np.zeros((4, 8, 8), np.int16))
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "chosen CT")
    slicer.util.updateVolumeFromArray(ct, np.full((4, 8, 8), -600, np.int16))
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
    points.AddControlPoint(12.5, -40.0, 80.25, "n1")
    return ct, points


def _save_and_reload(slicer, folder: Path, suffix: str) -> None:
    """Save the scene as ``.mrb`` (one bundle) or ``.mrml`` (the data files beside it), close
    it, check nothing is left, load the saved one."""
    from NoduleMalignancyLib.mrml.runtime import reset_scene

    path = folder / f"scene{suffix}"
    if suffix == ".mrml":  # a scene file only references data: write the nodes first
        for kind, extension in (
            ("vtkMRMLScalarVolumeNode", ".nrrd"),
            ("vtkMRMLMarkupsNode", ".mrk.json"),
        ):
            for node in slicer.util.getNodesByClass(kind):
                assert slicer.util.saveNode(node, str(folder / f"{node.GetName()}{extension}"))
    assert slicer.util.saveScene(str(path))
    reset_scene()  # as closing the scene in Slicer: the singleton parameter node is reset
    cleared = parameters.read_inputs(parameters.parameter_node(slicer.mrmlScene))
    assert (
        cleared == PanelInputs()
        and slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 0
    )
    slicer.util.loadScene(str(path))


def test_the_panel_offers_what_the_parameters_accept():
    assert tuple(_ui_items("deviceComboBox")) == DEVICES
    assert tuple(_ui_items("evidenceScaleComboBox")) == EVIDENCE_SCALES


def test_every_control_the_module_uses_is_in_the_ui_file():
    """Qt cannot run here: the names the widget code reads (``self.ui.NAME``) must be widgets
    of the .ui file, the "Prior CT" section's among them."""
    import re

    module = (UI_FILE.parents[2] / "NoduleMalignancy.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", module))
    names = {w.get("name") for w in ET.parse(UI_FILE).getroot().iter("widget")}
    assert {"priorVolumeSelector", "priorDateLineEdit", "examDateLineEdit", "compareButton"} <= used
    assert used <= names, sorted(used - names)


def test_a_new_scene_has_one_parameter_node_with_the_defaults(slicer_runtime, mrml_scene):
    node = parameters.parameter_node(mrml_scene)
    assert parameters.parameter_node(mrml_scene) is node
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1
    assert node.GetAttribute("ModuleName") == MODULE_NAME
    assert parameters.read_inputs(node) == PanelInputs()


@pytest.mark.parametrize("suffix", [".mrb", ".mrml"])
def test_a_reloaded_scene_restores_the_inputs(slicer_runtime, mrml_scene, tmp_path, suffix):
    slicer = slicer_runtime
    ct, points = _scene_with_inputs(slicer)
    prior = slicer.util.getNode("other CT")
    node = parameters.parameter_node(mrml_scene)
    inputs = PanelInputs(ct, points, auto_analyze=False, prior_volume=prior, **CHOSEN, **DATES)
    parameters.write_inputs(node, inputs)

    _save_and_reload(slicer, tmp_path, suffix)

    restored = parameters.read_inputs(parameters.parameter_node(slicer.mrmlScene))
    assert restored.volume.GetName() == "chosen CT"
    assert slicer.util.arrayFromVolume(restored.volume).max() == -600
    assert restored.markups.GetName() == "Nodules"
    assert restored.markups.GetNthControlPointLabel(0) == "n1"
    np.testing.assert_allclose(restored.markups.GetNthControlPointPosition(0), (12.5, -40.0, 80.25))
    assert (restored.device, restored.evidence_scale) == (CHOSEN["device"], "medium")
    assert restored.evidence_opacity == pytest.approx(0.35)
    assert restored.auto_analyze is False
    assert restored.prior_volume.GetName() == "other CT" and restored.prior_volume is not ct
    assert (restored.prior_date, restored.exam_date) == ("2024-06-01", "2025-06-01")
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1


def test_a_bad_value_is_refused_before_anything_changes(slicer_runtime, mrml_scene):
    ct, points = _scene_with_inputs(slicer_runtime)
    node = parameters.parameter_node(mrml_scene)
    before = parameters.read_inputs(node)
    for bad, message in (
        ({"device": "TPU"}, "device 'TPU'"),
        ({"evidence_scale": "ultra"}, "evidence scale 'ultra'"),
        ({"evidence_opacity": 1.5}, "opacity 1.5"),
        ({"evidence_opacity": float("nan")}, "opacity nan"),
        ({"prior_date": "1 June 2024"}, "prior date: date '1 June 2024' is not YYYY-MM-DD"),
        ({"exam_date": "2025-13-01"}, "exam date: date '2025-13-01'"),
    ):
        with pytest.raises(InputError, match=message):
            parameters.write_inputs(node, PanelInputs(ct, points, **bad))
    assert parameters.read_inputs(node) == before
    assert node.GetNodeReference("InputVolume") is None
    parameters.write_inputs(node, PanelInputs(ct, points, device="gpu"))  # the panel's spelling
    assert node.GetParameter(PARAM_DEVICE) == "GPU"


def test_a_value_the_panel_cannot_show_falls_back_to_its_default_with_a_warning(
    slicer_runtime, mrml_scene, caplog
):
    node = parameters.parameter_node(mrml_scene)
    node.SetParameter(PARAM_SCALE, "ultra")  # e.g. a hand-edited or newer scene
    with caplog.at_level(logging.WARNING, logger=parameters.__name__):
        assert parameters.read_inputs(node).evidence_scale == "combined"
    assert "EvidenceScale" in caplog.text and "'ultra'" in caplog.text


def test_a_node_from_an_older_scene_gains_the_parameters_it_lacks(slicer_runtime, mrml_scene):
    old = slicer_runtime.vtkMRMLScriptedModuleNode()
    old.SetSingletonTag(MODULE_NAME)
    old.SetAttribute("ModuleName", MODULE_NAME)
    old.SetParameter(PARAM_SCALE, "coarse")  # the only parameter an older version stored here
    old = mrml_scene.AddNode(old)
    node = parameters.parameter_node(mrml_scene)
    assert node is old
    inputs = parameters.read_inputs(node)
    assert inputs.evidence_scale == "coarse"
    assert (inputs.device, inputs.auto_analyze) == ("auto", True)
    assert node.GetParameter(PARAM_DEVICE) == "auto"


def test_the_first_ct_of_the_scene_is_adopted_but_never_an_output(slicer_runtime, mrml_scene):
    slicer = slicer_runtime
    labels = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labels, np.zeros((2, 4, 4), np.int16))
    evidence = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "n1 evidence combined")
    evidence.SetAttribute(ATTR_ROLE, ROLE_EVIDENCE)
    node = parameters.parameter_node(mrml_scene)
    parameters.adopt_first_volume(node, mrml_scene)
    assert parameters.read_inputs(node).volume is None
    ct, _ = _scene_with_inputs(slicer)
    parameters.adopt_first_volume(node, mrml_scene)
    assert parameters.read_inputs(node).volume.GetName() == "other CT"
    parameters.write_inputs(node, PanelInputs(ct))
    parameters.adopt_first_volume(node, mrml_scene)  # a chosen CT stays chosen
    assert parameters.read_inputs(node).volume is ct


# The widget's side, with stand-ins for its controls ---------------
class _Combo:
    def __init__(self, items):
        self.items, self.currentIndex = list(items), 0

    @property
    def currentText(self):  # noqa: N802 (Qt's name)
        return self.items[self.currentIndex] if 0 <= self.currentIndex < len(self.items) else ""

    def findText(self, text):  # noqa: N802 (Qt's name)
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index):  # noqa: N802 (Qt's name)
        self.currentIndex = index


class _NodeSelector:
    def __init__(self):
        self.node = None

    def currentNode(self):  # noqa: N802 (Qt's name)
        return self.node

    def setCurrentNode(self, node):  # noqa: N802 (Qt's name)
        self.node = node


def _widget(module_file):
    """The module's widget with the .ui file's choices in stand-in controls (nothing chosen)."""
    widget = module_file.NoduleMalignancyWidget()
    widget.ui = SimpleNamespace(
        inputVolumeSelector=_NodeSelector(),
        markupsWidget=_NodeSelector(),
        deviceComboBox=_Combo(_ui_items("deviceComboBox")),
        evidenceScaleComboBox=_Combo(_ui_items("evidenceScaleComboBox")),
        opacitySliderWidget=SimpleNamespace(value=0.7),
        autoAnalyzeCheckBox=SimpleNamespace(checked=True),
        priorVolumeSelector=_NodeSelector(),
        priorDateLineEdit=SimpleNamespace(text=""),
        examDateLineEdit=SimpleNamespace(text=""),
        statusLabel=SimpleNamespace(text=""),
    )
    return widget


def test_the_widget_shows_a_reloaded_scene_and_analyzes_its_inputs(
    module_file, slicer_runtime, mrml_scene, tmp_path
):
    slicer = slicer_runtime
    ct, points = _scene_with_inputs(slicer)
    widget = _widget(module_file)
    widget.initializeParameterNode()
    assert widget.ui.inputVolumeSelector.currentNode().GetName() == "other CT"  # adopted
    # The user picks the inputs; each control's signal writes the parameter node.
    widget.ui.inputVolumeSelector.setCurrentNode(ct)
    widget.ui.markupsWidget.setCurrentNode(points)
    widget.ui.deviceComboBox.setCurrentIndex(widget.ui.deviceComboBox.findText("CPU"))
    widget.ui.evidenceScaleComboBox.setCurrentIndex(3)  # coarse
    widget.ui.opacitySliderWidget.value = 0.45
    widget.ui.autoAnalyzeCheckBox.checked = False
    widget.ui.priorVolumeSelector.setCurrentNode(slicer.util.getNode("other CT"))
    widget.ui.priorDateLineEdit.text = "2024-06-01"
    assert widget.updateParameterNodeFromGUI()
    assert widget._currentInputs() == (ct, points, "CPU")
    # A date it cannot read: said in the status line, nothing written, the panel unchanged.
    widget.ui.examDateLineEdit.text = "June 2025"
    assert not widget.updateParameterNodeFromGUI()
    assert "exam date: date 'June 2025' is not YYYY-MM-DD" in widget.ui.statusLabel.text
    assert parameters.read_inputs(widget._parameterNode).exam_date == ""
    widget.ui.examDateLineEdit.text = "20250601"
    assert widget.updateParameterNodeFromGUI()
    assert widget.ui.examDateLineEdit.text == "2025-06-01"  # stored and shown as YYYY-MM-DD
    widget.exit()

    _save_and_reload(slicer, tmp_path, ".mrb")

    fresh = _widget(module_file)
    fresh.enter()
    ui = fresh.ui
    assert ui.inputVolumeSelector.currentNode().GetName() == "chosen CT"
    assert ui.markupsWidget.currentNode().GetName() == "Nodules"
    assert (ui.deviceComboBox.currentText, ui.evidenceScaleComboBox.currentText) == (
        "CPU",
        "coarse",
    )
    assert ui.opacitySliderWidget.value == pytest.approx(0.45)
    assert ui.autoAnalyzeCheckBox.checked is False
    assert ui.priorVolumeSelector.currentNode().GetName() == "other CT"
    assert (ui.priorDateLineEdit.text, ui.examDateLineEdit.text) == ("2024-06-01", "2025-06-01")
    volume, markups, device = fresh._currentInputs()
    assert (volume.GetName(), markups.GetName(), device) == ("chosen CT", "Nodules", "CPU")
    assert fresh._observedMarkups is None  # analysis on placement is off

    # A change made elsewhere (the logic, a script) reaches the controls through the observer.
    node = parameters.parameter_node(slicer.mrmlScene)
    parameters.write_inputs(node, PanelInputs(volume, markups, auto_analyze=True))
    assert (ui.deviceComboBox.currentText, ui.autoAnalyzeCheckBox.checked) == ("auto", True)
    assert fresh._observedMarkups is markups
    fresh.exit()
    parameters.write_inputs(node, PanelInputs(volume, markups, device="GPU"))
    assert ui.deviceComboBox.currentText == "auto"  # after exit the panel no longer follows
    fresh.removeObservers()
