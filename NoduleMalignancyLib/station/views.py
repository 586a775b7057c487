"""The station's Slicer views: a trame-slicer application sharing the logic's scene.

Why a module: the trame page needs Slicer's slice and 3D views (server-rendered images streamed
to the browser), and the MRML logic needs ``slicer.mrmlScene``. Here trame-slicer's
``SlicerApp`` makes the scene and views, the headless runtime adopts that scene
(``ensure_slicer_runtime(scene=..., app_logic=...)``, docs/DESIGN.md §8), and clicks are mapped
through the slice node's XY-to-RAS matrix (docs/DESIGN.md §15).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

__all__ = ["AXIAL", "LAYOUT", "StationViews"]

LAYOUT = "Axial Primary"  # axial large; 3D, coronal and sagittal beside it
AXIAL, CORONAL, SAGITTAL, THREE_D = "Red", "Green", "Yellow", "ThreeD"
VIEW_BOX_ID = "station-view-{}"  # DOM id of a box covering each view (tests, click mapping)


class StationViews:
    """trame-slicer's application, views and layout, with the runtime on its scene.

    Create it before anything calls ``ensure_slicer_runtime()`` in the process: the runtime
    adopts the first scene it is given.
    """

    def __init__(self, server):
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from ..mrml.runtime import ensure_slicer_runtime

        self.server = server
        self.app = SlicerApp()
        self.slicer = ensure_slicer_runtime(scene=self.app.scene, app_logic=self.app.app_logic)
        register_rca_factories(
            self.app.view_manager,
            server,
            slice_view_ui_f=_slice_view_ui,
            three_d_view_ui_f=_three_d_view_ui,
        )
        self.layout = LayoutManager(self.app.scene, self.app.view_manager, server)
        self.layout.register_layout(LAYOUT, _axial_primary())
        self.layout.set_layout(LAYOUT)
        self._sizes: dict[str, tuple[int, int]] = {}

    @property
    def scene(self):
        return self.app.scene

    def view(self, name: str):
        return self.app.view_manager.get_view(name)

    def slice_node(self, name: str = AXIAL):
        return self.view(name).get_view_node()

    def show_volume(self, volume) -> None:
        """CT in every slice view's background, slices shown in 3D, views fitted."""
        display = self.app.display_manager
        display.show_volume_in_slice_background(volume)
        display.show_volume_in_slice_foreground(None)
        for view in self.app.view_manager.get_slice_views():
            view.set_visible_in_3d(True)
        for view in self.app.view_manager.get_views():
            view.reset_view()

    def fit_resized(self) -> bool:
        """Fit each slice view whose size changed since the last call (the browser sizes the
        views after the page is laid out, and again when the window is resized)."""
        changed = False
        for view in self.app.view_manager.get_slice_views():
            size = tuple(view.render_window().GetSize())
            if self._sizes.get(view.get_singleton_tag()) != size:
                self._sizes[view.get_singleton_tag()] = size
                if min(size) > 50:
                    view.fit_view_to_content()
                    view.schedule_render()
                    changed = True
        return changed

    def refresh(self) -> None:
        """Ask every view to render again (after MRML changes the views do not observe)."""
        for view in self.app.view_manager.get_views():
            view.schedule_render()

    def reset_3d(self) -> None:
        for view in self.app.view_manager.get_threed_views():
            view.reset_view()

    # Placement -------------------------------------------------------------------------------
    def set_place_mode(self, markups, on: bool) -> None:
        """Clicks in the views place points into ``markups`` (Slicer's markups placement)."""
        logic = self.app.markups_logic
        if on and markups is not None:
            logic.place_node(markups, persistent=True)
        elif logic.interaction_node is not None:
            logic.disable_place_mode()

    # Click mapping ---------------------------------------------------------------------------
    def ras_to_view_fraction(self, ras: Sequence[float], name: str = AXIAL) -> dict:
        """Where a RAS point (mm) is drawn in a slice view, as fractions of the view's box
        (0, 0 = top left), after moving that view's slice onto the point.

        Slice XY is in render-window pixels with the origin at the bottom left; the browser
        shows the image at the view's CSS size, so fractions are what a click needs.
        """
        import vtk

        node = self.slice_node(name)
        node.JumpSliceByOffsetting(*map(float, ras))
        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy(node.GetXYToRAS())
        matrix.Invert()
        x, y, _, _ = matrix.MultiplyPoint((*map(float, ras), 1.0))
        width, height, _ = node.GetDimensions()
        return {
            "view": name,
            "box_id": VIEW_BOX_ID.format(name),
            "fx": float(x / width),
            "fy": float(1.0 - y / height),
            "size": [int(width), int(height)],
        }

    def view_fraction_to_ras(self, fx: float, fy: float, name: str = AXIAL) -> list[float]:
        """The inverse: a click at fractions of a slice view's box -> RAS on its slice (mm)."""
        node = self.slice_node(name)
        width, height, _ = node.GetDimensions()
        xy = np.array([fx * width, (1.0 - fy) * height, 0.0, 1.0])
        return list(node.GetXYToRAS().MultiplyPoint(tuple(xy))[:3])


def _axial_primary():
    """Axial view two thirds wide; 3D, coronal and sagittal stacked beside it."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    column = Layout(
        LayoutDirection.Vertical,
        [
            ViewLayoutDefinition.threed_view(),
            ViewLayoutDefinition.coronal_view(),
            ViewLayoutDefinition.sagittal_view(),
        ],
    )
    return Layout(
        LayoutDirection.Horizontal,
        [ViewLayoutDefinition.axial_view(), column],
        flex_sizes=["2", "1"],
    )


def _box(view_id: str) -> None:
    """A transparent box covering the view (the page's click mapping and tests find it)."""
    from trame_client.widgets.html import Div

    Div(
        id=VIEW_BOX_ID.format(view_id),
        classes="station-view-box",
        style="position:absolute;inset:0;pointer-events:none;",
    )


def _slice_view_ui(server, view_id, view) -> None:
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    _box(view.get_singleton_tag())
    create_vertical_slice_view_gutter_ui(server, view_id, view)


def _three_d_view_ui(server, view_id, view) -> None:
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    _box(view.get_singleton_tag())
    create_vertical_view_gutter_ui(server, view_id, view)
