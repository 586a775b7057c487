"""Headless Slicer runtime on slicer-core, pinned on the real LIDC-IDRI-0001 CT.

Conventions checked here: Slicer works in RAS, SimpleITK/LIDC in LPS (x, y negated); Slicer's
IJK is ITK's continuous index; arrays are (z, y, x) on both sides.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.files import samples
from NoduleMalignancyLib.mrml import runtime

NAME = "LIDC-IDRI-0001"


@pytest.fixture(scope="module")
def sitk_ct(ct_0001_path) -> sitk.Image:
    return sitk.ReadImage(str(ct_0001_path))


@pytest.fixture(scope="module")
def nodule_lps(data_dir) -> np.ndarray:
    return np.array(samples.nodule_points_lps(NAME, data_dir=data_dir)[0][1])


def _ras_to_ijk(volume_node, ras) -> np.ndarray:
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    return np.array(matrix.MultiplyPoint([*ras, 1.0])[:3])


def _sphere_mask(image: sitk.Image, center_lps, radius_mm: float) -> np.ndarray:
    """(z, y, x) uint8 mask of voxels whose centres lie within ``radius_mm`` of the point."""
    ci = np.array(image.TransformPhysicalPointToContinuousIndex(tuple(center_lps)))
    spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    lo = np.maximum(np.floor(ci - radius_mm / spacing), 0).astype(int)
    hi = np.minimum(np.ceil(ci + radius_mm / spacing) + 1, size).astype(int)
    k, j, i = np.meshgrid(
        *(np.arange(a, b) for a, b in zip(lo[::-1], hi[::-1], strict=True)), indexing="ij"
    )
    d2 = (
        ((i - ci[0]) * spacing[0]) ** 2
        + ((j - ci[1]) * spacing[1]) ** 2
        + ((k - ci[2]) * spacing[2]) ** 2
    )
    mask = np.zeros(tuple(size[::-1]), np.uint8)
    mask[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = d2 <= radius_mm**2
    return mask


def _add_segmentation(slicer, volume, mask, name="nodule"):
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = seg.GetSegmentation().AddEmptySegment(name, name)  # (ID, name)
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, seg, segment_id, volume)
    return seg, segment_id


def test_runtime_is_complete_and_idempotent(slicer_runtime, mrml_scene):
    slicer = runtime.ensure_slicer_runtime()
    assert slicer is slicer_runtime
    assert slicer.mrmlScene is mrml_scene
    assert runtime.ensure_slicer_runtime().mrmlScene is mrml_scene
    assert runtime.is_headless_runtime()
    app_logic = slicer.app.applicationLogic()
    assert slicer.app.mrmlScene() is mrml_scene
    assert app_logic.GetMRMLScene() is mrml_scene
    for module, logic_name in (
        ("colors", "Colors"),
        ("volumes", "Volumes"),
        ("segmentations", "Segmentations"),
        ("markups", "Markups"),
        ("tables", "Tables"),
        ("subjecthierarchy", "SubjectHierarchy"),
        ("transforms", "Transforms"),
    ):
        logic = getattr(slicer.modules, module).logic()
        assert logic is not None
        assert app_logic.GetModuleLogic(logic_name) is logic
    assert app_logic.GetColorLogic() is slicer.modules.colors.logic()
    assert slicer.app.temporaryPath and slicer.app.processEvents() is None
    # Default colour tables, and the stand-in for the file-based labelmap table.
    assert mrml_scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is not None
    labelmap_colors = slicer.modules.colors.logic().GetDefaultLabelMapColorNodeID()
    assert mrml_scene.GetNodeByID(labelmap_colors) is not None
    io = slicer.app.coreIOManager()
    for file_name, file_type in (
        ("a/ct.nrrd", "VolumeFile"),
        ("a/ct.nii.gz", "VolumeFile"),
        ("a/nodule.seg.nrrd", "SegmentationFile"),
        ("a/points.mrk.json", "NoFile"),  # not read headless (fenced)
        ("a/scene.mrb", "SceneFile"),
        ("a/notes.xyz", "NoFile"),
    ):
        assert io.fileType(file_name) == file_type, file_name
    # Nothing here needs Qt.
    assert "qt" not in sys.modules and "ctk" not in sys.modules


def test_inside_slicer_application_is_left_alone():
    real_app = types.SimpleNamespace(commandOptions=lambda: None)
    assert runtime.inside_slicer(types.SimpleNamespace(app=real_app))
    assert runtime.inside_slicer(types.SimpleNamespace(ScriptedLoadableModule=object()))
    assert not runtime.inside_slicer(types.SimpleNamespace())
    assert not runtime.inside_slicer()  # the headless runtime is not the application


def test_reset_scene_clears_nodes(slicer_runtime, mrml_scene):
    slicer = slicer_runtime
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "table")
    runtime.reset_scene()
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsNode") == 0
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    assert slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeFileGenericColors.txt")
    assert slicer.mrmlScene.GetNodeByID("vtkMRMLSelectionNodeSingleton") is not None


def test_load_volume_and_point_ras_to_ijk(
    slicer_runtime, mrml_scene, ct_0001_path, sitk_ct, nodule_lps
):
    slicer = slicer_runtime
    volume = slicer.util.loadVolume(str(ct_0001_path))
    assert volume.IsA("vtkMRMLScalarVolumeNode") and volume.GetName() == NAME
    assert slicer.app.applicationLogic().GetSelectionNode().GetActiveVolumeID() == volume.GetID()

    array = slicer.util.arrayFromVolume(volume)
    assert array.shape == samples.SAMPLES[NAME].shape_zyx
    assert samples.voxel_sha256(array) == samples.SAMPLES[NAME].voxel_sha256
    np.testing.assert_allclose(volume.GetSpacing(), sitk_ct.GetSpacing())
    origin_lps = np.array(sitk_ct.GetOrigin())
    np.testing.assert_allclose(volume.GetOrigin(), origin_lps * [-1, -1, 1], atol=1e-5)

    # A markups point at the readers' nodule, placed in RAS.
    nodule_ras = nodule_lps * [-1.0, -1.0, 1.0]
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    points.AddControlPoint(*nodule_ras, "n0")
    placed = np.array(points.GetNthControlPointPositionWorld(0))
    np.testing.assert_allclose(placed, nodule_ras, atol=1e-9)

    ijk_slicer = _ras_to_ijk(volume, placed)
    ijk_itk = np.array(sitk_ct.TransformPhysicalPointToContinuousIndex(tuple(nodule_lps)))
    np.testing.assert_allclose(ijk_slicer, ijk_itk, atol=1e-4)
    i, j, k = (int(round(c)) for c in ijk_itk)
    assert array[k, j, i] == sitk_ct.GetPixel(i, j, k)
    assert array[k, j, i] > -300  # soft tissue of the nodule, not lung air


def test_segmentation_from_array_round_trip(
    slicer_runtime, mrml_scene, ct_0001_path, sitk_ct, nodule_lps
):
    slicer = slicer_runtime
    volume = slicer.util.loadVolume(str(ct_0001_path))
    mask = _sphere_mask(sitk_ct, nodule_lps, radius_mm=8.0)
    assert 1000 < mask.sum() < 3000
    seg, segment_id = _add_segmentation(slicer, volume, mask)
    back = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, volume)
    assert back.shape == mask.shape
    np.testing.assert_array_equal(back, mask)
    # The temporary labelmap nodes the helpers create are gone again.
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0


def test_save_and_load_nodes_through_util(
    slicer_runtime, mrml_scene, ct_0001_path, sitk_ct, nodule_lps, tmp_path
):
    slicer = slicer_runtime
    volume = slicer.util.loadVolume(str(ct_0001_path))
    mask = _sphere_mask(sitk_ct, nodule_lps, radius_mm=6.0)
    seg, segment_id = _add_segmentation(slicer, volume, mask)
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    points.AddControlPoint(*(nodule_lps * [-1.0, -1.0, 1.0]), "n0")

    assert slicer.util.saveNode(seg, str(tmp_path / "nodule.seg.nrrd"))
    assert slicer.util.saveNode(points, str(tmp_path / "nodules.mrk.json"))
    table = slicer.util.updateTableFromArray(
        None, (np.array([1.5, 2.5]), np.array([3, 4])), ["diameter_mm", "count"]
    )
    assert slicer.util.saveNode(table, str(tmp_path / "results.tsv"))
    assert slicer.util.exportNode(volume, str(tmp_path / "ct.nrrd"), {"useCompression": False})
    assert b"encoding: raw" in (tmp_path / "ct.nrrd").read_bytes()[:1000]
    assert volume.GetStorageNode().GetFileName() == str(ct_0001_path)  # export changes nothing

    runtime.reset_scene()
    volume2 = slicer.util.loadVolume(str(tmp_path / "ct.nrrd"), {"name": "ct"})
    assert volume2.GetName() == "ct"
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(volume2), sitk.GetArrayViewFromImage(sitk_ct)
    )
    seg2 = slicer.util.loadSegmentation(str(tmp_path / "nodule.seg.nrrd"))
    sid2 = seg2.GetSegmentation().GetSegmentIdBySegmentName("nodule")
    np.testing.assert_array_equal(
        slicer.util.arrayFromSegmentBinaryLabelmap(seg2, sid2, volume2), mask
    )
    assert '"controlPoints"' in (tmp_path / "nodules.mrk.json").read_text()
    assert (tmp_path / "results.tsv").read_text().splitlines()[1:] == ["1.5\t3", "2.5\t4"]
    # Reading is fenced to volumes, segmentations and scenes, with a message that says so.
    messages = slicer.vtkMRMLMessageCollection()
    io = slicer.app.coreIOManager()
    assert not io.loadNodes(
        "MarkupsFile", {"fileName": str(tmp_path / "nodules.mrk.json")}, None, messages
    )
    assert "not read by the headless runtime" in messages.GetAllMessagesAsString()
    with pytest.raises(RuntimeError, match="missing.nrrd"):
        slicer.util.loadVolume(str(tmp_path / "missing.nrrd"))


def test_mrb_round_trip(slicer_runtime, mrml_scene, ct_0001_path, sitk_ct, nodule_lps, tmp_path):
    slicer = slicer_runtime
    volume = slicer.util.loadVolume(str(ct_0001_path))
    nodule_ras = nodule_lps * [-1.0, -1.0, 1.0]
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
    points.AddControlPoint(*nodule_ras, "n0")
    mask = _sphere_mask(sitk_ct, nodule_lps, radius_mm=8.0)
    _add_segmentation(slicer, volume, mask)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))

    bundle = tmp_path / "scene.mrb"
    assert slicer.util.saveScene(str(bundle))
    assert bundle.is_file() and bundle.stat().st_size > 1_000_000

    runtime.reset_scene()
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == 0
    slicer.util.loadScene(str(bundle))

    volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
    assert [v.GetName() for v in volumes] == [NAME]
    volume2 = volumes[0]
    assert (
        samples.voxel_sha256(slicer.util.arrayFromVolume(volume2))
        == samples.SAMPLES[NAME].voxel_sha256
    )
    np.testing.assert_allclose(
        slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume2)), ijk_to_ras, atol=1e-6
    )

    points2 = slicer.util.getNode("nodules")
    assert points2.GetNumberOfControlPoints() == 1
    assert points2.GetNthControlPointLabel(0) == "n0"
    np.testing.assert_allclose(points2.GetNthControlPointPosition(0), nodule_ras, atol=1e-6)

    segs = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    assert len(segs) == 1
    seg2 = segs[0]
    segment_id = seg2.GetSegmentation().GetSegmentIdBySegmentName("nodule")
    assert segment_id
    np.testing.assert_array_equal(
        slicer.util.arrayFromSegmentBinaryLabelmap(seg2, segment_id, volume2), mask
    )
    bundle.unlink()


def _ijk_to_ras(volume_node):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix
