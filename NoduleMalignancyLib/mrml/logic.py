"""The GUI-free MRML logic: a markups point on a CT -> segment, evidence volumes, table row.

Why a separate layer: the Slicer module, the headless self-test, batch jobs and the browser
reading station all drive the same class. It touches ``slicer`` (MRML) but never Qt, never a
dialog, and never ``slicer.ScriptedLoadableModule`` (absent headless).

The work is split so a GUI can keep torch off the main thread:

* :meth:`NoduleMalignancyLogic.prepare` (main thread) reads the volume and points from MRML and
  validates them; it changes nothing in the scene;
* :meth:`NoduleMalignancyLogic.compute` (any thread) runs the ensemble on plain arrays;
* :meth:`NoduleMalignancyLogic.apply` (main thread) writes the MRML nodes.

:meth:`NoduleMalignancyLogic.analyze` chains the three and blocks. A run that raises (invalid
input, cancellation) before :meth:`apply` leaves the scene exactly as it was.

Results are keyed on (markups node, control point ID): re-analysing a moved point updates its
table row, segment and evidence volumes in place. Transforms are hardened into world
coordinates for the analysis; outputs live in the volume's local frame under the volume's
parent transform, so they stay aligned with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..core.analysis import NoduleResult, analyze_point
from ..core.config import ORDINAL_ATTRIBUTES
from ..core.evidence import COMBINED, SCALE_NAMES
from ..core.geometry import ImageGeometry, ras_to_lps
from ..core.settings import RESOURCES_DIR
from ..core.voi import PointOutsideVolumeError, sub_grid, sub_grid_offset

__all__ = [
    "MODULE_NAME",
    "EVIDENCE_SCALES",
    "TABLE_COLUMNS",
    "AnalysisCancelledError",
    "AnalysisOutput",
    "AnalysisRequest",
    "EmptyVolumeError",
    "InputError",
    "NoduleMalignancyLogic",
    "NotCTError",
    "PointOutsideError",
    "PointRequest",
]

log = logging.getLogger(__name__)

MODULE_NAME = "NoduleMalignancy"
ATTRIBUTE_PREFIX = "NoduleMalignancy."
EVIDENCE_SCALES: tuple[str, ...] = (COMBINED, *SCALE_NAMES)
EVIDENCE_COLOR_TABLE_FILE = RESOURCES_DIR / "NoduleMalignancyEvidence.ctbl"
EVIDENCE_COLOR_NODE_NAME = "NoduleMalignancyEvidence"
DEFAULT_EVIDENCE_OPACITY = 0.7

# Parameter node: reference roles and parameter names (one name per concept, see DESIGN §1).
ROLE_VOLUME = "InputVolume"
ROLE_MARKUPS = "InputMarkups"
ROLE_SEGMENTATION = "Segmentation"
ROLE_TABLE = "ResultsTable"
ROLE_EVIDENCE = "EvidenceVolume"
ROLE_COLOR = "EvidenceColorTable"
PARAM_SCALE = "EvidenceScale"
PARAM_OPACITY = "EvidenceOpacity"
PARAM_CURRENT_POINT = "CurrentPointID"

# Node references / attributes / segment tags that tie outputs to their inputs.
REF_VOLUME = "noduleMalignancyVolume"
REF_MARKUPS = "noduleMalignancyMarkups"
ATTR_POINT = ATTRIBUTE_PREFIX + "PointID"
ATTR_SCALE = ATTRIBUTE_PREFIX + "EvidenceScale"
ATTR_WINDOW = ATTRIBUTE_PREFIX + "EvidenceWindow"
ATTR_ROLE = ATTRIBUTE_PREFIX + "Role"


def score_column(attribute: str) -> str:
    """Table column of an attribute's 1-5 score: ``malignancy_score`` for malignancy (as in the
    batch CSV), so it is not mistaken for the malignancy probability beside it."""
    return "malignancy_score" if attribute == "malignancy" else attribute


# Table columns: (name, vtk type, title, unit, decimals). Names follow the CLI / JSON fields.
TABLE_COLUMNS: tuple[tuple[str, str, str, str, int], ...] = (
    ("point", "string", "Point", "", 0),
    ("point_id", "string", "Control point ID", "", 0),
    ("r", "double", "R", "mm", 2),
    ("a", "double", "A", "mm", 2),
    ("s", "double", "S", "mm", 2),
    ("malignancy_percent", "double", "Malignancy", "%", 1),
    ("malignancy_sd_percent", "double", "Malignancy spread (SD over folds)", "%", 1),
    *(
        item
        for name in ORDINAL_ATTRIBUTES
        for item in (
            (score_column(name), "double", f"{name.capitalize()} (LIDC 1-5)", "", 2),
            (f"{name}_wording", "string", f"{name.capitalize()} (LIDC)", "", 0),
        )
    ),
    ("calcification_probability", "double", "Calcification probability", "", 3),
    ("internal_structure_probability", "double", "Internal structure (not soft tissue)", "", 3),
    ("volume_mm3", "double", "Volume", "mm3", 1),
    ("diameter_mm", "double", "Diameter (longest axial)", "mm", 1),
    ("short_axis_mm", "double", "Short axis", "mm", 1),
    ("mean_diameter_mm", "double", "Mean diameter", "mm", 1),
    ("mean_hu", "double", "Mean attenuation", "HU", 0),
    ("calcified_fraction", "double", "Calcified fraction (>= 200 HU)", "", 3),
    ("model_version", "string", "Model version", "", 0),
)

# Distinct segment colours (Slicer-like palette), used in table-row order.
SEGMENT_COLORS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.85, 0.0),
    (0.0, 0.85, 0.35),
    (0.95, 0.35, 0.95),
    (0.2, 0.8, 1.0),
    (1.0, 0.5, 0.0),
    (0.55, 0.4, 1.0),
    (0.6, 1.0, 0.3),
    (1.0, 0.3, 0.45),
)


# Errors ---------------
class InputError(ValueError):
    """The input cannot be analysed; the message says why and what to do. Scene untouched."""


class NotCTError(InputError):
    """The volume does not hold CT Hounsfield units (label map, 8-bit, MR-like ranges)."""


class EmptyVolumeError(InputError):
    """The volume node has no voxels."""


class PointOutsideError(InputError, PointOutsideVolumeError):
    """A markups point lies outside the volume."""


class AnalysisCancelledError(RuntimeError):
    """The run was cancelled; nothing in the scene was changed."""


# Plain records ---------------
@dataclass(frozen=True)
class PointRequest:
    """One markups point to analyse, as read on the main thread."""

    point_id: str  # markups control point ID (stable across moves and renames)
    label: str
    index: int  # control point index at read time
    position_ras: tuple[float, float, float]  # world RAS (transforms hardened)
    point_lps: tuple[float, float, float]  # the same point in world LPS


@dataclass
class AnalysisRequest:
    """Everything :meth:`NoduleMalignancyLogic.compute` needs: plain arrays, no MRML."""

    volume_id: str
    markups_id: str
    volume_name: str
    image_zyx: np.ndarray  # (z, y, x) view of the volume's voxels
    geometry: ImageGeometry  # world LPS geometry (parent transform hardened)
    local_geometry: ImageGeometry  # the volume's own IJKToRAS (what the outputs use)
    points: list[PointRequest]


@dataclass
class AnalysisOutput:
    """What :meth:`NoduleMalignancyLogic.analyze` returns: results and the MRML nodes."""

    points: list[PointRequest]
    results: list[NoduleResult]
    segmentation_node: object
    table_node: object
    segment_ids: dict[str, str]  # point ID -> segment ID
    rows: dict[str, int]  # point ID -> table row
    evidence_nodes: dict[str, dict[str, object]]  # point ID -> scale -> volume node
    timings_s: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[float, str], None]
LogCallback = Callable[[str], None]


# Geometry helpers ---------------
def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(array[i, j]))
    return m


def _numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


# The logic ---------------
class NoduleMalignancyLogic:
    """Analyse markups points on a CT volume and keep the results in MRML.

    :param ensemble: an already loaded :class:`~NoduleMalignancyLib.core.ensemble.Ensemble` (tests,
        batch jobs); default: :meth:`Ensemble.load` on first use.
    :param modelsDir: folder of the ensemble to load (default: the shipped ``models/``).
    """

    def __init__(self, ensemble=None, modelsDir: str | Path | None = None):  # noqa: N803
        self._ensemble = ensemble
        self._models_dir = modelsDir
        self._ensemble_lock = threading.Lock()
        self.lastOutput: AnalysisOutput | None = None

    # Scene and parameter node ----------------------------------------------------------------
    @property
    def scene(self):
        """``slicer.mrmlScene``; headless, the runtime is created on first use."""
        if getattr(slicer, "mrmlScene", None) is None:
            from .runtime import ensure_slicer_runtime

            ensure_slicer_runtime()
        return slicer.mrmlScene

    def getParameterNode(self):  # noqa: N802 (Slicer API name)
        """The module's singleton ``vtkMRMLScriptedModuleNode``, created when missing.

        Made directly (not through ScriptedLoadableModuleLogic, absent headless) with the same
        singleton tag and ModuleName attribute Slicer uses, so the widget sees the same node.
        """
        scene = self.scene
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = scene.AddNode(node)
        for name, default in (
            (PARAM_SCALE, COMBINED),
            (PARAM_OPACITY, str(DEFAULT_EVIDENCE_OPACITY)),
        ):
            if not node.GetParameter(name):
                node.SetParameter(name, default)
        return node

    # Ensemble --------------------------------------------------------------------------------
    @staticmethod
    def resolveDevice(device: str | None) -> str:  # noqa: N802
        """UI names (auto / CPU / GPU) -> torch device names; raises :class:`InputError`."""
        from ..core.device import DeviceError, device_choice

        try:
            return device_choice(device)
        except DeviceError as exc:
            raise InputError(str(exc)) from None

    def setEnsemble(self, ensemble) -> None:  # noqa: N802
        """Use this ensemble from now on (e.g. a test ensemble)."""
        with self._ensemble_lock:
            self._ensemble = ensemble

    def ensemble(self, device: str = "auto"):
        """The ensemble on ``device``, loaded (and sha256-verified) on first use."""
        from ..core.ensemble import Ensemble

        name = self.resolveDevice(device)
        with self._ensemble_lock:
            if self._ensemble is None:
                self._ensemble = Ensemble.load(self._models_dir, device=name)
            else:
                self._ensemble.use(name)
            return self._ensemble

    # 1. prepare (main thread) ----------------------------------------------------------------
    def prepare(self, volumeNode, markupsNode, pointIndex=None) -> AnalysisRequest:  # noqa: N803
        """Read and validate the inputs; the scene is not changed.

        :param pointIndex: control point index, a sequence of them, or ``None`` for every
            placed point of the list.
        :raises InputError: (or a subclass) with a message that says what is wrong.
        """
        image, local, world = self._read_volume(volumeNode)
        if markupsNode is None or not markupsNode.IsA("vtkMRMLMarkupsNode"):
            raise InputError("Select a markups point list: each point marks one nodule.")
        n = markupsNode.GetNumberOfControlPoints()
        if pointIndex is None:
            indices = [
                i
                for i in range(n)
                if markupsNode.GetNthControlPointPositionStatus(i)
                == slicer.vtkMRMLMarkupsNode.PositionDefined
            ]
            if not indices:
                raise InputError(
                    f"The point list {markupsNode.GetName()!r} has no placed points: place a "
                    "point on the nodule first."
                )
        else:
            indices = [int(pointIndex)] if np.isscalar(pointIndex) else [int(i) for i in pointIndex]
            for i in indices:
                if not 0 <= i < n:
                    raise InputError(
                        f"Point index {i} does not exist in {markupsNode.GetName()!r} ({n} points)."
                    )
        points = []
        for i in indices:
            ras = np.array(markupsNode.GetNthControlPointPositionWorld(i), dtype=float)
            lps = ras_to_lps(ras)
            label = markupsNode.GetNthControlPointLabel(i) or f"point {i + 1}"
            if not world.contains_lps(lps):
                raise PointOutsideError(
                    f"Point {label!r} (RAS {np.round(ras, 1).tolist()} mm) lies outside the "
                    f"volume {volumeNode.GetName()!r}: place it on a nodule inside the CT."
                )
            points.append(
                PointRequest(
                    point_id=markupsNode.GetNthControlPointID(i),
                    label=label,
                    index=i,
                    position_ras=tuple(map(float, ras)),
                    point_lps=tuple(map(float, lps)),
                )
            )
        return AnalysisRequest(
            volume_id=volumeNode.GetID(),
            markups_id=markupsNode.GetID(),
            volume_name=volumeNode.GetName(),
            image_zyx=image,
            geometry=world,
            local_geometry=local,
            points=points,
        )

    def _read_volume(self, volumeNode):  # noqa: N803
        """Voxels (z, y, x), local and world (transform hardened) geometry; validates CT."""
        if volumeNode is None:
            raise InputError("Select the CT volume to analyse.")
        name = volumeNode.GetName()
        if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise NotCTError(f"{name!r} is a label map, not a CT: select the CT volume.")
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise NotCTError(
                f"{name!r} ({volumeNode.GetClassName()}) is not a scalar volume: select a CT."
            )
        image = volumeNode.GetImageData()
        dims = image.GetDimensions() if image is not None else (0, 0, 0)
        if image is None or min(dims) <= 0 or image.GetPointData().GetScalars() is None:
            raise EmptyVolumeError(f"The volume {name!r} is empty (no voxels): load a CT.")
        if image.GetNumberOfScalarComponents() != 1:
            raise NotCTError(
                f"{name!r} has {image.GetNumberOfScalarComponents()} components per voxel "
                "(colour or vector image), not CT Hounsfield units."
            )
        if image.GetScalarType() in (vtk.VTK_CHAR, vtk.VTK_SIGNED_CHAR, vtk.VTK_UNSIGNED_CHAR):
            raise NotCTError(
                f"{name!r} is an 8-bit image ({image.GetScalarTypeAsString()}): CT Hounsfield "
                "units need at least 16 bits. Load the original CT (DICOM/NRRD)."
            )
        lo, hi = image.GetScalarRange()
        if lo > -500.0 or hi < 0.0:
            raise NotCTError(
                f"{name!r} does not look like a CT in Hounsfield units (value range "
                f"{lo:g} .. {hi:g}; a chest CT has air near -1000 and soft tissue above 0). "
                "Rescaled or MR volumes are not supported."
            )
        ijk_to_ras = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijk_to_ras)
        local = ImageGeometry.from_ijk_to_ras(_numpy_matrix(ijk_to_ras), dims)
        transform = volumeNode.GetParentTransformNode()
        world_matrix = _numpy_matrix(ijk_to_ras)
        if transform is not None:
            if not transform.IsTransformToWorldLinear():
                raise InputError(
                    f"The volume {name!r} is under a non-linear transform "
                    f"({transform.GetName()!r}): harden the transform (Transforms module) first."
                )
            to_world = vtk.vtkMatrix4x4()
            transform.GetMatrixTransformToWorld(to_world)
            world_matrix = _numpy_matrix(to_world) @ world_matrix
        world = ImageGeometry.from_ijk_to_ras(world_matrix, dims)
        array = slicer.util.arrayFromVolume(volumeNode)
        return array, local, world

    # 2. compute (any thread) -----------------------------------------------------------------
    def compute(
        self,
        request: AnalysisRequest,
        device: str = "auto",
        progressCallback: ProgressCallback | None = None,  # noqa: N803
        logCallback: LogCallback | None = None,  # noqa: N803
        cancelEvent: threading.Event | None = None,  # noqa: N803
    ) -> list[NoduleResult]:
        """Run the ensemble for every point of the request; touches no MRML.

        Cancellation is checked before each point and at the end.
        """
        progress = progressCallback or (lambda fraction, message: None)
        say = logCallback or (lambda message: log.info("%s", message))
        self._check_cancel(cancelEvent)
        progress(0.0, "Loading the ensemble")
        ensemble = self.ensemble(device)
        results = []
        n = len(request.points)
        for i, point in enumerate(request.points):
            self._check_cancel(cancelEvent)
            progress(i / n, f"Analysing {point.label} ({i + 1}/{n})")
            result = analyze_point(
                request.image_zyx, request.geometry, point.point_lps, ensemble, map_to_ct=True
            )
            say(
                f"{point.label}: malignancy {100 * result.malignancy_probability:.1f} % "
                f"(SD {100 * result.malignancy_sd:.1f}), diameter {result.diameter_mm:.1f} mm, "
                f"{result.timings_s.get('total', 0.0):.2f} s"
            )
            results.append(result)
        self._check_cancel(cancelEvent)
        progress(1.0, "Analysis done")
        return results

    @staticmethod
    def _check_cancel(cancelEvent) -> None:  # noqa: N803
        if cancelEvent is not None and cancelEvent.is_set():
            raise AnalysisCancelledError("Analysis cancelled; the scene was not changed.")

    # 3. apply (main thread) ------------------------------------------------------------------
    def apply(
        self,
        request: AnalysisRequest,
        results: Sequence[NoduleResult],
        cancelEvent: threading.Event | None = None,  # noqa: N803
    ) -> AnalysisOutput:
        """Write the results into MRML: segment, evidence volumes and table row per point.

        Checks cancellation first (a cancelled run changes nothing). Nodes created here are
        removed again if anything fails half-way.
        """
        self._check_cancel(cancelEvent)
        t0 = time.perf_counter()
        scene = self.scene
        volume = scene.GetNodeByID(request.volume_id)
        markups = scene.GetNodeByID(request.markups_id)
        if volume is None or markups is None:
            raise InputError("The volume or point list was removed while it was being analysed.")
        if len(results) != len(request.points):
            raise ValueError("apply() needs one result per requested point")
        created: list = []
        try:
            output = self._apply(request, list(results), volume, markups, created)
        except Exception:
            for node in reversed(created):
                if node.GetScene() is scene:
                    scene.RemoveNode(node)
            raise
        output.timings_s["apply"] = time.perf_counter() - t0
        self.lastOutput = output
        return output

    def _apply(self, request, results, volume, markups, created) -> AnalysisOutput:
        scene = self.scene
        param = self.getParameterNode()
        color = self._evidence_color_node(created)
        segmentation = self._segmentation_node(volume, markups, created)
        table = self._table_node(volume, markups, created)
        segment_ids, rows, evidence = {}, {}, {}
        for point, result in zip(request.points, results, strict=True):
            rows[point.point_id] = self._update_row(table, point, result)
            segment_ids[point.point_id] = self._update_segment(
                segmentation, request, point, result, rows[point.point_id]
            )
            evidence[point.point_id] = self._update_evidence(
                request, point, result, volume, markups, color, created
            )
        self._remove_stale(markups, segmentation, table)
        # Outputs live in the volume's local frame: they follow its (current) parent transform.
        for node in [segmentation, *self._evidence_nodes(markups.GetID())]:
            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        wasModifying = param.StartModify()  # noqa: N806
        param.SetNodeReferenceID(ROLE_VOLUME, volume.GetID())
        param.SetNodeReferenceID(ROLE_MARKUPS, markups.GetID())
        param.SetNodeReferenceID(ROLE_SEGMENTATION, segmentation.GetID())
        param.SetNodeReferenceID(ROLE_TABLE, table.GetID())
        param.SetNodeReferenceID(ROLE_COLOR, color.GetID())
        param.RemoveNodeReferenceIDs(ROLE_EVIDENCE)
        for node in self._evidence_nodes(markups.GetID()):
            param.AddNodeReferenceID(ROLE_EVIDENCE, node.GetID())
        param.SetParameter(PARAM_CURRENT_POINT, request.points[-1].point_id)
        param.EndModify(wasModifying)
        self.showEvidence(request.points[-1].point_id, volumeNode=volume, markupsNode=markups)
        if scene.GetNodeByID(segmentation.GetID()) is None:  # pragma: no cover - defensive
            raise RuntimeError("segmentation node vanished during apply")
        return AnalysisOutput(
            points=list(request.points),
            results=list(results),
            segmentation_node=segmentation,
            table_node=table,
            segment_ids=segment_ids,
            rows=rows,
            evidence_nodes=evidence,
        )

    # 1 + 2 + 3 -------------------------------------------------------------------------------
    def analyze(
        self,
        volumeNode,  # noqa: N803
        markupsNode,  # noqa: N803
        pointIndex=None,  # noqa: N803
        device: str = "auto",
        progressCallback: ProgressCallback | None = None,  # noqa: N803
        logCallback: LogCallback | None = None,  # noqa: N803
        cancelEvent: threading.Event | None = None,  # noqa: N803
    ) -> AnalysisOutput:
        """Analyse the point(s) and update the MRML nodes (blocking).

        :raises InputError: invalid input (scene unchanged).
        :raises AnalysisCancelledError: ``cancelEvent`` was set (scene unchanged).
        """
        t0 = time.perf_counter()
        self.resolveDevice(device)
        request = self.prepare(volumeNode, markupsNode, pointIndex)
        t1 = time.perf_counter()
        results = self.compute(request, device, progressCallback, logCallback, cancelEvent)
        t2 = time.perf_counter()
        output = self.apply(request, results, cancelEvent)
        output.timings_s.update(prepare=t1 - t0, compute=t2 - t1, total=time.perf_counter() - t0)
        return output

    # MRML nodes ------------------------------------------------------------------------------
    def _evidence_color_node(self, created):
        """The shipped evidence colour table, loaded once per scene."""
        scene = self.scene
        for node in _nodes_by_class(scene, "vtkMRMLColorTableNode"):
            if node.GetAttribute(ATTR_ROLE) == "EvidenceColors":
                return node
        node = slicer.modules.colors.logic().LoadColorFile(
            str(EVIDENCE_COLOR_TABLE_FILE), EVIDENCE_COLOR_NODE_NAME
        )
        if node is None:
            raise RuntimeError(f"cannot load the evidence colour table {EVIDENCE_COLOR_TABLE_FILE}")
        node.SetName(EVIDENCE_COLOR_NODE_NAME)  # the loader makes names unique; keep ours
        node.SetAttribute(ATTR_ROLE, "EvidenceColors")
        created.append(node)
        return node

    def _find_output(self, class_name: str, role: str, volume, markups):
        for node in _nodes_by_class(self.scene, class_name):
            if (
                node.GetAttribute(ATTR_ROLE) == role
                and node.GetNodeReferenceID(REF_VOLUME) == volume.GetID()
                and node.GetNodeReferenceID(REF_MARKUPS) == markups.GetID()
            ):
                return node
        return None

    @staticmethod
    def _tag_output(node, role: str, volume, markups) -> None:
        """Role attribute plus references to the inputs (references survive ID remapping when
        a saved scene is imported; plain ID attributes would not)."""
        node.SetAttribute(ATTR_ROLE, role)
        node.SetNodeReferenceID(REF_VOLUME, volume.GetID())
        node.SetNodeReferenceID(REF_MARKUPS, markups.GetID())

    def _segmentation_node(self, volume, markups, created):
        node = self._find_output("vtkMRMLSegmentationNode", "Segmentation", volume, markups)
        if node is not None:
            return node
        scene = self.scene
        node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode",
            scene.GenerateUniqueName(f"{volume.GetName()} nodules"),
        )
        created.append(node)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        self._tag_output(node, "Segmentation", volume, markups)
        display = node.GetDisplayNode()
        display.SetOpacity2DFill(0.15)
        display.SetOpacity2DOutline(1.0)
        display.SetSliceIntersectionThickness(2)
        return node

    def _table_node(self, volume, markups, created):
        node = self._find_output("vtkMRMLTableNode", "ResultsTable", volume, markups)
        if node is not None:
            return node
        scene = self.scene
        node = scene.AddNewNodeByClass(
            "vtkMRMLTableNode", scene.GenerateUniqueName(f"{volume.GetName()} nodule results")
        )
        created.append(node)
        self._tag_output(node, "ResultsTable", volume, markups)
        for name, kind, title, unit, _ in TABLE_COLUMNS:
            array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
            array.SetName(name)
            node.AddColumn(array)
            node.SetColumnTitle(name, title)
            if unit:
                node.SetColumnUnitLabel(name, unit)
        node.SetUseColumnTitleAsColumnHeader(True)
        node.SetLocked(True)
        return node

    @staticmethod
    def _row_of(table, point_id: str) -> int:
        column = table.GetTable().GetColumnByName("point_id")
        for row in range(table.GetNumberOfRows()):
            if column.GetValue(row) == point_id:
                return row
        return -1

    def _update_row(self, table, point: PointRequest, result: NoduleResult) -> int:
        values = {
            "point": point.label,
            "point_id": point.point_id,
            "r": point.position_ras[0],
            "a": point.position_ras[1],
            "s": point.position_ras[2],
            "malignancy_percent": 100.0 * result.malignancy_probability,
            "malignancy_sd_percent": 100.0 * result.malignancy_sd,
            "calcification_probability": result.calcification_probability,
            "internal_structure_probability": result.internal_structure_probability,
            "volume_mm3": result.volume_mm3,
            "diameter_mm": result.diameter_mm,
            "short_axis_mm": result.short_axis_mm,
            "mean_diameter_mm": result.mean_diameter_mm,
            "mean_hu": result.mean_hu,
            "calcified_fraction": result.calcified_fraction,
            "model_version": result.model_version,
        }
        wording = result.wording
        for name in ORDINAL_ATTRIBUTES:
            values[score_column(name)] = result.scores[name]
            values[f"{name}_wording"] = wording[name]
        was = table.StartModify()
        row = self._row_of(table, point.point_id)
        if row < 0:
            row = table.AddEmptyRow()
        vtable = table.GetTable()
        for name, kind, _, _, decimals in TABLE_COLUMNS:
            column = vtable.GetColumnByName(name)
            value = values[name]
            if kind == "string":
                column.SetValue(row, str(value))
            else:
                column.SetValue(row, round(float(value), decimals))
            column.Modified()
        vtable.Modified()
        table.Modified()
        table.EndModify(was)
        return row

    @staticmethod
    def _segment_id(point_id: str) -> str:
        return f"nodule_{point_id}"

    def _update_segment(self, segmentation_node, request, point, result, row) -> str:
        """Replace (or create) the point's segment with the result's mask on the CT grid."""
        segmentation = segmentation_node.GetSegmentation()
        segment_id = self._segment_id(point.point_id)
        color = SEGMENT_COLORS[row % len(SEGMENT_COLORS)]
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            segmentation.AddEmptySegment(segment_id, point.label, color)
            segment = segmentation.GetSegment(segment_id)
        segment.SetName(point.label)
        segment.SetTag(ATTR_POINT, point.point_id)
        labelmap = self._oriented_mask(result, request)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        # Clear the old extent too (the point may have moved): replace over the whole union.
        if not logic.SetBinaryLabelmapToSegment(
            labelmap, segmentation_node, segment_id, logic.MODE_REPLACE, None
        ):
            raise RuntimeError(f"could not write the segment of {point.label}")
        if not segmentation.ContainsRepresentation("Closed surface"):
            segmentation_node.CreateClosedSurfaceRepresentation()
        return segment_id

    @staticmethod
    def _local_sub_grid(request: AnalysisRequest, grid: ImageGeometry):
        """The volume-local sub-grid with the same voxels as the world ``grid``; and its lo."""
        lo = sub_grid_offset(request.geometry, grid)
        hi = lo + np.asarray(grid.size) - 1
        return sub_grid(request.local_geometry, lo, hi), lo

    def _oriented_mask(self, result: NoduleResult, request: AnalysisRequest):
        """The CT-grid mask as a vtkOrientedImageData in the volume's local frame."""
        _, lo = self._local_sub_grid(request, result.ct_grid)
        mask = np.ascontiguousarray(result.segmentation_mask_ct.astype(np.uint8))
        nz, ny, nx = mask.shape
        image = slicer.vtkOrientedImageData()
        image.SetExtent(lo[0], lo[0] + nx - 1, lo[1], lo[1] + ny - 1, lo[2], lo[2] + nz - 1)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(mask.ravel()))
        image.SetImageToWorldMatrix(_vtk_matrix(request.local_geometry.ijk_to_ras_matrix()))
        return image

    def _evidence_nodes(self, markups_id: str, point_id: str | None = None) -> list:
        nodes = []
        for node in _nodes_by_class(self.scene, "vtkMRMLScalarVolumeNode"):
            if node.GetAttribute(ATTR_ROLE) != "Evidence":
                continue
            if node.GetNodeReferenceID(REF_MARKUPS) != markups_id:
                continue
            if point_id is not None and node.GetAttribute(ATTR_POINT) != point_id:
                continue
            nodes.append(node)
        return nodes

    def _update_evidence(self, request, point, result, volume, markups, color, created):
        """One scalar volume per scale on the CT sub-grid; shipped colours, symmetric window."""
        local_grid, _ = self._local_sub_grid(request, result.ct_grid)
        existing = {
            n.GetAttribute(ATTR_SCALE): n
            for n in self._evidence_nodes(markups.GetID(), point.point_id)
        }
        combined = np.abs(result.evidence_ct[COMBINED])
        window = float(np.percentile(combined, 99.5)) if combined.size else 0.0
        window = window if window > 0 else 1.0
        nodes = {}
        scene = self.scene
        for scale in EVIDENCE_SCALES:
            node = existing.get(scale)
            name = f"{point.label} evidence {scale}"
            if node is None:
                node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
                created.append(node)
                self._tag_output(node, "Evidence", volume, markups)
                node.SetAttribute(ATTR_POINT, point.point_id)
                node.SetAttribute(ATTR_SCALE, scale)
            node.SetName(name)
            node.SetAttribute(ATTR_WINDOW, f"{window:.6g}")
            slicer.util.updateVolumeFromArray(
                node, np.ascontiguousarray(result.evidence_ct[scale], dtype=np.float32)
            )
            node.SetIJKToRASMatrix(_vtk_matrix(local_grid.ijk_to_ras_matrix()))
            display = node.GetDisplayNode()
            if display is None:
                node.CreateDefaultDisplayNodes()
                display = node.GetDisplayNode()
            display.SetAndObserveColorNodeID(color.GetID())
            display.AutoWindowLevelOff()
            display.SetWindowLevel(2.0 * window, 0.0)
            display.SetInterpolate(False)
            nodes[scale] = node
        return nodes

    def _remove_stale(self, markups, segmentation, table) -> None:
        """Drop rows, segments and evidence of points that were deleted from the list."""
        alive = {markups.GetNthControlPointID(i) for i in range(markups.GetNumberOfControlPoints())}
        column = table.GetTable().GetColumnByName("point_id")
        for row in reversed(range(table.GetNumberOfRows())):
            if column.GetValue(row) not in alive:
                table.RemoveRow(row)
        seg = segmentation.GetSegmentation()
        for segment_id in list(seg.GetSegmentIDs()):
            point_id = _segment_tag(seg.GetSegment(segment_id), ATTR_POINT)
            if point_id and point_id not in alive:
                seg.RemoveSegment(segment_id)
        for node in self._evidence_nodes(markups.GetID()):
            if node.GetAttribute(ATTR_POINT) not in alive:
                self.scene.RemoveNode(node)

    # Display ---------------------------------------------------------------------------------
    def evidenceNode(self, pointId: str, scale: str = COMBINED, markupsNode=None):  # noqa: N802, N803
        """The evidence volume of a point at a scale (current point list by default)."""
        markups = markupsNode or self.getParameterNode().GetNodeReference(ROLE_MARKUPS)
        if markups is None:
            return None
        for node in self._evidence_nodes(markups.GetID(), pointId):
            if node.GetAttribute(ATTR_SCALE) == scale:
                return node
        return None

    def showEvidence(
        self,
        pointId: str | None = None,  # noqa: N803
        scale: str | None = None,
        opacity: float | None = None,
        volumeNode=None,  # noqa: N803
        markupsNode=None,  # noqa: N803
    ):
        """Show a point's evidence volume as foreground (CT as background) in all slice views.

        Arguments left out come from the parameter node (current point, scale, opacity), and
        given ones are stored there. Returns the evidence volume node shown, or ``None``.
        """
        param = self.getParameterNode()
        if scale is not None:
            if scale not in EVIDENCE_SCALES:
                raise ValueError(f"unknown evidence scale {scale!r}; use one of {EVIDENCE_SCALES}")
            param.SetParameter(PARAM_SCALE, scale)
        if opacity is not None:
            param.SetParameter(PARAM_OPACITY, f"{float(opacity):.3g}")
        if pointId is not None:
            param.SetParameter(PARAM_CURRENT_POINT, pointId)
        scale = param.GetParameter(PARAM_SCALE) or COMBINED
        opacity = float(param.GetParameter(PARAM_OPACITY) or DEFAULT_EVIDENCE_OPACITY)
        pointId = param.GetParameter(PARAM_CURRENT_POINT)  # noqa: N806
        volume = volumeNode or param.GetNodeReference(ROLE_VOLUME)
        node = self.evidenceNode(pointId, scale, markupsNode) if pointId else None
        for composite in _nodes_by_class(self.scene, "vtkMRMLSliceCompositeNode"):
            was = composite.StartModify()
            if volume is not None:
                composite.SetBackgroundVolumeID(volume.GetID())
            composite.SetForegroundVolumeID(node.GetID() if node is not None else None)
            composite.SetForegroundOpacity(opacity)
            composite.EndModify(was)
        return node

    def jumpToNodule(self, row: int) -> tuple[float, float, float] | None:  # noqa: N802
        """Centre the slice views on a table row's point and show its evidence."""
        table = self.getParameterNode().GetNodeReference(ROLE_TABLE)
        if table is None or not 0 <= row < table.GetNumberOfRows():
            return None
        vtable = table.GetTable()
        ras = tuple(float(vtable.GetColumnByName(c).GetValue(row)) for c in ("r", "a", "s"))
        slicer.vtkMRMLSliceNode.JumpAllSlices(
            self.scene, *ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice
        )
        self.showEvidence(str(vtable.GetColumnByName("point_id").GetValue(row)))
        return ras

    # Export ----------------------------------------------------------------------------------
    def exportResults(self, directory: str | Path) -> dict[str, Path]:  # noqa: N802
        """Write the results table (CSV), the segmentation (.seg.nrrd) and evidence (.nrrd).

        Storage nodes of the scene are not changed (``slicer.util.exportNode``).
        """
        param = self.getParameterNode()
        table = param.GetNodeReference(ROLE_TABLE)
        if table is None:
            raise InputError("Nothing to export yet: analyse a nodule first.")
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [("table", table, folder / f"{_safe_file_name(table.GetName())}.csv")]
        segmentation = param.GetNodeReference(ROLE_SEGMENTATION)
        if segmentation is not None:
            name = _safe_file_name(segmentation.GetName())
            jobs.append(("segmentation", segmentation, folder / f"{name}.seg.nrrd"))
        for i in range(param.GetNumberOfNodeReferences(ROLE_EVIDENCE)):
            node = param.GetNthNodeReference(ROLE_EVIDENCE, i)
            name = _safe_file_name(node.GetName())
            jobs.append((f"evidence {node.GetName()}", node, folder / f"{name}.nrrd"))
        files = {}
        for key, node, path in jobs:
            if not slicer.util.exportNode(node, str(path)):
                raise RuntimeError(f"could not write {path}")
            files[key] = path
        return files


def _nodes_by_class(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def _segment_tag(segment, key: str) -> str:
    """A segment tag's value ('' when absent); the VTK API returns it through a reference."""
    value = vtk.reference("")
    return str(value) if segment is not None and segment.GetTag(key, value) else ""


def _safe_file_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return keep or "nodule_results"
