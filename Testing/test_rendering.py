"""Offscreen rendering of the overlays with Slicer's own 2D pipeline (no Qt).

Pipeline: ``vtkMRMLSliceLogic`` (reslicing and compositing the background CT and the
foreground evidence volume, with the colour table's alpha) + Slicer's 2D displayable managers
(``vtkMRMLSegmentationsDisplayableManager2D`` draws the segment outline) in an offscreen VTK
render window, as trame-slicer's slice views do. EGL first
(``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow``), OSMesa as the fallback; the tests are
skipped, saying why, when neither renders.

The check: overlay pixels are where the nodule is. Evidence pixels (what the foreground adds)
must map, through the slice node's XY-to-RAS matrix, into the evidence grid around the clicked
point, and be the voxels whose evidence is strong enough to be opaque; outline pixels (what the
segmentation adds) must lie on the segment's voxels.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

_BACKENDS = ("vtkEGLRenderWindow", "vtkOSMesaRenderWindow")
_BACKEND: list[str | None] = []


def offscreen_backend() -> str | None:
    """The first offscreen OpenGL window class that renders here (cached), or ``None``."""
    if _BACKEND:
        return _BACKEND[0]
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401 (registers the OpenGL factories)
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkWindowToImageFilter

    found = None
    first = os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", _BACKENDS[0])
    for name in dict.fromkeys((first, *_BACKENDS)):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = name
        window = vtkRenderWindow()
        if window.GetClassName() != name:
            continue
        window.SetOffScreenRendering(1)
        window.SetSize(8, 8)
        renderer = vtkRenderer()
        renderer.SetBackground(1.0, 0.0, 0.0)
        window.AddRenderer(renderer)
        window.Render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.Update()
        scalars = grab.GetOutput().GetPointData().GetScalars()
        pixel = vtk_to_numpy(scalars)[0] if scalars is not None else None
        window.Finalize()
        if pixel is not None and tuple(pixel[:3]) == (255, 0, 0):
            found = name
            break
    _BACKEND.append(found)
    return found


class OffscreenSliceView:
    """One Slicer slice view rendered offscreen: slice logic, 2D displayable managers, image.

    Why not trame-slicer's view: it drags in the trame server stack; this is the same pipeline
    (slice logic image -> ``vtkImageMapper`` actor; displayable managers in the same renderer).
    """

    MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager")

    def __init__(self, scene, app_logic, name: str = "Red", size: int = 400):
        import slicer
        from vtkmodules.vtkRenderingCore import (
            vtkActor2D,
            vtkImageMapper,
            vtkRenderer,
            vtkRenderWindow,
            vtkRenderWindowInteractor,
        )

        self.scene, self.app_logic, self.size = scene, app_logic, size
        self.window = vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(size, size)
        self.renderer = vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtkRenderWindowInteractor()  # displayable managers expect one
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()

        if scene.GetDefaultNodeByClass("vtkMRMLSliceNode") is None:
            slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        for manager in self.MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetMRMLApplicationLogic(app_logic)
        self.slice_node = self.logic.AddSliceNode(name)
        self.slice_node.SetOrientation("Axial")
        self.managers.SetMRMLDisplayableNode(self.slice_node)
        app_logic.GetSliceLogics().AddItem(self.logic)
        self.composite_node = self.logic.GetSliceCompositeNode()

        self.mapper = vtkImageMapper()  # the slice logic's output is RGBA 0..255
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        self.actor = vtkActor2D()
        self.actor.SetMapper(self.mapper)
        self.actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.actor)
        self.logic.ResizeSliceNode(size, size)

    def look_at(self, ras, field_of_view_mm: float) -> None:
        """Centre the view on a world RAS point with a square field of view."""
        node = self.slice_node
        node.SetFieldOfView(field_of_view_mm, field_of_view_mm, node.GetFieldOfView()[2])
        node.JumpSliceByCentering(*map(float, ras))

    def render(self) -> np.ndarray:
        """The view as an (H, W, 3) uint8 array in VTK order (row 0 = bottom = XY y 0)."""
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.managers.RequestRender()
        self.window.Render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        w, h, _ = image.GetDimensions()
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3].copy()

    def xy_to_ras(self, xy: np.ndarray) -> np.ndarray:
        """Pixel centres (N, 2) as (x, y) in VTK order -> world RAS (N, 3)."""
        import slicer

        m = slicer.util.arrayFromVTKMatrix(self.slice_node.GetXYToRAS())
        pts = np.column_stack([xy + 0.5, np.zeros(len(xy)), np.ones(len(xy))])
        return (pts @ m.T)[:, :3]

    def write_png(self, path) -> None:
        """Save what was rendered last (PNG, top row first as usual)."""
        from vtkmodules.vtkIOImage import vtkPNGWriter
        from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

        grab = vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.Update()
        writer = vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()

    def close(self) -> None:
        """Detach from the scene and the application logic (the scene is shared by tests)."""
        self.managers.SetMRMLDisplayableNode(None)
        self.app_logic.GetSliceLogics().RemoveItem(self.logic)
        for node in (self.composite_node, self.slice_node):
            if node is not None and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)
        self.logic.SetMRMLScene(None)
        self.window.Finalize()


def _ras_to_ijk(volume_node, ras: np.ndarray) -> np.ndarray:
    import slicer
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    m = slicer.util.arrayFromVTKMatrix(matrix)
    return (np.column_stack([ras, np.ones(len(ras))]) @ m.T)[:, :3]


@pytest.fixture(scope="module")
def rendered(slicer_runtime, ct_0001_path, data_dir):
    """Analyze the sample nodule and render the axial view three ways."""
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.files import samples
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic
    from NoduleMalignancyLib.mrml.runtime import reset_scene
    from NoduleMalignancyLib.mrml.selftest import SAMPLE, random_test_ensemble

    backend = offscreen_backend()
    if backend is None:
        pytest.skip("no offscreen OpenGL here: neither EGL nor OSMesa render windows render")
    slicer = slicer_runtime
    scene = reset_scene()
    view = OffscreenSliceView(scene, slicer.app.applicationLogic())
    try:
        volume = slicer.util.loadVolume(str(ct_0001_path))
        name, point_lps = samples.nodule_points_lps(SAMPLE, data_dir=data_dir)[0]
        point_ras = lps_to_ras(point_lps)
        markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
        markups.AddControlPoint(*point_ras, name)
        markups.GetDisplayNode().SetVisibility(False)  # keep the point glyph out of the diffs
        logic = NoduleMalignancyLogic(ensemble=random_test_ensemble())
        output = logic.analyze(volume, markups)
        logic.jumpToNodule(0)
        view.look_at(point_ras, 80.0)
        composite = view.composite_node
        evidence = output.evidence_nodes[markups.GetNthControlPointID(0)]["combined"]
        assert composite.GetForegroundVolumeID() == evidence.GetID()  # apply() showed it
        composite.SetForegroundOpacity(1.0)
        full = view.render()
        composite.SetForegroundOpacity(0.0)
        no_evidence = view.render()
        output.segmentation_node.GetDisplayNode().SetVisibility(False)
        background = view.render()
        output.segmentation_node.GetDisplayNode().SetVisibility(True)
        yield {
            "backend": backend,
            "view": view,
            "volume": volume,
            "output": output,
            "evidence": evidence,
            "point_ras": point_ras,
            "full": full,
            "no_evidence": no_evidence,
            "background": background,
        }
    finally:
        view.close()
        reset_scene()


def _changed(a: np.ndarray, b: np.ndarray, threshold: int = 12) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).max(-1) > threshold


def test_background_is_the_ct_at_the_nodule(rendered):
    """The CT is there: lung (dark) and the nodule (bright) at the view centre."""
    image = rendered["background"].mean(-1)
    size = image.shape[0]
    centre = image[size // 2 - 3 : size // 2 + 4, size // 2 - 3 : size // 2 + 4].mean()
    assert image.std() > 20, "the background layer is blank"
    assert centre > np.percentile(image, 50), (
        "the nodule (soft tissue) should be brighter than lung"
    )


def test_evidence_overlay_is_on_the_nodule(rendered):
    """Evidence pixels lie in the evidence grid around the point, where evidence is strong."""
    import slicer

    view, evidence = rendered["view"], rendered["evidence"]
    changed = _changed(rendered["full"], rendered["no_evidence"])
    ys, xs = np.nonzero(changed)
    assert len(xs) > 200, "no evidence overlay rendered"
    ras = view.xy_to_ras(np.column_stack([xs, ys]).astype(float))
    ijk = _ras_to_ijk(evidence, ras)
    dims = np.array(evidence.GetImageData().GetDimensions())
    inside = np.all((ijk >= -1.0) & (ijk <= dims - 1 + 1.0), axis=1)
    assert inside.mean() > 0.99, "evidence pixels outside the evidence grid (frame mix-up?)"
    # Pixel centroid within the grid around the clicked point (16 mm half-width VOI).
    assert np.abs(ras.mean(0) - rendered["point_ras"])[:2].max() < 16.0
    # Visible pixels are the voxels with opaque evidence (|value| above the transparent band).
    values = slicer.util.arrayFromVolume(evidence)
    index = np.clip(np.rint(ijk).astype(int), 0, dims - 1)
    sampled = np.abs(values[index[:, 2], index[:, 1], index[:, 0]])
    window = float(evidence.GetAttribute("NoduleMalignancy.EvidenceWindow"))
    assert np.mean(sampled >= 0.1 * window) > 0.9, "transparent (low) evidence was drawn"
    # ... and strong evidence in this slice is drawn.
    k = int(np.rint(_ras_to_ijk(evidence, rendered["point_ras"][None])[0, 2]))
    strong = np.argwhere(np.abs(values[k]) >= 0.6 * window)
    if len(strong):
        assert len(xs) >= 0.5 * len(strong), "strong evidence voxels are missing from the view"


def test_segmentation_outline_is_on_the_segment(rendered):
    """Outline pixels lie on the segment's voxels in the displayed slice."""
    import slicer

    view, volume, output = rendered["view"], rendered["volume"], rendered["output"]
    changed = _changed(rendered["no_evidence"], rendered["background"])
    point_id = next(iter(output.segment_ids))
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(
        output.segmentation_node, output.segment_ids[point_id], volume
    )
    k = int(np.rint(_ras_to_ijk(volume, rendered["point_ras"][None])[0, 2]))
    if not mask[k].any():
        pytest.skip("the test ensemble's segment does not reach the displayed slice")
    ys, xs = np.nonzero(changed)
    assert len(xs) > 20, "no segmentation outline rendered"
    ijk = np.rint(_ras_to_ijk(volume, view.xy_to_ras(np.column_stack([xs, ys]).astype(float))))
    ijk = ijk.astype(int)
    assert np.all(ijk[:, 2] == k)
    # Dilate the slice mask by one voxel: the outline is drawn on the segment's border.
    near = mask[k].astype(bool)
    near = (
        near
        | np.roll(near, 1, 0)
        | np.roll(near, -1, 0)
        | np.roll(near, 1, 1)
        | np.roll(near, -1, 1)
    )
    on_segment = near[ijk[:, 1], ijk[:, 0]]
    assert on_segment.mean() > 0.95, "outline pixels away from the segment (frame mix-up?)"
    assert (
        np.abs(
            view.xy_to_ras(np.column_stack([xs, ys]).astype(float)).mean(0) - rendered["point_ras"]
        )[:2].max()
        < 16.0
    )


def test_backend_is_reported(rendered):
    """Which offscreen OpenGL window rendered (EGL expected on Mesa)."""
    assert rendered["backend"] in _BACKENDS
