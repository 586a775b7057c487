"""The node writers: a nodule's results into MRML nodes (segment, evidence volumes, table row).

Why apart from the logic: the logic decides what to analyze and when; these functions only
know how the outputs look in a scene (names, roles, references, display), so the browser
station and the batch paths write the same nodes. MRML only: no Qt, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..core.geometry import ImageGeometry
from ..core.nodule.analysis import NoduleResult
from ..core.nodule.evidence import smoothed_for_display
from ..core.nodule.voi import sub_grid, sub_grid_offset
from ..core.result_schema import shown, shown_number
from ..core.scope.assessment import withheld
from ..files.ct_input import IDENTITY_FIELDS
from .prior_table import clear_prior_cells
from .requests import AnalysisRequest, PointRequest
from .roles import (
    ATTR_POINT,
    ATTR_ROLE,
    ATTR_SCALE,
    ATTR_WINDOW,
    EVIDENCE_COLOR_NODE_NAME,
    EVIDENCE_COLOR_TABLE_FILE,
    EVIDENCE_SCALES,
    REF_MARKUPS,
    REF_VOLUME,
    ROLE_COLOR,
    ROLE_EVIDENCE,
    ROLE_SEGMENTATION,
    ROLE_TABLE,
    SEGMENT_COLOR,
    TABLE_COLUMNS,
)
from .slicer_api import numpy_support, slicer, vtk


class ResultNodes:
    """Find, create and update the output nodes of one scene.

    Nodes created during one ``apply`` are appended to ``created`` so that the caller can
    remove them again when a later step fails (the scene is left as it was).
    """

    def __init__(self, scene):
        self.scene = scene

    def evidence_color_node(self, created):
        """The shipped evidence colour table, loaded once per scene."""
        scene = self.scene
        for node in nodes_by_class(scene, "vtkMRMLColorTableNode"):
            if node.GetAttribute(ATTR_ROLE) == ROLE_COLOR:
                return node
        node = slicer.modules.colors.logic().LoadColorFile(
            str(EVIDENCE_COLOR_TABLE_FILE), EVIDENCE_COLOR_NODE_NAME
        )
        if node is None:
            raise RuntimeError(f"cannot load the evidence colour table {EVIDENCE_COLOR_TABLE_FILE}")
        node.SetName(EVIDENCE_COLOR_NODE_NAME)  # the loader makes names unique; keep ours
        node.SetAttribute(ATTR_ROLE, ROLE_COLOR)
        created.append(node)
        return node

    def _find_output(self, class_name: str, role: str, volume, markups):
        for node in nodes_by_class(self.scene, class_name):
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

    def _output(self, class_name: str, role: str, name: str, volume, markups, created, set_up):
        """The output node of this role for these inputs; made, tagged and ``set_up`` if new."""
        node = self._find_output(class_name, role, volume, markups)
        if node is None:
            node = self.scene.AddNewNodeByClass(class_name, self.scene.GenerateUniqueName(name))
            created.append(node)
            self._tag_output(node, role, volume, markups)
            set_up(node, volume)
        return node

    def segmentation_node(self, volume, markups, created):
        name = f"{volume.GetName()} nodules"
        return self._output(
            "vtkMRMLSegmentationNode",
            ROLE_SEGMENTATION,
            name,
            volume,
            markups,
            created,
            self._set_up_segmentation,
        )

    def table_node(self, volume, markups, created):
        name = f"{volume.GetName()} nodule results"
        return self._output(
            "vtkMRMLTableNode", ROLE_TABLE, name, volume, markups, created, self._set_up_table
        )

    @staticmethod
    def _set_up_segmentation(node, volume) -> None:
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        display = node.GetDisplayNode()
        display.SetOpacity2DFill(0.15)
        display.SetOpacity2DOutline(1.0)
        display.SetSliceIntersectionThickness(2)

    @staticmethod
    def _set_up_table(node, volume) -> None:
        for name, kind, title, unit, _ in TABLE_COLUMNS:
            array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
            array.SetName(name)
            node.AddColumn(array)
            node.SetColumnTitle(name, title)
            if unit:
                node.SetColumnUnitLabel(name, unit)
        node.SetUseColumnTitleAsColumnHeader(True)
        node.SetLocked(True)

    @staticmethod
    def _row_of(table, point_id: str) -> int:
        column = table.GetTable().GetColumnByName("point_id")
        for row in range(table.GetNumberOfRows()):
            if column.GetValue(row) == point_id:
                return row
        return -1

    def update_row(
        self,
        table,
        point: PointRequest,
        result: NoduleResult,
        identity: Mapping[str, str] | None = None,
    ) -> int:
        """The point's row: every table field of the schema, as a person reads it, with the
        CT's ``identity`` (series UID, patient ID, study date; "" unknown); for a point not
        assessed (core/scope/assessment.py) the malignancy and Lung-RADS cells stay empty."""
        not_assessed = not result.assessment.answered
        identity = identity or {}
        values = (
            result.values()
            | {name: identity.get(name, "") for name in IDENTITY_FIELDS}
            | {
                "point": point.label,
                "point_id": point.point_id,
                "r": point.position_ras[0],
                "a": point.position_ras[1],
                "s": point.position_ras[2],
            }
        )
        was = table.StartModify()
        row = self._row_of(table, point.point_id)
        if row < 0:
            row = table.AddEmptyRow()
        vtable = table.GetTable()
        for name, kind, _, _, _ in TABLE_COLUMNS:
            column = vtable.GetColumnByName(name)
            value = None if not_assessed and withheld(name) else values[name]
            if kind == "string":
                column.SetValue(row, shown(name, value))
            else:
                column.SetValue(row, float("nan") if value is None else shown_number(name, value))
            column.Modified()
        clear_prior_cells(table, row)  # a comparison described the outline it had before
        vtable.Modified()
        table.Modified()
        table.EndModify(was)
        return row

    @staticmethod
    def _segment_id(point_id: str) -> str:
        return f"nodule_{point_id}"

    def update_segment(self, segmentation_node, request, point, result, row) -> str:
        """Replace (or create) the point's segment with the result's mask on the CT grid."""
        segmentation = segmentation_node.GetSegmentation()
        segment_id = self._segment_id(point.point_id)
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            segmentation.AddEmptySegment(segment_id, point.label, SEGMENT_COLOR)
            segment = segmentation.GetSegment(segment_id)
        segment.SetColor(*SEGMENT_COLOR)
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
    def local_sub_grid(request: AnalysisRequest, grid: ImageGeometry):
        """The volume-local sub-grid with the same voxels as the world ``grid``; and its lo."""
        lo = sub_grid_offset(request.geometry, grid)
        hi = lo + np.asarray(grid.size) - 1
        return sub_grid(request.local_geometry, lo, hi), lo

    def _oriented_mask(self, result: NoduleResult, request: AnalysisRequest):
        """The CT-grid mask as a vtkOrientedImageData in the volume's local frame."""
        _, lo = self.local_sub_grid(request, result.ct_grid)
        mask = np.ascontiguousarray(result.segmentation_mask_ct.astype(np.uint8))
        nz, ny, nx = mask.shape
        image = slicer.vtkOrientedImageData()
        image.SetExtent(lo[0], lo[0] + nx - 1, lo[1], lo[1] + ny - 1, lo[2], lo[2] + nz - 1)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(mask.ravel()))
        image.SetImageToWorldMatrix(vtk_matrix(request.local_geometry.ijk_to_ras_matrix()))
        return image

    def evidence_nodes(self, markups_id: str, point_id: str | None = None) -> list:
        nodes = []
        for node in nodes_by_class(self.scene, "vtkMRMLScalarVolumeNode"):
            if node.GetAttribute(ATTR_ROLE) != ROLE_EVIDENCE:
                continue
            if node.GetNodeReferenceID(REF_MARKUPS) != markups_id:
                continue
            if point_id is not None and node.GetAttribute(ATTR_POINT) != point_id:
                continue
            nodes.append(node)
        return nodes

    def update_evidence(self, request, point, result, volume, markups, color, created):
        """One scalar volume per scale on the CT sub-grid, smoothed for display (the result's
        maps stay exact; the sums are kept), shipped colours, symmetric window per map."""
        local_grid, _ = self.local_sub_grid(request, result.ct_grid)
        existing = {
            n.GetAttribute(ATTR_SCALE): n
            for n in self.evidence_nodes(markups.GetID(), point.point_id)
        }
        shown = smoothed_for_display(
            result.evidence_ct, result.ct_grid, result.voi_geometry.spacing
        )
        nodes = {}
        scene = self.scene
        for scale in EVIDENCE_SCALES:
            node = existing.get(scale)
            name = f"{point.label} evidence {scale}"
            if node is None:
                node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
                created.append(node)
                self._tag_output(node, ROLE_EVIDENCE, volume, markups)
                node.SetAttribute(ATTR_POINT, point.point_id)
                node.SetAttribute(ATTR_SCALE, scale)
            node.SetName(name)
            # Each map its own symmetric window (its strongest 0.5 % at full colour), so a
            # single scale reads as well as the combined map at the same opacity.
            strength = np.abs(shown[scale])
            window = float(np.percentile(strength, 99.5)) if strength.size else 0.0
            window = window if window > 0 else 1.0
            node.SetAttribute(ATTR_WINDOW, f"{window:.6g}")
            slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(shown[scale], np.float32))
            node.SetIJKToRASMatrix(vtk_matrix(local_grid.ijk_to_ras_matrix()))
            display = node.GetDisplayNode()
            if display is None:
                node.CreateDefaultDisplayNodes()
                display = node.GetDisplayNode()
            display.SetAndObserveColorNodeID(color.GetID())
            display.AutoWindowLevelOff()
            display.SetWindowLevel(2.0 * window, 0.0)
            display.SetInterpolate(True)  # smooth between CT voxels in the slice views
            nodes[scale] = node
        return nodes

    def remove_stale(self, markups, segmentation, table) -> None:
        """Drop rows, segments and evidence of points that were deleted from the list."""
        alive = {markups.GetNthControlPointID(i) for i in range(markups.GetNumberOfControlPoints())}
        column = table.GetTable().GetColumnByName("point_id")
        for row in reversed(range(table.GetNumberOfRows())):
            if column.GetValue(row) not in alive:
                table.RemoveRow(row)
        seg = segmentation.GetSegmentation()
        for segment_id in list(seg.GetSegmentIDs()):
            point_id = segment_tag(seg.GetSegment(segment_id), ATTR_POINT)
            if point_id and point_id not in alive:
                seg.RemoveSegment(segment_id)
        for node in self.evidence_nodes(markups.GetID()):
            if node.GetAttribute(ATTR_POINT) not in alive:
                self.scene.RemoveNode(node)


def vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(array[i, j]))
    return m


def numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def nodes_by_class(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def segment_tag(segment, key: str) -> str:
    """A segment tag's value ('' when absent); the VTK API returns it through a reference."""
    value = vtk.reference("")
    return str(value) if segment is not None and segment.GetTag(key, value) else ""


def safe_file_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return keep or "nodule_results"
