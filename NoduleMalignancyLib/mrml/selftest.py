"""The module self-test, written once and run in Slicer and headless.

Why one body: Slicer's *Reload and Test* (``NoduleMalignancyTest`` in the module file), the
headless pytest suite (``Testing/test_mrml_logic.py``) and ``nodule-malignancy selftest`` run
the same ``test_*`` methods of :class:`NoduleMalignancySelfTestMixin`, so what CI checks on
slicer-core is what a user checks in the application.

A concrete test class provides ``self.logic`` (set by :meth:`setUpTest`) and may override
:meth:`sampleVolumePath` (Slicer: SampleData; headless: :func:`samples.sample_path`).

Models: every check runs with a tiny randomly initialised ensemble (fast, deterministic, never
shipped). The segmentation-versus-readers Dice check needs a trained ensemble: it uses the
shipped one when ``models/manifest.json`` exists and is skipped, saying so, when it does not.

This module imports neither ``slicer`` nor ``torch`` at import time (the CLI imports it to
register the ``selftest`` sub-command).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import numpy as np

from ..core.model.metrics import dice
from ..files.lidc_xml import reader_consensus_mask

__all__ = [
    "SAMPLE",
    "SAMPLE_ARCHIVE_SHA256",
    "DICE_THRESHOLD",
    "EVIDENCE_TOLERANCE",
    "HeadlessSelfTestCase",
    "NoduleMalignancySelfTestMixin",
    "dice",
    "random_test_ensemble",
    "trained_ensemble",
    "measure_latency",
    "register",
]

SAMPLE = "LIDC-IDRI-0001"
# SHA256 of the shipped archives (<data>/lidc_ct/<name>.tar.gz): Slicer's SampleData verifies
# the file with it; samples.py then verifies the decoded voxels.
SAMPLE_ARCHIVE_SHA256 = {
    "LIDC-IDRI-0001": "8876956865143438d06d61d7eb652aa2f8c2246074514f869344c320c945fe64",
    "LIDC-IDRI-0006": "7989482af62715ec88a6d1ad3fcc66a6f6e88cf69e804e64326b890ab7a97df5",
}
# Segmentation of the trained ensemble vs. the readers' 50 % consensus on the CT grid. The
# nodule is ~23 mm; the consensus (at least half of the 4 readers) is tighter than the
# 25 %-consensus masks the model was trained on, so 0.5 leaves room for that difference while
# still failing on a misplaced or empty segmentation.
DICE_THRESHOLD = 0.5
CONSENSUS_LEVEL = 0.5
# Displayed combined evidence (CT sub-grid, mass-conserving resampling) integrated vs. the
# fold-mean malignancy logit: |difference| <= EVIDENCE_TOLERANCE * max(1, integral of |map|).
# Float32 storage and a VOI clipped by the CT border are what is left to differ.
EVIDENCE_TOLERANCE = 1e-3
VOI_IDENTITY_TOLERANCE = 1e-4

_ENSEMBLES: dict[str, object] = {}


# Test ensembles ---------------
def random_test_ensemble():
    """The process-wide random test ensemble (CPU), written to a temporary folder once."""
    if "random" not in _ENSEMBLES:
        from ..core.model.ensemble import Ensemble, write_random_ensemble

        folder = Path(tempfile.mkdtemp(prefix="NoduleMalignancy-selftest-"))
        write_random_ensemble(folder, version="selftest-random")
        _ENSEMBLES["random"] = Ensemble.load(folder, device="cpu")
    return _ENSEMBLES["random"]


def trained_ensemble():
    """The shipped ensemble, or ``None`` (with the reason) when no manifest is there."""
    from ..core.model.ensemble import MANIFEST_NAME, Ensemble
    from ..core.settings import models_dir

    folder = models_dir()
    if not (folder / MANIFEST_NAME).is_file():
        return None, f"no trained ensemble: {folder / MANIFEST_NAME} does not exist"
    if "trained" not in _ENSEMBLES:
        _ENSEMBLES["trained"] = Ensemble.load(folder, device="auto")
    return _ENSEMBLES["trained"], ""


# The shared test bodies ---------------
class NoduleMalignancySelfTestMixin:
    """``test_*`` methods shared by the Slicer self-test and the headless suite.

    Needs ``unittest.TestCase`` assertion methods on ``self`` (both hosts provide them).
    """

    logic = None

    # Hooks -------------------------------------------------------------------------------------
    @property
    def slicer(self):
        """The ``slicer`` module (headless runtime created when needed)."""
        from .runtime import ensure_slicer_runtime

        return ensure_slicer_runtime()

    def dataDir(self) -> Path | None:
        """The LIDC data folder (``NODULE_MALIGNANCY_DATA``), or ``None`` when unset."""
        from ..core import settings

        return settings.data_dir()

    def sampleVolumePath(self) -> Path:
        """The cached, checksum-verified NRRD of the sample CT."""
        from ..files import samples

        return samples.sample_path(SAMPLE, data_dir=self.dataDir())

    def selfTestEnsemble(self):
        """The ensemble most checks use: tiny, random, CPU."""
        return random_test_ensemble()

    def clearScene(self) -> None:
        """Empty the scene as Slicer's test ``setUp`` does."""
        from .runtime import is_headless_runtime, reset_scene

        if is_headless_runtime():
            reset_scene()
        else:
            self.slicer.mrmlScene.Clear(0)

    def setUpTest(self) -> None:
        """Clear the scene and make a fresh logic with the test ensemble."""
        from .logic import NoduleMalignancyLogic

        self.clearScene()
        self.logic = NoduleMalignancyLogic(ensemble=self.selfTestEnsemble())

    def say(self, message: str) -> None:
        """Progress text: Slicer's ``delayDisplay`` when there is one, else the log."""
        display = getattr(self, "delayDisplay", None)
        if callable(display):
            display(message, 1)
        else:
            import logging

            logging.getLogger(__name__).info("%s", message)

    def selfTestNames(self) -> list[str]:
        return sorted(n for n in dir(self) if n.startswith("test_"))

    def runSelfTests(self) -> None:
        """Slicer's ``runTest``: every ``test_*`` after a fresh ``setUp``; skips are logged."""
        for name in self.selfTestNames():
            self.setUp()
            try:
                getattr(self, name)()
            except unittest.SkipTest as skip:
                self.say(f"{name} skipped: {skip}")
        self.say("NoduleMalignancy self-test passed")

    # Fixtures ----------------------------------------------------------------------------------
    def loadSample(self):
        """Load the sample CT and a point list with one point on the readers' nodule."""
        from ..core.geometry import lps_to_ras
        from ..files import samples

        slicer = self.slicer
        volume = slicer.util.loadVolume(str(self.sampleVolumePath()))
        name, point_lps = samples.nodule_points_lps(SAMPLE, data_dir=self.dataDir())[0]
        markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
        markups.AddControlPoint(*lps_to_ras(point_lps), name)
        return volume, markups, np.asarray(point_lps, dtype=float)

    def sceneSnapshot(self) -> dict:
        """Node IDs, table contents and segment IDs: what "unchanged" compares."""
        scene = self.slicer.mrmlScene
        nodes = {}
        for i in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(i)
            entry = [node.GetName()]
            if node.IsA("vtkMRMLTableNode"):
                entry.append(
                    [
                        [node.GetCellText(r, c) for c in range(node.GetNumberOfColumns())]
                        for r in range(node.GetNumberOfRows())
                    ]
                )
            if node.IsA("vtkMRMLSegmentationNode"):
                entry.append(list(node.GetSegmentation().GetSegmentIDs()))
            if node.IsA("vtkMRMLScriptedModuleNode"):
                entry.append(sorted(node.GetParameterNames()))
            nodes[node.GetID()] = entry
        return nodes

    def segmentArray(self, output, point_id: str, volume) -> np.ndarray:
        return self.slicer.util.arrayFromSegmentBinaryLabelmap(
            output.segmentation_node, output.segment_ids[point_id], volume
        )

    def assertSegmentMatchesResult(self, output, point_id, volume, result):
        """The segment, on the CT grid, is the result's mask at the right voxels.

        The oracle for where the sub-grid lies is the volume node's own RAS-to-IJK matrix
        (VTK), independent of the library's geometry code that placed it.
        """
        import vtk

        seg = self.segmentArray(output, point_id, volume)
        ras_to_ijk = vtk.vtkMatrix4x4()
        volume.GetRASToIJKMatrix(ras_to_ijk)
        x, y, z = result.ct_grid.origin  # world LPS; the volume has no parent transform here
        ijk = ras_to_ijk.MultiplyPoint((-x, -y, z, 1.0))[:3]
        lo = np.rint(ijk).astype(int)
        self.assertLess(float(np.abs(np.asarray(ijk) - lo).max()), 1e-3)
        expected = np.zeros(seg.shape, dtype=bool)
        nz, ny, nx = result.segmentation_mask_ct.shape
        expected[lo[2] : lo[2] + nz, lo[1] : lo[1] + ny, lo[0] : lo[0] + nx] = (
            result.segmentation_mask_ct
        )
        self.assertEqual(int(seg.sum()), int(expected.sum()))
        self.assertTrue(np.array_equal(seg.astype(bool), expected))

    # Tests -------------------------------------------------------------------------------------
    def test_analyze_creates_segment_evidence_and_row(self):
        """One point -> one segment, four evidence volumes, one table row, references."""
        from ..core.nodule.evidence import COMBINED
        from .roles import EVIDENCE_SCALES, ROLE_EVIDENCE, ROLE_SEGMENTATION, ROLE_TABLE

        slicer = self.slicer
        volume, markups, point_lps = self.loadSample()
        progress = []
        output = self.logic.analyze(
            volume, markups, progressCallback=lambda f, m: progress.append((f, m))
        )
        self.assertEqual(progress[-1][0], 1.0)
        point_id = markups.GetNthControlPointID(0)
        label = markups.GetNthControlPointLabel(0)
        result = output.results[0]

        table = output.table_node
        self.assertEqual(table.GetNumberOfRows(), 1)
        cell = {
            table.GetColumnName(c): table.GetCellText(0, c)
            for c in range(table.GetNumberOfColumns())
        }
        self.assertEqual(cell["point"], label)
        self.assertEqual(cell["point_id"], point_id)
        ras = np.array([float(cell[c]) for c in ("r", "a", "s")])
        self.assertLess(np.abs(ras - point_lps * [-1, -1, 1]).max(), 0.01)
        malignancy = float(cell["malignancy_probability"])  # in % (unit label)
        self.assertAlmostEqual(malignancy, 100 * result.malignancy_probability, delta=0.051)
        self.assertTrue(0.0 <= malignancy <= 100.0)
        for name in ("subtlety", "sphericity", "margin", "lobulation", "spiculation", "texture"):
            self.assertTrue(1.0 <= float(cell[name]) <= 5.0, name)
            self.assertTrue(cell[f"{name}_wording"], name)
        self.assertTrue(1.0 <= float(cell["malignancy_score"]) <= 5.0)
        self.assertEqual(cell["model_version"], result.model_version)
        self.assertAlmostEqual(float(cell["volume_mm3"]), result.volume_mm3, delta=0.051)

        segmentation = output.segmentation_node.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetSegment(output.segment_ids[point_id]).GetName(), label)
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"))
        self.assertSegmentMatchesResult(output, point_id, volume, result)

        evidence = output.evidence_nodes[point_id]
        self.assertEqual(sorted(evidence), sorted(EVIDENCE_SCALES))
        for node in evidence.values():
            self.assertIsNotNone(node.GetImageData())
            display = node.GetDisplayNode()
            self.assertEqual(display.GetColorNode().GetName(), "NoduleMalignancyEvidence")
            self.assertAlmostEqual(display.GetLevel(), 0.0)
        param = self.logic.getParameterNode()
        self.assertTrue(param.IsA("vtkMRMLScriptedModuleNode"))
        self.assertEqual(param.GetNodeReference(ROLE_SEGMENTATION), output.segmentation_node)
        self.assertEqual(param.GetNodeReference(ROLE_TABLE), table)
        self.assertEqual(param.GetNumberOfNodeReferences(ROLE_EVIDENCE), len(EVIDENCE_SCALES))
        self.assertEqual(self.logic.evidenceNode(point_id, COMBINED), evidence[COMBINED])
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            self.assertEqual(composite.GetForegroundVolumeID(), evidence[COMBINED].GetID())
            self.assertEqual(composite.GetBackgroundVolumeID(), volume.GetID())

    def test_request_holds_a_copy_of_the_voxels(self):
        """compute() runs on a worker thread: it must not read the volume's live VTK memory."""
        volume, markups, _ = self.loadSample()
        request = self.logic.prepare(volume, markups)
        live = self.slicer.util.arrayFromVolume(volume)
        self.assertFalse(np.shares_memory(request.image_zyx, live))
        before = request.image_zyx[::7, ::7, ::7].copy()
        live[:] = -1000
        self.slicer.util.arrayFromVolumeModified(volume)
        self.assertTrue(np.array_equal(request.image_zyx[::7, ::7, ::7], before))

    def test_evidence_identity_on_displayed_maps(self):
        """The displayed evidence volumes integrate to the malignancy logit."""
        from ..core.nodule.evidence import COMBINED, SCALE_NAMES, integrate

        slicer = self.slicer
        volume, markups, _ = self.loadSample()
        output = self.logic.analyze(volume, markups)
        result = output.results[0]
        point_id = markups.GetNthControlPointID(0)
        voxel_voi = result.voi_geometry.voxel_volume_mm3()
        self.assertAlmostEqual(
            integrate(result.evidence_voi[COMBINED], voxel_voi),
            result.explanation.parts["image_evidence"],
            delta=VOI_IDENTITY_TOLERANCE
            * max(1.0, abs(result.explanation.parts["image_evidence"])),
        )
        magnitude = integrate(np.abs(result.evidence_voi[COMBINED]), voxel_voi)
        tolerance = EVIDENCE_TOLERANCE * max(1.0, magnitude)
        shown = {}
        for scale, node in output.evidence_nodes[point_id].items():
            voxel_ct = float(np.prod(node.GetSpacing()))
            shown[scale] = integrate(slicer.util.arrayFromVolume(node), voxel_ct)
        self.assertAlmostEqual(
            shown[COMBINED], result.explanation.parts["image_evidence"], delta=tolerance
        )
        self.assertAlmostEqual(sum(shown[s] for s in SCALE_NAMES), shown[COMBINED], delta=tolerance)

    def test_reanalysis_after_move_updates_in_place(self):
        """A moved point updates its row, segment and evidence; other points stay."""
        volume, markups, point_lps = self.loadSample()
        first = self.logic.analyze(volume, markups)
        point_id = markups.GetNthControlPointID(0)
        evidence_ids = {s: n.GetID() for s, n in first.evidence_nodes[point_id].items()}
        moved_ras = point_lps * [-1, -1, 1] + [2.0, -1.5, 2.5]
        markups.SetNthControlPointPositionWorld(0, *moved_ras)
        second = self.logic.analyze(volume, markups, pointIndex=0)
        self.assertIs(second.table_node, first.table_node)
        self.assertIs(second.segmentation_node, first.segmentation_node)
        table = second.table_node
        self.assertEqual(table.GetNumberOfRows(), 1)
        self.assertEqual(second.segmentation_node.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertEqual(
            {s: n.GetID() for s, n in second.evidence_nodes[point_id].items()}, evidence_ids
        )
        row_ras = [float(table.GetCellText(0, table.GetColumnIndex(c))) for c in "ras"]
        self.assertLess(np.abs(np.array(row_ras) - moved_ras).max(), 0.01)
        self.assertSegmentMatchesResult(second, point_id, volume, second.results[0])
        # A second point adds a row; re-analyzing only it leaves the first row alone.
        markups.AddControlPoint(*(moved_ras + [0.0, 0.0, -2.5]), "second")
        row0 = [table.GetCellText(0, c) for c in range(table.GetNumberOfColumns())]
        third = self.logic.analyze(volume, markups, pointIndex=1)
        self.assertEqual(table.GetNumberOfRows(), 2)
        self.assertEqual(third.segmentation_node.GetSegmentation().GetNumberOfSegments(), 2)
        self.assertEqual([table.GetCellText(0, c) for c in range(table.GetNumberOfColumns())], row0)
        # Deleting a point removes its outputs at the next analysis.
        markups.RemoveNthControlPoint(1)
        self.logic.analyze(volume, markups, pointIndex=0)
        self.assertEqual(table.GetNumberOfRows(), 1)
        self.assertEqual(third.segmentation_node.GetSegmentation().GetNumberOfSegments(), 1)

    def test_cancel_leaves_scene_unchanged(self):
        """Cancelling before or during a run changes nothing in the scene."""
        from .logic import AnalysisCancelledError

        volume, markups, point_lps = self.loadSample()
        before = self.sceneSnapshot()
        cancel = threading.Event()
        cancel.set()
        with self.assertRaises(AnalysisCancelledError):
            self.logic.analyze(volume, markups, cancelEvent=cancel)
        self.assertEqual(self.sceneSnapshot(), before)

        self.logic.analyze(volume, markups)
        markups.SetNthControlPointPositionWorld(0, *(point_lps * [-1, -1, 1] + [3.0, 0.0, 0.0]))
        before = self.sceneSnapshot()
        cancel = threading.Event()

        def cancel_while_computing(fraction, message):
            if fraction > 0.0 or message.startswith("Analyzing"):
                cancel.set()

        with self.assertRaises(AnalysisCancelledError):
            self.logic.analyze(
                volume, markups, progressCallback=cancel_while_computing, cancelEvent=cancel
            )
        self.assertEqual(self.sceneSnapshot(), before)

    def test_invalid_inputs_leave_scene_unchanged(self):
        """Non-CT, empty volumes and points outside give clear errors; nothing changes."""
        from .logic import (
            EmptyVolumeError,
            InputError,
            NotCTError,
            PointOutsideError,
        )

        slicer = self.slicer
        volume, markups, _ = self.loadSample()
        label = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
        slicer.util.updateVolumeFromArray(label, np.zeros((4, 8, 8), np.int16))
        eight_bit = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "photo")
        slicer.util.updateVolumeFromArray(eight_bit, np.full((4, 8, 8), 7, np.uint8))
        mr_like = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mr")
        slicer.util.updateVolumeFromArray(
            mr_like, np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8)
        )
        empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
        outside = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "outside")
        outside.AddControlPoint(400.0, 400.0, 400.0, "far away")
        no_points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "none")
        air = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "air")
        corner = _ijk_to_ras(volume).MultiplyPoint(
            (3, 3, volume.GetImageData().GetDimensions()[2] // 2, 1)
        )
        air.AddControlPoint(*corner[:3], "outside the body")
        before = self.sceneSnapshot()
        cases = (
            (label, markups, NotCTError, "label map"),
            (eight_bit, markups, NotCTError, "8-bit"),
            (mr_like, markups, NotCTError, "Hounsfield"),
            (empty, markups, EmptyVolumeError, "empty"),
            (None, markups, InputError, "CT volume"),
            (volume, outside, PointOutsideError, "outside the volume"),
            (volume, air, InputError, "no tissue"),
            (volume, no_points, InputError, "no placed points"),
            (volume, None, InputError, "point list"),
        )
        for vol, points, error, words in cases:
            with self.assertRaises(error) as caught:
                self.logic.analyze(vol, points)
            self.assertIsInstance(caught.exception, ValueError)
            self.assertIn(words, str(caught.exception))
            self.assertEqual(self.sceneSnapshot(), before)

    def test_parent_transforms(self):
        """Transforms on the volume or the points are hardened; outputs follow the volume."""
        from ..core.nodule.evidence import COMBINED

        slicer = self.slicer
        util = slicer.util
        volume, markups, point_lps = self.loadSample()
        point_ras = point_lps * [-1, -1, 1]
        point_id = markups.GetNthControlPointID(0)
        base = self.logic.analyze(volume, markups)
        base_result = base.results[0]
        base_evidence = base.evidence_nodes[point_id][COMBINED]
        base_array = util.arrayFromVolume(base_evidence).copy()
        base_matrix = util.arrayFromVTKMatrix(_ijk_to_ras(base_evidence))

        # Translated volume, point moved along in world: the analysis is the same.
        shift = np.array([12.0, -7.0, 5.0])
        translation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
        matrix = np.eye(4)
        matrix[:3, 3] = shift
        translation.SetMatrixTransformToParent(util.vtkMatrixFromArray(matrix))
        volume.SetAndObserveTransformNodeID(translation.GetID())
        markups.SetNthControlPointPositionWorld(0, *(point_ras + shift))
        moved = self.logic.analyze(volume, markups)
        result = moved.results[0]
        self.assertEqual(moved.table_node.GetNumberOfRows(), 1)
        self.assertAlmostEqual(
            result.malignancy_mil_logit, base_result.malignancy_mil_logit, places=4
        )
        evidence = moved.evidence_nodes[point_id][COMBINED]
        self.assertEqual(evidence.GetTransformNodeID(), translation.GetID())
        self.assertEqual(moved.segmentation_node.GetTransformNodeID(), translation.GetID())
        self.assertLess(
            np.abs(util.arrayFromVTKMatrix(_ijk_to_ras(evidence)) - base_matrix).max(), 1e-4
        )
        self.assertLess(np.abs(util.arrayFromVolume(evidence) - base_array).max(), 1e-4)
        self.assertSegmentMatchesResult(moved, point_id, volume, base_result)

        # Points under a transform instead (volume untransformed): world position is what counts.
        volume.SetAndObserveTransformNodeID(None)
        markups.SetAndObserveTransformNodeID(translation.GetID())
        markups.SetNthControlPointPositionWorld(0, *point_ras)
        again = self.logic.analyze(volume, markups)
        self.assertIsNone(again.segmentation_node.GetTransformNodeID())
        self.assertAlmostEqual(
            again.results[0].malignancy_mil_logit, base_result.malignancy_mil_logit, places=4
        )
        self.assertSegmentMatchesResult(again, point_id, volume, base_result)

        # Rotated volume: the evidence grid is centred on the point in world coordinates.
        markups.SetAndObserveTransformNodeID(None)
        angle = np.deg2rad(20.0)
        rotation = np.eye(4)
        rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        rotated = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rotation")
        rotated.SetMatrixTransformToParent(util.vtkMatrixFromArray(rotation))
        volume.SetAndObserveTransformNodeID(rotated.GetID())
        world_point = rotation[:3, :3] @ point_ras
        markups.SetNthControlPointPositionWorld(0, *world_point)
        turned = self.logic.analyze(volume, markups)
        evidence = turned.evidence_nodes[point_id][COMBINED]
        dims = np.array(evidence.GetImageData().GetDimensions())
        centre_local = util.arrayFromVTKMatrix(_ijk_to_ras(evidence)) @ [*((dims - 1) / 2.0), 1.0]
        centre_world = rotation[:3, :3] @ centre_local[:3]
        spacing = np.array(volume.GetSpacing())
        self.assertLess(np.abs(centre_world - world_point).max(), 2.0 * spacing.max())

    def test_scene_saves_and_reloads_as_mrb(self):
        """Everything survives a .mrb round trip, and re-analysis still updates in place."""
        from ..core.nodule.evidence import COMBINED
        from .logic import NoduleMalignancyLogic
        from .roles import ATTR_ROLE, ROLE_COLOR, ROLE_EVIDENCE, ROLE_SEGMENTATION, ROLE_TABLE

        slicer = self.slicer
        util = slicer.util
        volume, markups, _ = self.loadSample()
        output = self.logic.analyze(volume, markups)
        point_id = markups.GetNthControlPointID(0)
        table = output.table_node
        rows = [[table.GetCellText(0, c) for c in range(table.GetNumberOfColumns())]]
        segment = self.segmentArray(output, point_id, volume).copy()
        evidence = {
            s: util.arrayFromVolume(n).copy() for s, n in output.evidence_nodes[point_id].items()
        }
        folder = Path(tempfile.mkdtemp(prefix="NoduleMalignancy-mrb-"))
        bundle = folder / "scene.mrb"
        try:
            self.assertTrue(util.saveScene(str(bundle)))
            self.clearScene()
            self.assertEqual(len(util.getNodesByClass("vtkMRMLSegmentationNode")), 0)
            util.loadScene(str(bundle))
        finally:
            bundle.unlink(missing_ok=True)
            folder.rmdir()
        logic = NoduleMalignancyLogic(ensemble=self.selfTestEnsemble())
        param = logic.getParameterNode()
        table2 = param.GetNodeReference(ROLE_TABLE)
        segmentation2 = param.GetNodeReference(ROLE_SEGMENTATION)
        self.assertIsNotNone(table2)
        self.assertIsNotNone(segmentation2)
        self.assertEqual(
            [[table2.GetCellText(0, c) for c in range(table2.GetNumberOfColumns())]], rows
        )
        self.assertEqual(param.GetNumberOfNodeReferences(ROLE_EVIDENCE), len(evidence))
        volume2 = util.getNodesByClass("vtkMRMLScalarVolumeNode")
        volume2 = [v for v in volume2 if not v.GetAttribute(ATTR_ROLE)][0]
        markups2 = util.getNodesByClass("vtkMRMLMarkupsFiducialNode")[0]
        self.assertEqual(markups2.GetNthControlPointID(0), point_id)
        segment_id = segmentation2.GetSegmentation().GetSegmentIdBySegmentName(
            markups2.GetNthControlPointLabel(0)
        )
        self.assertTrue(
            np.array_equal(
                util.arrayFromSegmentBinaryLabelmap(segmentation2, segment_id, volume2), segment
            )
        )
        for scale, array in evidence.items():
            node = logic.evidenceNode(point_id, scale)
            self.assertIsNotNone(node, scale)
            self.assertLess(np.abs(util.arrayFromVolume(node) - array).max(), 1e-6)
            self.assertEqual(
                node.GetDisplayNode().GetColorNode().GetName(), "NoduleMalignancyEvidence"
            )
        again = logic.analyze(volume2, markups2)
        self.assertIs(again.table_node, table2)
        self.assertEqual(table2.GetNumberOfRows(), 1)
        self.assertEqual(segmentation2.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertEqual(
            again.evidence_nodes[point_id][COMBINED].GetID(), logic.evidenceNode(point_id).GetID()
        )
        colors = param.GetNodeReference(ROLE_COLOR)
        self.assertIsNotNone(colors)
        self.assertEqual(colors.GetNumberOfColors(), 256)

    def test_segmentation_matches_reader_consensus(self):
        """Readers' consensus from the LIDC XML; Dice with the trained ensemble."""
        from ..core.geometry import ImageGeometry
        from ..files import samples
        from .logic import NoduleMalignancyLogic

        slicer = self.slicer
        volume, markups, point_lps = self.loadSample()
        xml = samples.reader_xml_path(SAMPLE, data_dir=self.dataDir())
        self.assertIsNotNone(xml, "the sample's LIDC reader XML is missing from the cache")
        matrix = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))
        geometry = ImageGeometry.from_ijk_to_ras(matrix, volume.GetImageData().GetDimensions())
        consensus, readers = reader_consensus_mask(xml, geometry, point_lps, level=CONSENSUS_LEVEL)
        self.assertGreaterEqual(readers, 3)
        self.assertGreater(int(consensus.sum()), 200)
        centre = geometry.index_to_lps(np.argwhere(consensus)[:, ::-1].mean(0))
        self.assertLess(float(np.linalg.norm(centre - point_lps)), 5.0)

        trained, reason = trained_ensemble()
        if trained is None:
            self.skipTest(f"Dice >= {DICE_THRESHOLD} needs the trained ensemble ({reason})")
        logic = NoduleMalignancyLogic(ensemble=trained)
        output = logic.analyze(volume, markups)
        point_id = markups.GetNthControlPointID(0)
        overlap = dice(self.segmentArray(output, point_id, volume), consensus)
        self.say(f"Dice (trained ensemble vs. {readers}-reader consensus): {overlap:.3f}")
        self.assertGreaterEqual(overlap, DICE_THRESHOLD)


def _ijk_to_ras(volume_node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix


# Headless host ---------------
class HeadlessSelfTestCase(NoduleMalignancySelfTestMixin, unittest.TestCase):
    """The mixin on the slicer-core runtime (no Qt, no application)."""

    @classmethod
    def setUpClass(cls):
        from .runtime import ensure_slicer_runtime

        ensure_slicer_runtime()

    def setUp(self):
        self.setUpTest()

    def tearDown(self):
        self.clearScene()

    def sampleVolumePath(self) -> Path:
        from ..core import settings
        from ..files import samples

        try:
            return samples.sample_path(SAMPLE, data_dir=self.dataDir())
        except samples.SampleNotFoundError as exc:
            self.fail(f"{exc} (set {settings.DATA_ENV} to the data folder)")


# Latency ---------------
def measure_latency(logic, volume, markups, repeats: int = 3, offset_mm: float = 1.5) -> dict:
    """Point placement -> overlays in MRML, warm: median seconds of ``repeats`` placements.

    One warm-up analysis first (ensemble load, first-call costs); then each repeat places a
    new point near the first one and times ``analyze`` on it (prepare + compute + apply).
    """
    logic.analyze(volume, markups, pointIndex=0)
    base = np.array(markups.GetNthControlPointPositionWorld(0))
    totals, compute, apply = [], [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        index = markups.AddControlPoint(*(base + [offset_mm * (i + 1), 0.0, 0.0]), f"latency {i}")
        output = logic.analyze(volume, markups, pointIndex=index)
        totals.append(time.perf_counter() - t0)
        compute.append(output.timings_s["compute"])
        apply.append(output.timings_s["apply"])
    for _ in range(repeats):
        markups.RemoveNthControlPoint(markups.GetNumberOfControlPoints() - 1)
    return {
        "placement_to_overlay_s": statistics.median(totals),
        "compute_s": statistics.median(compute),
        "mrml_update_s": statistics.median(apply),
        "repeats": repeats,
    }


# CLI ---------------
def register(subparsers) -> None:
    """Add ``nodule-malignancy selftest`` (the module self-test, headless)."""
    parser = subparsers.add_parser(
        "selftest",
        help="run the Slicer module self-test headless on slicer-core (exit code = result)",
    )
    parser.add_argument(
        "--data", default=None, help="data folder (default: $NODULE_MALIGNANCY_DATA)"
    )
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="only tests whose name contains this",
    )
    parser.add_argument("--latency", action="store_true", help="also print the overlay latency")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.set_defaults(func=run_selftest)


def run_selftest(args) -> int:
    """Run :class:`HeadlessSelfTestCase` with unittest; 0 when everything passed."""
    from ..core.extras import require_extra

    require_extra("slicer", "slicer", "vtk")  # before unittest turns it into a test error
    if args.data:
        os.environ["NODULE_MALIGNANCY_DATA"] = str(Path(args.data).expanduser().resolve())
    if not args.quiet:  # show the tests' own figures (Dice, timings) as they run
        import logging

        logging.basicConfig(level=logging.INFO, format="  %(message)s")
    loader = unittest.TestLoader()
    names = loader.getTestCaseNames(HeadlessSelfTestCase)
    if args.patterns:
        names = [n for n in names if any(p in n for p in args.patterns)]
    if not names:  # a selection that matches nothing is a typo, not a pass
        print(f"error: no self-test matches {args.patterns}", file=sys.stderr)
        return 2
    suite = unittest.TestSuite(HeadlessSelfTestCase(n) for n in names)
    result = unittest.TextTestRunner(verbosity=1 if args.quiet else 2).run(suite)
    ok = result.wasSuccessful()
    print(f"{result.testsRun} self-test(s) {'passed' if ok else 'FAILED'}")
    if ok and args.latency:
        from .logic import NoduleMalignancyLogic
        from .runtime import ensure_slicer_runtime, reset_scene

        ensure_slicer_runtime()
        host = HeadlessSelfTestCase("test_analyze_creates_segment_evidence_and_row")
        reset_scene()
        volume, markups, _ = host.loadSample()
        trained, _ = trained_ensemble()
        ensemble = trained or random_test_ensemble()
        logic = NoduleMalignancyLogic(ensemble=ensemble)
        figures = measure_latency(logic, volume, markups)
        which = f"ensemble {ensemble.version}" if trained else "tiny random ensemble"
        print(
            f"latency ({which}, {ensemble.device}, warm): "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
            )
        )
        reset_scene()
    return 0 if ok else 1
