"""The reading station's state machine, in plain Python (docs/DESIGN.md §15).

Why apart from the web page: everything the station does (load a CT, window it, take points,
analyze them through :class:`~..mrml.runner.AnalysisRunner`, poll, cancel, show overlays, jump
between nodules) happens here, on MRML through the logic, and is tested without a browser. The
trame page (``app.py``) only calls these methods and shows :meth:`StationController.snapshot`.

Threads (docs/DESIGN.md §7): every method runs on the thread that owns the scene (the server's
event loop); only the runner's worker runs torch. The page calls :meth:`poll` from a timer.
Points come in two ways: :meth:`add_point` (a click mapped through the slice node's XY-to-RAS,
or a test) analyses at once; points placed with Slicer's markups placement in a view are found
by :meth:`sync_points` (run by every :meth:`poll`) and analyzed after the runner's debounce.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..core.geometry import lps_to_ras
from ..core.nodule.evidence import COMBINED
from ..core.result_schema import shown
from ..core.scope.assessment import NOT_ASSESSED, NOT_ASSESSED_CODES, REFUSED
from ..files.lidc_thumbnails import thumbnail_data_uri
from ..mrml.ct_loading import load_ct_volume
from ..mrml.identity import volume_identity
from ..mrml.logic import InputError, NoduleMalignancyLogic, read_ct_volume
from ..mrml.nodes import ResultNodes, nodes_by_class
from ..mrml.roles import (
    ATTR_ROLE,
    EVIDENCE_SCALES,
    LUNG_SURFACE_COLOR,
    LUNG_SURFACE_OPACITY,
    MARKER_ACTIVE_COLOR,
    MARKER_COLOR,
    MARKER_INACTIVE_COLOR,
    MARKER_WARNING_COLOR,
    ROLE_LUNG_SURFACE,
    ROLE_SEGMENTATION,
    ROLE_TABLE,
)
from ..mrml.runner import DEBOUNCE_S, AnalysisRunner
from ..mrml.runtime import ensure_slicer_runtime
from .panel import input_panel, result_panel, with_followup

__all__ = ["MARKUPS_NAME", "OVERLAY_OFF", "WINDOW_PRESETS", "StationController"]

# Window presets (width, level) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (400.0, 40.0),
}
MARKUPS_NAME = "Nodules"
OVERLAY_OFF = "off"
# A point moved by less than this (mm) is the same point (no re-analysis).
MOVE_TOLERANCE_MM = 0.05
# A new point this close to an analyzed nodule's point (mm), or within its outline's radius,
# selects that nodule instead of making a duplicate.
SAME_NODULE_MIN_MM = 2.0
# Point states whose marker is drawn grey: no answer came from them.
INACTIVE = ("refused", "cancelled", "error")
# The display-only point list that draws the not-assessed points' markers in orange (one
# markups node has one colour per selection state; the reader's points stay in MARKUPS_NAME).
WARNING_MARKUPS_NAME = "Nodules (not assessed)"


class StationController:
    """One CT, its nodule points and their analyses, as one reader sees them.

    :param logic: the MRML logic (default: a new one with ``models_dir``'s ensemble).
    :param device: torch device name for the analyses (``auto``, ``cpu``, ``cuda``).
    :param executor, clock, debounce_s: passed to the runner (tests step them by hand).
    """

    def __init__(
        self,
        logic: NoduleMalignancyLogic | None = None,
        *,
        models_dir: str | Path | None = None,
        device: str = "auto",
        executor: concurrent.futures.Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        debounce_s: float = DEBOUNCE_S,
    ):
        self.slicer = ensure_slicer_runtime()
        self.logic = logic or NoduleMalignancyLogic(modelsDir=models_dir)
        self.device = device
        self.runner = AnalysisRunner(
            self.logic, self._inputs, executor=executor, debounce_s=debounce_s, clock=clock
        )
        self.volume = None
        self.markups = None
        self.warning_markers = None  # WARNING_MARKUPS_NAME's node
        # The 3D view's lungs: (volume node, vtkPolyData) from the warm-up thread, made a model
        # node by the next poll (the scene is the main thread's); the node once made.
        self._lung_surface: tuple | None = None
        self.lung_model = None
        self._marker_key: tuple = ()
        self.volume_name = ""
        self.identity: dict[str, str] = {}  # series UID, patient ID, study date of the CT
        self.window = ""
        self.status = "empty"  # empty, ready, busy, done, refused, cancelled, error
        self.message = "Load a CT."
        self.code = ""  # the scope layer's refusal code of the last refusal
        self.tone = ""  # the banner's look when not its status's (a not-assessed point: warning)
        self.fraction = 0.0
        self.cancelling = False
        self.model_allowed = True  # a reading study hides the model until it may be shown
        self.log: list[str] = []
        self.points: dict[str, dict] = {}  # control point ID -> record (insertion order)
        self.results: dict[str, object] = {}  # control point ID -> NoduleResult
        # With a prior CT (station/prior_view.PriorView.followup): (point ID, result) -> its
        # follow-up Lung-RADS once compared, which the panel shows instead of the baseline's.
        self.followup: Callable | None = None
        self.current: str | None = None
        self.overlay = COMBINED
        self.warm_up_thread: threading.Thread | None = None
        self.opacity = 0.7  # the evidence legible at the default (issue 29 item 5)
        self.segmentation_visible = True
        self.show_withheld: str | None = None  # the not-assessed point shown anyway
        # The similar LIDC nodules' block is open: their thumbnails are rendered (from the data
        # folder, when configured) only then, once per nodule (files/lidc_thumbnails.py).
        self.similar_open = False
        self.thumbnail: Callable[[str], str] = thumbnail_data_uri
        self._busy_ids: list[str] = []

    # Loading ---------------------------------------------------------------------------------
    def load_ct(
        self,
        path: str | Path,
        name: str | None = None,
        window: str = "lung",
        check_ct: bool = False,
        series_uid: str | None = None,
    ):
        """Load a CT (replacing the current one and its results) and window it; ``series_uid``:
        the series of a folder or archive holding several (mrml/ct_loading.py).

        :raises CTLoadError: missing, unreadable or (with ``check_ct``) not a CT; the current
            CT then stays.
        """
        volume = load_ct_volume(path, name, check_ct=check_ct, series_uid=series_uid)
        self.close_ct()
        self.volume = volume
        self.volume_name = volume.GetName()
        self.identity = volume_identity(volume)
        self.markups = self.logic.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        self.markups.SetName(MARKUPS_NAME)
        self.markups.SetControlPointLabelFormat("N%d")  # points placed in a view: N1, N2, ...
        self.markups.CreateDefaultDisplayNodes()
        _style_markers(self.markups.GetDisplayNode())
        self.warning_markers = self.logic.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        self.warning_markers.SetName(WARNING_MARKUPS_NAME)
        self.warning_markers.SetLocked(True)  # drawn, never dragged or picked
        self.warning_markers.SetSaveWithScene(False)
        self.warning_markers.CreateDefaultDisplayNodes()
        _style_markers(self.warning_markers.GetDisplayNode(), MARKER_WARNING_COLOR)
        self._marker_key = ()
        self.set_window(window)
        self._warm_up(volume)
        self.set_status(
            "ready",
            "Click on a nodule (place a point) to analyze it." if self.model_allowed else "",
        )
        return volume

    def _warm_up(self, volume) -> threading.Thread | None:
        """Load the ensemble and the CT's lung mask in the background while the reader looks
        at the CT, so the first click costs a warm one (docs/DESIGN.md §15). Only an
        optimisation: a CT the warm-up cannot read gets its message from the click."""
        try:
            image, _, world = read_ct_volume(volume)  # the voxels are copied here
        except InputError:
            return None

        def run() -> None:
            try:
                self.logic.warmUp(image, world)
            except Exception:  # the click reports the same problem with its message
                logging.getLogger(__name__).exception("warm-up failed")
            try:  # after the click's warm-up: the 3D view's context, never on a click's path
                started = time.perf_counter()
                surface = lung_surface(image, world)
                self._lung_surface = (volume, surface)
                logging.getLogger(__name__).info(
                    "lung surface in %.2f s", time.perf_counter() - started
                )
            except Exception:  # only the 3D view's context
                logging.getLogger(__name__).exception("lung surface failed")

        # Not a daemon: torch or VTK work cut off at interpreter exit aborts the process.
        self.warm_up_thread = threading.Thread(target=run, name="station-warm-up")
        self.warm_up_thread.start()
        return self.warm_up_thread

    def close_ct(self) -> None:
        """Remove the CT, its points and every output node; cancel a running analysis."""
        self.runner.cancel()
        self.runner.clear_pending()
        scene = self.logic.scene
        outputs = [n for n in nodes_by_class(scene, "vtkMRMLNode") if n.GetAttribute(ATTR_ROLE)]
        for node in [*outputs, self.warning_markers, self.markups, self.volume]:
            if node is not None and node.GetScene() is scene:
                scene.RemoveNode(node)
        self.volume = self.markups = self.warning_markers = self.lung_model = None
        self._lung_surface = None
        self._marker_key = ()
        self.identity = {}
        self.points.clear()
        self.results.clear()
        self.current = None
        self._busy_ids = []
        self.set_status("empty", "Load a CT.")

    def set_window(self, preset: str) -> None:
        """Apply a window preset (``lung``: W1500/L-600, ``mediastinum``: W400/L40)."""
        if preset not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; use one of {list(WINDOW_PRESETS)}")
        width, level = WINDOW_PRESETS[preset]
        display = self.volume.GetDisplayNode() if self.volume is not None else None
        if display is None:
            return
        display.SetAutoWindowLevel(0)
        display.SetWindowLevel(width, level)
        self.window = preset

    # Points ----------------------------------------------------------------------------------
    def add_point(self, ras: Sequence[float], label: str | None = None) -> str:
        """Place a point at a world RAS position (mm) and analyze it (after the running one);
        on an analyzed nodule, select that nodule instead. Returns the point's ID."""
        if self.markups is None:
            raise InputError("Load a CT first.")
        on = self.nodule_at(ras)
        if on is not None:  # an analyzed nodule: select it, no duplicate
            self.select(on)
            return on
        n = self.markups.GetNumberOfControlPoints()
        label = label or f"N{n + 1}"
        index = self.markups.AddControlPoint(*map(float, ras), label)
        point_id = self.markups.GetNthControlPointID(index)
        self._record(point_id)
        self.analyze([point_id])
        return point_id

    def add_point_lps(self, lps: Sequence[float], label: str | None = None) -> str:
        """:meth:`add_point` for a world LPS point (the study files' and LUNA25's frame)."""
        return self.add_point(lps_to_ras(np.asarray(lps, dtype=float)), label)

    def sync_points(self) -> list[str]:
        """Find points placed or moved in the views since the last call; queue them.

        Returns the IDs queued (analyzed by a later :meth:`poll`, after the debounce).
        """
        markups = self.markups
        if markups is None:
            return []
        defined = self.slicer.vtkMRMLMarkupsNode.PositionDefined
        seen, queued, duplicates, new = set(), [], [], None
        for i in range(markups.GetNumberOfControlPoints()):
            if markups.GetNthControlPointPositionStatus(i) != defined:
                continue  # the preview point of placement mode, or a point being placed
            point_id = markups.GetNthControlPointID(i)
            ras = list(markups.GetNthControlPointPositionWorld(i))
            record = self.points.get(point_id)
            if record is None:
                on = self.nodule_at(ras)
                if on is not None:  # a click on an analyzed nodule selects it
                    duplicates.append((point_id, on))
                    continue
                if not markups.GetNthControlPointLabel(i):
                    markups.SetNthControlPointLabel(i, f"N{len(self.points) + 1}")
                self._record(point_id)
                new = point_id
            elif np.linalg.norm(np.subtract(ras, record["ras"])) <= MOVE_TOLERANCE_MM:
                seen.add(point_id)
                continue
            seen.add(point_id)
            self.points[point_id].update(ras=ras, label=markups.GetNthControlPointLabel(i))
            self.results.pop(point_id, None)  # its old numbers are not this position's
            if self.model_allowed:
                self.points[point_id]["status"] = "pending"
                # A new point (one click) starts at once; a moved one waits for the drag's end.
                self.runner.point_changed(point_id, debounce=record is not None)
                queued.append(point_id)
        for point_id, on in duplicates:
            markups.RemoveNthControlPoint(markups.GetControlPointIndexByID(point_id))
            self.select(on)
        for point_id in [p for p in self.points if p not in seen]:
            del self.points[point_id]
            self.results.pop(point_id, None)
        if new in self.points:  # the panel shows the new point's state at once (issue 29)
            self.current = new
            self._show_overlay()
        return queued

    def nodule_at(self, ras: Sequence[float]) -> str | None:
        """The analyzed nodule a world RAS point lies on (within its outline's radius of its
        point, at least :data:`SAME_NODULE_MIN_MM`), the nearest one; ``None`` if none."""
        best, best_mm = None, np.inf
        for point_id, result in self.results.items():
            record = self.points.get(point_id)
            if record is None:
                continue
            distance = float(np.linalg.norm(np.subtract(ras, record["ras"])))
            radius = max(SAME_NODULE_MIN_MM, 0.5 * float(result.diameter_mm or 0.0))
            if distance <= radius and distance < best_mm:
                best, best_mm = point_id, distance
        return best

    def _record(self, point_id: str) -> dict:
        index = self.markups.GetControlPointIndexByID(point_id)
        record = {
            "id": point_id,
            "label": self.markups.GetNthControlPointLabel(index),
            "ras": list(self.markups.GetNthControlPointPositionWorld(index)),
            "status": "placed",
            "message": "",
            "assessment": "",  # core/scope/assessment.py tier once analyzed
            "malignancy_text": None,  # result_schema.shown("malignancy_probability", ...)
        }
        self.points[point_id] = record
        return record

    def clear_points(self) -> None:
        """Remove every point and its outputs (the CT stays)."""
        self.runner.cancel()
        self.runner.clear_pending()
        scene = self.logic.scene
        for node in nodes_by_class(scene, "vtkMRMLNode"):
            if node.GetAttribute(ATTR_ROLE) in (ROLE_SEGMENTATION, ROLE_TABLE) or (
                node.IsA("vtkMRMLScalarVolumeNode") and node.GetAttribute(ATTR_ROLE)
            ):
                scene.RemoveNode(node)
        if self.markups is not None:
            self.markups.RemoveAllControlPoints()
        self.points.clear()
        self.results.clear()
        self.current = None
        self.style_markers()
        self.set_status("ready", "Points cleared.")

    def delete_point(self, point_id: str) -> None:
        """Remove one point, its outline, evidence and table row (the others stay)."""
        if point_id not in self.points or self.markups is None:
            return
        if point_id in self._busy_ids:
            self.cancel()
        index = self.markups.GetControlPointIndexByID(point_id)
        label = self.points[point_id]["label"]
        if index >= 0:
            self.markups.RemoveNthControlPoint(index)
        param = self.logic.getParameterNode()
        segmentation = param.GetNodeReference(ROLE_SEGMENTATION)
        table = param.GetNodeReference(ROLE_TABLE)
        if segmentation is not None and table is not None:
            ResultNodes(self.logic.scene).remove_stale(self.markups, segmentation, table)
        del self.points[point_id]
        self.results.pop(point_id, None)
        if self.current == point_id:
            self.current = None
            for composite in nodes_by_class(self.logic.scene, "vtkMRMLSliceCompositeNode"):
                composite.SetForegroundVolumeID(None)
        self.style_markers()
        self.set_status("ready", f"{label} deleted.")

    # Analyses --------------------------------------------------------------------------------
    def analyze(self, point_ids: Sequence[str] | None = None) -> bool:
        """Start analyzing these points (default: all); queued when one is running.

        Returns whether a run started now. A refusal before the run (no volume, a point
        outside the CT) becomes the status message, not an exception.
        """
        if not self.model_allowed:
            self.set_status(self.status, "The model is hidden for this step of the study.")
            return False
        ids = list(point_ids) if point_ids is not None else list(self.points)
        if self.runner.running:
            for point_id in ids:
                self.points[point_id]["status"] = "pending"
                self.runner.point_changed(point_id)
            return False
        indices = [self.markups.GetControlPointIndexByID(p) for p in ids]
        try:
            started = self.runner.start(self.volume, self.markups, indices, self.device)
        except InputError as exc:
            self._refuse(ids, exc)
            return False
        if started:
            self._started(ids)
        return started

    def _started(self, ids: list[str]) -> None:
        self._busy_ids = ids
        for point_id in ids:
            if point_id in self.points:
                self.points[point_id].update(status="busy", message="")
                self.style_markers()
        if ids:  # the panel follows the point being analyzed, never the previous nodule
            self.current = ids[-1]
            self._show_overlay()
        labels = ", ".join(self.points[p]["label"] for p in ids if p in self.points)
        self.cancelling = False
        self.set_status("busy", f"Analyzing {labels}")

    def cancel(self) -> None:
        """Ask the running analysis to stop; nothing is changed (reported by :meth:`poll`).

        The network pass that is running finishes first (the logic checks between points).
        """
        if self.runner.running:
            self.runner.cancel()
            self.cancelling = True
            self.message = "Cancelling: the running network pass finishes, then nothing is kept."
        self.runner.clear_pending()
        for record in self.points.values():
            if record["status"] == "pending":
                record["status"] = "placed"

    def poll(self) -> bool:
        """Pick up placed points, progress and a finished run. Returns whether anything changed."""
        before = self.snapshot_key()
        pending = self.runner.pending
        self.sync_points()
        pending |= self.runner.pending
        update = self.runner.poll()
        self.log.extend(update.log)
        del self.log[:-50]
        if update.running:
            self.fraction = update.fraction
            if not self.cancelling:
                self.message = update.message or self.message
        finished_ids, self._busy_ids = self._busy_ids, []
        started_ids = [p for p in self.points if p in pending - self.runner.pending]
        if update.output is not None:
            self._finished(update.output)
        if update.error is not None:
            # The finished run's error, or (no run, or it succeeded) the pending start's.
            ids = finished_ids if update.output is None and finished_ids else started_ids
            if update.cancelled:
                self._cancelled(ids)
            elif isinstance(update.error, InputError):
                self._refuse(ids, update.error)
            else:
                for point_id in ids:
                    if point_id in self.points:
                        self.points[point_id].update(status="error", message=str(update.error))
                        self.style_markers()
                self.set_status("error", f"Analysis failed: {update.error}")
        if update.started:
            self._started(started_ids)
        elif update.output is None and update.error is None:
            self._busy_ids = finished_ids  # still running
        self.style_markers()
        self.show_lungs()
        return self.snapshot_key() != before

    def show_lungs(self) -> bool:
        """The warm-up's lung surface, once built, as a translucent model in the 3D view only
        (not drawn in the slice views); returns whether it was added now."""
        built, self._lung_surface = self._lung_surface, None
        if built is None or built[0] is not self.volume or built[1] is None:
            return False
        if self.lung_model is not None and self.lung_model.GetScene() is self.logic.scene:
            self.logic.scene.RemoveNode(self.lung_model)
        model = self.logic.scene.AddNewNodeByClass("vtkMRMLModelNode", "Lungs")
        model.SetAttribute(ATTR_ROLE, ROLE_LUNG_SURFACE)
        model.SetAndObservePolyData(built[1])
        model.CreateDefaultDisplayNodes()
        display = model.GetDisplayNode()
        display.SetColor(*LUNG_SURFACE_COLOR)
        display.SetOpacity(LUNG_SURFACE_OPACITY)
        display.SetVisibility2D(False)
        display.SetBackfaceCulling(False)
        self.lung_model = model
        return True

    def _finished(self, output) -> None:
        for point, result in zip(output.points, output.results, strict=True):
            self.results[point.point_id] = result
            record = self.points.get(point.point_id)
            if record is None:  # placed through the API of the logic, not seen yet
                record = self._record(point.point_id)
            assessment = result.assessment
            record.update(
                status="done",
                assessment=assessment.tier,
                # The list's subtitle: a not-assessed point's reason in short (its whole
                # sentence on hover and in the panel), a flagged one's tier.
                message=(
                    _short_reason(result)
                    if assessment.tier == NOT_ASSESSED
                    else assessment.label
                    if assessment.tier != "assessed"
                    else ""
                ),
                reason=assessment.reason,
                malignancy_text=(
                    shown("malignancy_probability", result.malignancy_probability)
                    if assessment.answered
                    else None
                ),
            )
            self.style_markers()
        self.current = output.points[-1].point_id
        self.fraction = 1.0
        # Every slice view through the nodule (offsets only: the view the reader clicked in
        # does not move under the mouse).
        self.slicer.vtkMRMLSliceNode.JumpAllSlices(
            self.logic.scene,
            *output.points[-1].position_ras,
            self.slicer.vtkMRMLSliceNode.DefaultJumpSlice,
        )
        segmentation = output.segmentation_node
        if segmentation is not None:
            segmentation.CreateClosedSurfaceRepresentation()  # the 3D view shows the nodule
            segmentation.GetDisplayNode().SetVisibility(self.segmentation_visible)
        self._show_overlay()
        self._announce(", ".join(p.label for p in output.points))

    def _cancelled(self, ids: list[str]) -> None:
        for point_id in ids:
            if point_id in self.points:
                self.points[point_id].update(status="cancelled", message="Analysis cancelled.")
                self.style_markers()
        if ids:
            self.current = ids[-1]
            self._show_overlay()
        self.cancelling = False
        self.set_status("cancelled", "Analysis cancelled; nothing was changed.")

    def _refuse(self, ids: Sequence[str], exc: InputError) -> None:
        for point_id in ids:
            if point_id in self.points:
                self.points[point_id].update(status="refused", message=str(exc), code=exc.code)
                self.style_markers()
        if ids:  # the refused point is the current one: its message, no other's numbers
            self.current = ids[-1]
            self._show_overlay()
        self.code = exc.code or ""
        self.set_status("refused", str(exc))

    def set_status(self, status: str, message: str, tone: str = "") -> None:
        """The status line: one of the states in the snapshot, its message and (when not its
        status's) its look."""
        self.status, self.message, self.tone = status, message, tone
        if status != "busy":
            self.cancelling = False

    def _announce(self, labels: str = "") -> None:
        """The banner says the current point's state: a refused point's reason, a not-assessed
        point's reason (a warning, not a success), "Analyzed N1" (``labels``: of the run)."""
        record = self.points.get(self.current) if self.current else None
        if record is None or not self.model_allowed:
            return
        label, state = record["label"], record["status"]
        result = self.results.get(self.current)
        if state == "refused":
            self.code = record.get("code") or ""
            self.set_status("refused", record["message"])
        elif state == "cancelled":
            self.set_status("cancelled", f"{label}: analysis cancelled; nothing was changed.")
        elif state == "error":
            self.set_status("error", f"{label}: analysis failed: {record['message']}")
        elif state == "done" and result is not None:
            assessment = result.assessment
            if not assessment.answered:
                # The deciding warning's sentence; the panel below says all of them.
                deciding = [w.message for w in result.warnings if w.code in NOT_ASSESSED_CODES]
                reason = (deciding or [assessment.reason or assessment.label])[0]
                self.set_status("done", f"{label}: not assessed — {reason}", tone="warning")
            elif assessment.tier == "flagged":
                self.set_status("done", f"Analyzed {labels or label}, with a warning", "warning")
            else:
                self.set_status("done", f"Analyzed {labels or label}")
        elif state in ("placed", "pending"):
            waits = "waiting for its analysis" if state == "pending" else "not analyzed"
            self.set_status("ready", f"{label}: {waits}.")

    def style_markers(self) -> None:
        """Each marker in its point's state's colour (:func:`marker_state`): green (Slicer's
        selected colour), grey (unselected) or orange (the point is hidden in the reader's list
        and drawn by the display-only :data:`WARNING_MARKUPS_NAME`, with its label). Applied
        only when a state changed; the point under the mouse stops being highlighted then, so
        a click's marker shows its answer, not the highlight, once the answer comes."""
        markups, warning = self.markups, self.warning_markers
        if markups is None or warning is None:
            return
        # The reader's points only (not the placement's preview point), by their state.
        states = {p: marker_state(r) for p, r in self.points.items()}
        key = tuple(states.items())
        if key == self._marker_key:
            return
        self._marker_key = key
        shown = []
        for point_id, state in states.items():
            i = markups.GetControlPointIndexByID(point_id)
            if i < 0:
                continue
            markups.SetNthControlPointSelected(i, state == "ok")
            markups.SetNthControlPointVisibility(i, state != "warning")
            if state == "warning":
                shown.append(
                    (markups.GetNthControlPointPositionWorld(i), markups.GetNthControlPointLabel(i))
                )
        was = warning.StartModify()
        warning.RemoveAllControlPoints()
        for ras, label in shown:
            warning.AddControlPoint(*ras, label)
        warning.EndModify(was)
        _clear_highlight(markups.GetDisplayNode())

    @property
    def busy(self) -> bool:
        return self.runner.running

    # Display ---------------------------------------------------------------------------------
    def select(self, point_id: str) -> tuple[float, float, float] | None:
        """Jump the views to a nodule and show its overlays (``logic.jumpToNodule``)."""
        if point_id not in self.points:
            return None
        self.current = point_id
        if not self.busy:  # while a run goes on the banner says what it analyzes
            self._announce()
        table = self.logic.getParameterNode().GetNodeReference(ROLE_TABLE)
        row = _row_of(table, point_id)
        if row is not None and point_id in self.results:
            ras = self.logic.jumpToNodule(row)
            self._show_overlay()
            return ras
        self._show_overlay()  # none: this point has no result
        ras = tuple(self.points[point_id]["ras"])
        self.slicer.vtkMRMLSliceNode.JumpAllSlices(
            self.logic.scene, *ras, self.slicer.vtkMRMLSliceNode.CenteredJumpSlice
        )
        return ras

    def set_overlay(self, overlay: str | None = None, opacity: float | None = None) -> None:
        """Evidence overlay: ``combined``, a scale name or ``off``; foreground opacity 0-1."""
        if overlay is not None:
            if overlay not in (*EVIDENCE_SCALES, OVERLAY_OFF):
                raise ValueError(f"unknown overlay {overlay!r}")
            self.overlay = overlay
        if opacity is not None:
            self.opacity = float(min(max(opacity, 0.0), 1.0))
        self._show_overlay()

    def set_segmentation_visible(self, visible: bool) -> None:
        self.segmentation_visible = bool(visible)
        segmentation = self.logic.getParameterNode().GetNodeReference(ROLE_SEGMENTATION)
        if segmentation is not None and segmentation.GetDisplayNode() is not None:
            segmentation.GetDisplayNode().SetVisibility(self.segmentation_visible)

    def set_show_withheld(self, show: bool) -> None:
        """The reader asked to see a not-assessed point's numbers anyway (its evidence too)."""
        self.show_withheld = self.current if show else None
        self._show_overlay()

    def set_similar_open(self, open_: bool) -> None:
        """The reader opened (or closed) the similar LIDC nodules: thumbnails while open."""
        self.similar_open = bool(open_)

    def _show_overlay(self) -> None:
        if not self.model_allowed:
            return
        result = self.results.get(self.current) if self.current else None
        shown_anyway = self.show_withheld == self.current
        if result is None or not (result.assessment.answered or shown_anyway):
            # No overlay of another nodule under this point's state; a not-assessed point's
            # evidence only with its numbers ("show anyway").
            for composite in nodes_by_class(self.logic.scene, "vtkMRMLSliceCompositeNode"):
                composite.SetForegroundVolumeID(None)
            return
        if self.overlay == OVERLAY_OFF:
            self.logic.showEvidence(self.current, opacity=self.opacity)
            for composite in nodes_by_class(self.logic.scene, "vtkMRMLSliceCompositeNode"):
                composite.SetForegroundVolumeID(None)
            return
        self.logic.showEvidence(self.current, scale=self.overlay, opacity=self.opacity)

    # What the page shows ---------------------------------------------------------------------
    def panel(self, point_id: str | None = None) -> dict | None:
        """The results panel of a nodule (default: the current one), or ``None``."""
        point_id = point_id or self.current
        result = self.results.get(point_id) if point_id else None
        if result is None or not self.model_allowed:
            return None
        followup = self.followup(point_id, result) if self.followup else None
        return result_panel(
            with_followup(result.summary(), followup),
            self.points.get(point_id, {}).get("label", ""),
            thumbnail=self.thumbnail if self.similar_open else None,
        )

    def snapshot(self) -> dict:
        """Everything the page shows, as plain JSON-ready values."""
        return {
            "status": self.status,
            "busy": self.busy,
            "cancelling": self.cancelling,
            "fraction": round(float(self.fraction), 3),
            "message": self.message,
            "code": self.code,
            "tone": self.tone,
            "volume": self.volume_name,
            "input": input_panel(self.identity) if self.volume is not None else None,
            "window": self.window,
            "model_allowed": self.model_allowed,
            "nodules": [dict(r, ras=[round(v, 2) for v in r["ras"]]) for r in self.points.values()],
            "current": self.current,
            "current_point": self._current_point(),
            "panel": self.panel(),
            "overlay": self.overlay,
            "opacity": self.opacity,
            "segmentation_visible": self.segmentation_visible,
            "layers": self.layers(),
            "log": list(self.log[-8:]),
        }

    def _current_point(self) -> dict | None:
        """The current point's label, state and message (the panel's head when it has no
        numbers: busy, refused, cancelled)."""
        record = self.points.get(self.current) if self.current else None
        if record is None:
            return None
        return {k: record[k] for k in ("id", "label", "status", "message")}

    def layers(self) -> dict:
        """What the overlays hold now: segments in the segmentation, the evidence volume shown,
        whether the 3D view has the lungs yet."""
        param = self.logic.getParameterNode()
        segmentation = param.GetNodeReference(ROLE_SEGMENTATION)
        segments = segmentation.GetSegmentation().GetNumberOfSegments() if segmentation else 0
        evidence = ""
        if self.current in self.results and self.overlay != OVERLAY_OFF:
            node = self.logic.evidenceNode(self.current, self.overlay)
            evidence = node.GetName() if node is not None else ""
        return {"segments": segments, "evidence": evidence, "lungs": self.lung_model is not None}

    def snapshot_key(self) -> tuple:
        """Cheap change detector for :meth:`poll` (the page pushes state only on changes)."""
        return (
            self.status,
            self.busy,
            self.cancelling,
            round(float(self.fraction), 2),
            self.message,
            self.current,
            tuple((r["id"], r["status"], tuple(r["ras"])) for r in self.points.values()),
            len(self.log),
        )

    def shutdown(self) -> None:
        self.runner.shutdown()
        if self.warm_up_thread is not None:
            self.warm_up_thread.join()

    # Runner inputs (main thread) -------------------------------------------------------------
    def _inputs(self):
        return self.volume, self.markups, self.device


def lung_surface(image_zyx: np.ndarray, geometry, smooth_mm: float = 2.0, triangles: int = 40_000):
    """The CT's lungs as a smooth closed surface (vtkPolyData, world RAS mm), or ``None`` on a
    crop without a lung mask: the scope layer's lung mask (core/scope/lung_mask.py, cached by
    the warm-up), blurred by ``smooth_mm``, on a grid of about 2.5 mm, its 0.5 iso-surface
    decimated to about ``triangles`` triangles. Pure VTK and numpy: any thread."""
    import vtk
    from scipy import ndimage
    from vtkmodules.util.numpy_support import numpy_to_vtk

    from ..core.scope.validation import chest_lungs

    lungs = chest_lungs(image_zyx, geometry)
    if lungs is None:
        return None
    spacing = np.asarray(lungs.spacing_kji, dtype=float)
    down = np.maximum(1, np.round(2.5 / spacing)).astype(int)  # coarse voxels per grid step
    soft = ndimage.gaussian_filter(lungs.mask_kji.astype(np.float32), smooth_mm / spacing)
    soft = np.pad(soft[:: down[0], :: down[1], :: down[2]], 1)  # closed at the CT's ends
    grid = vtk.vtkImageData()
    grid.SetDimensions(*soft.shape[::-1])
    grid.GetPointData().SetScalars(numpy_to_vtk(soft.ravel(), deep=True))
    contour = vtk.vtkFlyingEdges3D()
    contour.SetInputData(grid)
    contour.SetValue(0, 0.5)
    contour.ComputeNormalsOff()
    contour.Update()
    surface = contour.GetOutput()
    if surface.GetNumberOfPolys() == 0:
        return None
    decimate = vtk.vtkQuadricDecimation()
    decimate.SetInputData(surface)
    decimate.SetTargetReduction(max(0.0, 1.0 - triangles / surface.GetNumberOfPolys()))
    # Grid index (x, y, z, padded) -> coarse index -> image index (a coarse voxel's centre)
    # -> LPS -> RAS, as one affine map.
    stride = np.asarray(lungs.stride_kji, dtype=float)[::-1]
    step, first = down[::-1] * stride, -stride * down[::-1] + (stride - 1.0) / 2.0
    to_lps = geometry.index_to_lps_matrix @ np.diag(step)
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ to_lps
    matrix[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ geometry.index_to_lps(first)
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix.ravel().tolist())
    moved = vtk.vtkTransformPolyDataFilter()
    moved.SetInputConnection(decimate.GetOutputPort())
    moved.SetTransform(transform)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(moved.GetOutputPort())
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(normals.GetOutput())
    return out


def marker_state(record: dict) -> str:
    """A point's marker: ``ok`` (green: placed, analysing, assessed or flagged), ``warning``
    (orange: not assessed) or ``inactive`` (grey: refused, cancelled, failed)."""
    status, tier = record.get("status"), record.get("assessment")
    if status in INACTIVE or (status == "done" and tier == REFUSED):
        return "inactive"
    return "warning" if status == "done" and tier == NOT_ASSESSED else "ok"


def _short_reason(result) -> str:
    """A not-assessed answer's reason in a few words: the deciding warning's first clause
    ("The point lies outside the lungs")."""
    deciding = [w.message for w in result.warnings if w.code in NOT_ASSESSED_CODES]
    text = (deciding or [result.assessment.reason or result.assessment.label])[0]
    for stop in (" (", ":", ". "):
        text = text.split(stop, 1)[0]
    return text.strip().rstrip(".")


def _style_markers(display, color=None) -> None:
    """Small hollow stars (Slicer fills its 2D circle; the nodule stays visible inside the
    star): selected points green, unselected grey (``color``: one colour for both, the
    not-assessed list's orange); the point under the mouse white (issue 29)."""
    display.SetGlyphTypeFromString("StarBurst2D")
    display.SetUseGlyphScale(False)
    display.SetGlyphSize(4.0)  # mm
    display.SetSelectedColor(*(color or MARKER_COLOR))
    display.SetColor(*(color or MARKER_INACTIVE_COLOR))
    display.SetActiveColor(*(color or MARKER_ACTIVE_COLOR))
    display.SetTextScale(2.5)


def _clear_highlight(display) -> None:
    """No point is "under the mouse" any more: Slicer keeps the last placed point highlighted
    (its active colour) until the mouse moves over the view again, and the remote view gets
    no move once the mouse has left it, which hid a refused point's grey (issue 29)."""
    if display is None or not display.HasActiveComponent():
        return
    none = display.ComponentNone
    for context in display.GetActiveComponentInteractionContexts():
        display.SetActiveComponent(none, -1, context)


def _row_of(table, point_id: str) -> int | None:
    if table is None:
        return None
    column = table.GetTable().GetColumnByName("point_id")
    if column is None:
        return None
    for row in range(table.GetNumberOfRows()):
        if column.GetValue(row) == point_id:
            return row
    return None
