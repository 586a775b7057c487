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

Results are keyed on (markups node, control point ID): re-analyzing a moved point updates its
table row, segment and evidence volumes in place. Transforms are hardened into world
coordinates for the analysis; outputs live in the volume's local frame under the volume's
parent transform, so they stay aligned with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import CancelledError, InputError
from ..core.geometry import ImageGeometry, ras_to_lps
from ..core.nodule.analysis import NoduleResult, analyze_point
from ..core.nodule.evidence import COMBINED
from ..core.nodule.voi import PointOutsideVolumeError
from ..core.scope.assessment import answer_lines
from ..core.scope.validation import RefusedError, check_image, prepare_lung_side
from .identity import volume_identity
from .nodes import ResultNodes, nodes_by_class, numpy_matrix, safe_file_name
from .parameters import parameter_node, read_inputs, set_evidence_opacity, set_evidence_scale
from .requests import AnalysisOutput, AnalysisRequest, PointRequest
from .roles import (
    ATTR_SCALE,
    PARAM_CURRENT_POINT,
    ROLE_COLOR,
    ROLE_EVIDENCE,
    ROLE_MARKUPS,
    ROLE_SEGMENTATION,
    ROLE_TABLE,
    ROLE_VOLUME,
)
from .slicer_api import slicer, vtk

__all__ = [
    "AnalysisCancelledError",
    "AnalysisOutput",
    "AnalysisRequest",
    "EmptyVolumeError",
    "InputError",
    "NoduleMalignancyLogic",
    "NotCTError",
    "PointOutsideError",
    "PointRequest",
    "read_ct_volume",
]

log = logging.getLogger(__name__)


# Errors ---------------
class NotCTError(InputError):
    """The volume does not hold CT Hounsfield units (label map, 8-bit, MR-like ranges)."""


class EmptyVolumeError(InputError):
    """The volume node has no voxels."""


class PointOutsideError(PointOutsideVolumeError):
    """A markups point lies outside the volume."""


class AnalysisCancelledError(CancelledError):
    """The run was cancelled; nothing in the scene was changed."""


ProgressCallback = Callable[[float, str], None]
LogCallback = Callable[[str], None]


# The logic ---------------
def read_ct_volume(volumeNode) -> tuple[np.ndarray, ImageGeometry, ImageGeometry]:
    """Voxels (z, y, x), local and world (transform hardened) geometry, once the node is
    checked as a CT (the scope layer's ``check_image``, docs/DESIGN.md §12).

    :raises InputError: no node, a label map, an empty or multi-component volume, a non-linear
        transform; :class:`NotCTError` where the voxels are not CT Hounsfield units.
    """
    if volumeNode is None:
        raise InputError("Select the CT volume to analyze.")
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
    ijk_to_ras = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijk_to_ras)
    local = ImageGeometry.from_ijk_to_ras(numpy_matrix(ijk_to_ras), dims)
    transform = volumeNode.GetParentTransformNode()
    world_matrix = numpy_matrix(ijk_to_ras)
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise InputError(
                f"The volume {name!r} is under a non-linear transform "
                f"({transform.GetName()!r}): harden the transform (Transforms module) first."
            )
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        world_matrix = numpy_matrix(to_world) @ world_matrix
    world = ImageGeometry.from_ijk_to_ras(world_matrix, dims)
    # A copy, not a view of the VTK memory: compute() reads it on a worker thread while the
    # scene may change the volume (about 15 ms for a 512 x 512 x 133 CT).
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    try:  # the one scope layer of every entry point (core/scope/validation.py)
        check_image(array, world)
    except RefusedError as exc:
        raise NotCTError(f"{name!r}: {exc}", code=exc.code) from None
    return array, local, world


class NoduleMalignancyLogic:
    """Analyze markups points on a CT volume and keep the results in MRML.

    :param ensemble: an already loaded :class:`~NoduleMalignancyLib.core.model.ensemble.Ensemble` (tests,
        batch jobs); default: :meth:`Ensemble.load` on first use.
    :param modelsDir: folder of the ensemble to load (default: the shipped ``models/``).
    """

    def __init__(self, ensemble=None, modelsDir: str | Path | None = None):
        self._ensemble = ensemble
        self._models_dir = modelsDir
        self._ensemble_lock = threading.Lock()
        self.lastOutput: AnalysisOutput | None = None
        # (results table ID, control point ID) -> result: the DICOM export's nodules
        self._results: dict[tuple[str, str], NoduleResult] = {}

    # Scene and parameter node ----------------------------------------------------------------
    @property
    def scene(self):
        """``slicer.mrmlScene``: Slicer's, or the headless runtime's.

        The logic never builds a runtime behind the caller's back: headless entry points (CLI,
        tests, the browser station) call :func:`.runtime.ensure_slicer_runtime` first.
        """
        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise RuntimeError(
                "No MRML scene: outside the Slicer application call "
                "NoduleMalignancyLib.mrml.runtime.ensure_slicer_runtime() before using the logic."
            )
        return scene

    def getParameterNode(self):
        """The module's singleton ``vtkMRMLScriptedModuleNode`` (``parameters.py``), created with
        the defaults when missing; the widget shows the same node."""
        return parameter_node(self.scene)

    # Ensemble --------------------------------------------------------------------------------
    @staticmethod
    def resolveDevice(device: str | None) -> str:
        """UI names (auto / CPU / GPU) -> torch device names; raises :class:`InputError`."""
        from ..core.device import DeviceError, device_choice

        try:
            return device_choice(device)
        except DeviceError as exc:
            raise InputError(str(exc)) from None

    def ensemble(self, device: str = "auto"):
        """The ensemble on ``device``, loaded (and sha256-verified) on first use."""
        from ..core.model.ensemble import Ensemble

        name = self.resolveDevice(device)
        with self._ensemble_lock:
            if self._ensemble is None:
                self._ensemble = Ensemble.load(self._models_dir, device=name)
            else:
                self._ensemble.use(name)
            return self._ensemble

    def warmUp(self, image_zyx: np.ndarray, geometry: ImageGeometry, device: str = "auto") -> None:
        """Load the ensemble, run it once and build the CT's lung mask now (any thread), so the
        first click on a freshly loaded CT costs what a later one does; ``image_zyx`` and
        ``geometry`` as :func:`read_ct_volume` gives them."""
        self.ensemble(device).warm_up()
        prepare_lung_side(image_zyx, geometry)

    # 1. prepare (main thread) ----------------------------------------------------------------
    def prepare(self, volumeNode, markupsNode, pointIndex=None) -> AnalysisRequest:
        """Read and validate the inputs; the scene is not changed.

        :param pointIndex: control point index, a sequence of them, or ``None`` for every
            placed point of the list.
        :raises InputError: (or a subclass) with a message that says what is wrong.
        """
        image, local, world = read_ct_volume(volumeNode)
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
            identity=volume_identity(volumeNode),
        )

    # 2. compute (any thread) -----------------------------------------------------------------
    def compute(
        self,
        request: AnalysisRequest,
        device: str = "auto",
        progressCallback: ProgressCallback | None = None,
        logCallback: LogCallback | None = None,
        cancelEvent: threading.Event | None = None,
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
            progress(i / n, f"Analyzing {point.label} ({i + 1}/{n})")
            try:
                result = analyze_point(
                    request.image_zyx,
                    request.geometry,
                    point.point_lps,
                    ensemble,
                    map_to_ct=True,
                    patient_id=request.identity.get("patient_id"),
                )
            except RefusedError as exc:  # no numbers for this input: the scene stays unchanged
                raise InputError(f"{point.label}: {exc}", code=exc.code) from None
            # The assessment first (core/scope/assessment.py): no malignancy off a nodule.
            answer = "; ".join(answer_lines(result, point.label))
            say(f"{answer}, {result.timings_s.get('total', 0.0):.2f} s")
            results.append(result)
        self._check_cancel(cancelEvent)
        progress(1.0, "Analysis done")
        return results

    @staticmethod
    def _check_cancel(cancelEvent) -> None:
        if cancelEvent is not None and cancelEvent.is_set():
            raise AnalysisCancelledError("Analysis cancelled; the scene was not changed.")

    # 3. apply (main thread) ------------------------------------------------------------------
    def apply(
        self,
        request: AnalysisRequest,
        results: Sequence[NoduleResult],
        cancelEvent: threading.Event | None = None,
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
            raise InputError("The volume or point list was removed while it was being analyzed.")
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
        nodes = ResultNodes(scene)
        param = self.getParameterNode()
        color = nodes.evidence_color_node(created)
        segmentation = nodes.segmentation_node(volume, markups, created)
        table = nodes.table_node(volume, markups, created)
        segment_ids, rows, evidence = {}, {}, {}
        for point, result in zip(request.points, results, strict=True):
            rows[point.point_id] = nodes.update_row(table, point, result, request.identity)
            segment_ids[point.point_id] = nodes.update_segment(
                segmentation, request, point, result, rows[point.point_id]
            )
            evidence[point.point_id] = nodes.update_evidence(
                request, point, result, volume, markups, color, created
            )
        nodes.remove_stale(markups, segmentation, table)
        for point, result in zip(request.points, results, strict=True):
            self._results[(table.GetID(), point.point_id)] = result
        # Outputs live in the volume's local frame: they follow its (current) parent transform.
        for node in [segmentation, *nodes.evidence_nodes(markups.GetID())]:
            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        wasModifying = param.StartModify()
        param.SetNodeReferenceID(ROLE_VOLUME, volume.GetID())
        param.SetNodeReferenceID(ROLE_MARKUPS, markups.GetID())
        param.SetNodeReferenceID(ROLE_SEGMENTATION, segmentation.GetID())
        param.SetNodeReferenceID(ROLE_TABLE, table.GetID())
        param.SetNodeReferenceID(ROLE_COLOR, color.GetID())
        param.RemoveNodeReferenceIDs(ROLE_EVIDENCE)
        for node in nodes.evidence_nodes(markups.GetID()):
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
        volumeNode,
        markupsNode,
        pointIndex=None,
        device: str = "auto",
        progressCallback: ProgressCallback | None = None,
        logCallback: LogCallback | None = None,
        cancelEvent: threading.Event | None = None,
    ) -> AnalysisOutput:
        """Analyze the point(s) and update the MRML nodes (blocking).

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

    # Display ---------------------------------------------------------------------------------
    def evidenceNode(self, pointId: str, scale: str = COMBINED, markupsNode=None):
        """The evidence volume of a point at a scale (current point list by default)."""
        markups = markupsNode or self.getParameterNode().GetNodeReference(ROLE_MARKUPS)
        if markups is None:
            return None
        for node in ResultNodes(self.scene).evidence_nodes(markups.GetID(), pointId):
            if node.GetAttribute(ATTR_SCALE) == scale:
                return node
        return None

    def showEvidence(
        self,
        pointId: str | None = None,
        scale: str | None = None,
        opacity: float | None = None,
        volumeNode=None,
        markupsNode=None,
    ):
        """Show a point's evidence volume as foreground (CT as background) in all slice views.

        Arguments left out come from the parameter node (current point, scale, opacity), and
        given ones are stored there. Returns the evidence volume node shown, or ``None``.
        """
        param = self.getParameterNode()
        if scale is not None:
            set_evidence_scale(param, scale)
        if opacity is not None:
            set_evidence_opacity(param, opacity)
        if pointId is not None:
            param.SetParameter(PARAM_CURRENT_POINT, pointId)
        shown = read_inputs(param)
        scale, opacity = shown.evidence_scale, shown.evidence_opacity
        pointId = param.GetParameter(PARAM_CURRENT_POINT)
        volume = volumeNode or param.GetNodeReference(ROLE_VOLUME)
        node = self.evidenceNode(pointId, scale, markupsNode) if pointId else None
        for composite in nodes_by_class(self.scene, "vtkMRMLSliceCompositeNode"):
            was = composite.StartModify()
            if volume is not None:
                composite.SetBackgroundVolumeID(volume.GetID())
            composite.SetForegroundVolumeID(node.GetID() if node is not None else None)
            composite.SetForegroundOpacity(opacity)
            composite.EndModify(was)
        return node

    def jumpToNodule(self, row: int) -> tuple[float, float, float] | None:
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
    def exportTrainingPatches(
        self,
        volumeNode,
        markupsNode,
        outputDirectory: str | Path,
        patientId: str | None = None,
        segmentationNode=None,
        resume: bool = True,
    ):
        """Training patches of the placed points, labelled by their descriptions.

        The folder is the layout ``nodule-malignancy train --data`` reads (docs/DESIGN.md §13);
        a segment named like a point becomes its mask. Returns the export summary.
        """
        from .training_export import export_scene_points

        request = self.prepare(volumeNode, markupsNode)
        try:
            return export_scene_points(
                request,
                markupsNode,
                volumeNode,
                outputDirectory,
                patient_id=patientId,
                segmentation_node=segmentationNode,
                resume=resume,
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def exportResults(self, directory: str | Path) -> dict[str, Path]:
        """Write the results table (CSV), the segmentation (.seg.nrrd) and evidence (.nrrd).

        Storage nodes of the scene are not changed (``slicer.util.exportNode``).
        """
        param = self.getParameterNode()
        table = param.GetNodeReference(ROLE_TABLE)
        if table is None:
            raise InputError("Nothing to export yet: analyze a nodule first.")
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [("table", table, folder / f"{safe_file_name(table.GetName())}.csv")]
        segmentation = param.GetNodeReference(ROLE_SEGMENTATION)
        if segmentation is not None:
            name = safe_file_name(segmentation.GetName())
            jobs.append(("segmentation", segmentation, folder / f"{name}.seg.nrrd"))
        for i in range(param.GetNumberOfNodeReferences(ROLE_EVIDENCE)):
            node = param.GetNthNodeReference(ROLE_EVIDENCE, i)
            name = safe_file_name(node.GetName())
            jobs.append((f"evidence {node.GetName()}", node, folder / f"{name}.nrrd"))
        files = {}
        for key, node, path in jobs:
            if not slicer.util.exportNode(node, str(path)):
                raise RuntimeError(f"could not write {path}")
            files[key] = path
        return files

    def _sessionResults(self, action: str) -> list[tuple[str, NoduleResult]]:
        """(point label, result) of the results table's rows analyzed in this session, in the
        table's order; an ``InputError`` saying there is nothing to ``action`` otherwise."""
        table = self.getParameterNode().GetNodeReference(ROLE_TABLE)
        if table is None:
            raise InputError(f"Nothing to {action} yet: analyze a nodule first.")
        labels, point_ids = (table.GetTable().GetColumnByName(c) for c in ("point", "point_id"))
        rows = []
        for r in range(table.GetNumberOfRows()):
            result = self._results.get((table.GetID(), str(point_ids.GetValue(r))))
            if result is not None:
                rows.append((str(labels.GetValue(r)), result))
        if not rows:
            raise InputError(f"No analyzed nodule of this session to {action}: analyze it again.")
        return rows

    def exam(
        self,
        age: float | None = None,
        female: bool | None = None,
        familyHistory: bool | None = None,
        useDefaults: bool = False,
        priorVolume=None,
        priorDate: str | None = None,
        examDate: str | None = None,
        device: str = "auto",
    ) -> dict:
        """The exam of this session's analyzed nodules (core/clinical/exam.py, docs/DESIGN.md §17): the
        exam's Lung-RADS v2022 with its management and suggestions, each nodule's category and
        Brock risk (clinical inputs as entered; ``None`` when not), as ``exam.json`` names them.
        A nodule whose point was refused has no row, so it is not listed.

        The document starts with the CT's name (``ct``), identity (patient ID, study date,
        series UID: mrml/identity.py) and ``date``; ``prior_ct`` holds the prior's (with its
        node's name as ``volume``). With a prior, the comparison is also written into the
        results table (mrml/prior_table.py).

        :param priorVolume: the prior CT's volume node: registered to the CT and every nodule
            looked for on it (core/prior/exam_prior.py), each nodule's ``prior`` measured.
        :param priorDate: the prior's date (YYYY-MM-DD; default: its DICOM study date).
        :param examDate: the CT's date (default: its DICOM study date).
        """
        from ..core.clinical.exam import ClinicalInputs, ExamPoint, build_exam, exam_nodule
        from ..core.prior.exam_prior import PriorCT, compare_exam_with_prior, days_between, iso_date
        from .prior_table import write_prior_columns

        rows = self._sessionResults("report as an exam")
        labels = [label for label, _ in rows]
        if len(set(labels)) != len(labels):
            raise InputError(f"Name the points differently to report them as an exam: {labels}")
        volume = self.getParameterNode().GetNodeReference(ROLE_VOLUME)
        array, _, world = read_ct_volume(volume)
        clinical = ClinicalInputs(age, female, familyHistory)
        points = [ExamPoint(label, r.point_lps) for label, r in rows]
        current = volume_identity(volume)
        examDate = examDate or current.get("study_date") or None
        try:
            head = {"ct": volume.GetName(), **current, "date": iso_date(examDate)}
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if priorVolume is None:
            nodules = [exam_nodule(p, r) for p, (_, r) in zip(points, rows, strict=True)]
            return head | build_exam(array, world, nodules, clinical, useDefaults).to_dict()
        if priorVolume is volume:
            raise InputError("Choose a prior CT other than the CT analyzed.")
        prior_array, _, prior_world = read_ct_volume(priorVolume)
        identity = volume_identity(priorVolume)
        priorDate = priorDate or identity.get("study_date") or None
        try:
            interval = days_between(examDate, priorDate)
            iso = iso_date(priorDate)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        description = {"volume": priorVolume.GetName(), **identity}
        prior = PriorCT(prior_array, prior_world, iso, (), description)
        analyzed = [(p, r, "") for p, (_, r) in zip(points, rows, strict=True)]
        exam = compare_exam_with_prior(
            array, world, analyzed, self.ensemble(device), prior, interval, clinical, useDefaults
        )
        document = head | exam.to_dict()
        write_prior_columns(self.getParameterNode().GetNodeReference(ROLE_TABLE), document)
        return document

    def compareWithPrior(self, device: str | None = None, **clinical) -> dict:
        """The exam with the prior CT and the dates the parameter node holds (the panel's
        "Prior" inputs, mrml/parameters.py), its comparison written into the results table;
        ``clinical``: :meth:`exam`'s age, female, familyHistory, useDefaults."""
        inputs = read_inputs(self.getParameterNode())
        if inputs.prior_volume is None:
            raise InputError("Choose the prior CT to compare with.")
        return self.exam(
            priorVolume=inputs.prior_volume,
            priorDate=inputs.prior_date or None,
            examDate=inputs.exam_date or None,
            device=device or inputs.device,
            **clinical,
        )

    def exportDicom(self, directory: str | Path, dicomSeries) -> dict[str, Path]:
        """DICOM SEG + SR (``seg.dcm``, ``sr.dcm``) of the analyzed nodules of the results table.

        :param dicomSeries: the CT's DICOM series (folder, ``.tar.gz``, a ``.dcm`` of it, or
            the list of its files): SEG and SR reference its instances, and the analyzed volume
            must lie on its grid (a volume loaded from a file carries no DICOM source).
        """
        from ..files.dicom_outputs import mask_on_ct, write_dicom_outputs
        from ..files.samples import is_dicom_source, read_ct_with_dicom, read_dicom_instances

        rows = self._sessionResults("export")
        if not dicomSeries:
            raise InputError("Choose the CT's DICOM series: the SEG and SR reference its images.")
        try:
            if isinstance(dicomSeries, (str, Path)):
                if not is_dicom_source(dicomSeries):
                    raise ValueError(f"{dicomSeries} is not a DICOM series (folder, .dcm, .tar.gz)")
                image, datasets = read_ct_with_dicom(dicomSeries)
            else:
                image, datasets = read_dicom_instances(list(dicomSeries))
            geometry = ImageGeometry.from_sitk(image)
            masks = [mask_on_ct(result, geometry) for _, result in rows]
            return write_dicom_outputs(
                datasets,
                geometry,
                masks,
                [result for _, result in rows],
                directory,
                labels=[label for label, _ in rows],
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
