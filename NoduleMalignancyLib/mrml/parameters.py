"""The module's parameter node: the panel's inputs, kept in the scene (docs/DESIGN.md §10).

Why: Slicer's scripted modules keep their state in one ``vtkMRMLScriptedModuleNode`` per scene,
so a saved scene (``.mrb`` or ``.mrml``) brings the panel back as it was: the CT, the point
list, the device, the evidence scale and opacity, analysis on placement, the prior CT and the two
dates the comparison with it uses. The widget only copies
this node to its controls and back (``updateGUIFromParameterNode`` /
``updateParameterNodeFromGUI``); what the parameters are, their defaults and their checks live
here, in the MRML layer that the headless tests run (``Testing/test_parameter_node.py``).

The CT, the point list and the prior CT are node references (``InputVolume``,
``InputMarkups``, ``PriorVolume``): the scene rewrites their IDs when it is loaded into another
scene, so they survive a reload. The dates are stored as YYYY-MM-DD ("" when not typed: the
comparison then takes each CT's own study date, core/prior/growth.py ``iso_date`` reads both forms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..core.errors import InputError
from ..core.nodule.evidence import COMBINED
from ..core.prior.growth import iso_date
from .roles import (
    ATTR_ROLE,
    DEFAULT_EVIDENCE_OPACITY,
    DEVICES,
    EVIDENCE_SCALES,
    MODULE_NAME,
    PARAM_AUTO_ANALYZE,
    PARAM_DEVICE,
    PARAM_EXAM_DATE,
    PARAM_OPACITY,
    PARAM_PRIOR_DATE,
    PARAM_SCALE,
    ROLE_MARKUPS,
    ROLE_PRIOR_VOLUME,
    ROLE_VOLUME,
)
from .slicer_api import slicer

__all__ = [
    "DEFAULTS",
    "PanelInputs",
    "adopt_first_volume",
    "parameter_node",
    "read_inputs",
    "set_evidence_opacity",
    "set_evidence_scale",
    "write_inputs",
]

log = logging.getLogger(__name__)

# Text as stored in the node (a scripted module node keeps strings).
DEFAULTS: dict[str, str] = {
    PARAM_DEVICE: "auto",
    PARAM_SCALE: COMBINED,
    PARAM_OPACITY: f"{DEFAULT_EVIDENCE_OPACITY:.3g}",
    PARAM_AUTO_ANALYZE: "true",
}


@dataclass(frozen=True)
class PanelInputs:
    """What the panel's input controls hold (plain data between the node and the widget)."""

    volume: object | None = None  # vtkMRMLScalarVolumeNode
    markups: object | None = None  # vtkMRMLMarkupsNode
    device: str = DEFAULTS[PARAM_DEVICE]
    evidence_scale: str = COMBINED
    evidence_opacity: float = DEFAULT_EVIDENCE_OPACITY
    auto_analyze: bool = True
    prior_volume: object | None = None  # vtkMRMLScalarVolumeNode of the prior CT
    prior_date: str = ""  # YYYY-MM-DD; "": the prior's study date
    exam_date: str = ""  # YYYY-MM-DD; "": the CT's study date


def parameter_node(scene):
    """The scene's singleton parameter node of the module, created with the defaults when
    missing; a node loaded from an older scene gains the parameters it lacks.

    Made directly (not through ScriptedLoadableModuleLogic, absent headless) with the singleton
    tag and ModuleName attribute Slicer uses, so the widget and the logic share one node.
    """
    node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(MODULE_NAME)
        node.SetName(scene.GenerateUniqueName(MODULE_NAME))
        node = scene.AddNode(node)
    if node.GetAttribute("ModuleName") != MODULE_NAME:
        # A new node, or a singleton that a scene close reset (Reset() drops its attributes).
        node.SetAttribute("ModuleName", MODULE_NAME)
    missing = [name for name in DEFAULTS if not node.GetParameter(name)]
    if missing:
        was = node.StartModify()
        for name in missing:
            node.SetParameter(name, DEFAULTS[name])
        node.EndModify(was)
    return node


def adopt_first_volume(node, scene) -> None:
    """A parameter node without a CT takes the scene's first scalar volume that is not one of
    the module's outputs, as Slicer's module template does: a CT loaded before the module
    opened is the input."""
    if node.GetNodeReference(ROLE_VOLUME) is not None:
        return
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        volume = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        if not volume.IsA("vtkMRMLLabelMapVolumeNode") and not volume.GetAttribute(ATTR_ROLE):
            node.SetNodeReferenceID(ROLE_VOLUME, volume.GetID())
            return


def read_inputs(node) -> PanelInputs:
    """The panel's inputs as the node holds them.

    A value the panel cannot show (a hand-edited scene, a scale of another version) is logged
    with its name and replaced by the default, so the panel still opens.
    """
    return PanelInputs(
        volume=node.GetNodeReference(ROLE_VOLUME),
        markups=node.GetNodeReference(ROLE_MARKUPS),
        device=_stored(node, PARAM_DEVICE, _device),
        evidence_scale=_stored(node, PARAM_SCALE, _scale),
        evidence_opacity=_stored(node, PARAM_OPACITY, _opacity),
        auto_analyze=_stored(node, PARAM_AUTO_ANALYZE, _flag),
        prior_volume=node.GetNodeReference(ROLE_PRIOR_VOLUME),
        prior_date=_stored_date(node, PARAM_PRIOR_DATE),
        exam_date=_stored_date(node, PARAM_EXAM_DATE),
    )


def write_inputs(node, inputs: PanelInputs) -> None:
    """Store every input (one Modified event); raises :class:`InputError` naming a bad value,
    before anything is changed."""
    device = _device(inputs.device)
    scale = _scale(inputs.evidence_scale)
    opacity = _opacity(inputs.evidence_opacity)
    prior_date = _date(inputs.prior_date, "prior date")
    exam_date = _date(inputs.exam_date, "exam date")
    was = node.StartModify()
    node.SetNodeReferenceID(ROLE_VOLUME, _node_id(inputs.volume))
    node.SetNodeReferenceID(ROLE_MARKUPS, _node_id(inputs.markups))
    node.SetParameter(PARAM_DEVICE, device)
    node.SetParameter(PARAM_SCALE, scale)
    node.SetParameter(PARAM_OPACITY, f"{opacity:.3g}")
    node.SetParameter(PARAM_AUTO_ANALYZE, "true" if inputs.auto_analyze else "false")
    node.SetNodeReferenceID(ROLE_PRIOR_VOLUME, _node_id(inputs.prior_volume))
    node.SetParameter(PARAM_PRIOR_DATE, prior_date)
    node.SetParameter(PARAM_EXAM_DATE, exam_date)
    node.EndModify(was)


def set_evidence_scale(node, scale: str) -> None:
    """Store the evidence scale shown; raises :class:`InputError` for an unknown one."""
    node.SetParameter(PARAM_SCALE, _scale(scale))


def set_evidence_opacity(node, opacity: float) -> None:
    """Store the evidence opacity (0-1); raises :class:`InputError` outside that range."""
    node.SetParameter(PARAM_OPACITY, f"{_opacity(opacity):.3g}")


def _stored(node, name: str, parse):
    text = node.GetParameter(name) or DEFAULTS[name]
    try:
        return parse(text)
    except InputError as exc:
        log.warning("parameter %s: %s; using %s", name, exc, DEFAULTS[name])
        return parse(DEFAULTS[name])


def _stored_date(node, name: str) -> str:
    try:
        return _date(node.GetParameter(name), name)
    except InputError as exc:
        log.warning("parameter %s: %s; using none", name, exc)
        return ""


def _date(value, what: str) -> str:
    """YYYY-MM-DD of a date typed as YYYY-MM-DD or YYYYMMDD; "" for none."""
    try:
        return iso_date(str(value or "").strip()) or ""
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None


def _device(value) -> str:
    for name in DEVICES:
        if str(value).strip().lower() == name.lower():
            return name
    raise InputError(f"device {value!r} is not one of {', '.join(DEVICES)}")


def _scale(value) -> str:
    if value not in EVIDENCE_SCALES:
        raise InputError(f"unknown evidence scale {value!r}; use one of {EVIDENCE_SCALES}")
    return value


def _opacity(value) -> float:
    try:
        opacity = float(value)
    except (TypeError, ValueError):
        opacity = float("nan")
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"evidence opacity {value!r} is not a number from 0 to 1")
    return opacity


def _flag(value) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise InputError(f"{value!r} is not true or false")
    return text == "true"


def _node_id(node) -> str | None:
    return None if node is None else node.GetID()
