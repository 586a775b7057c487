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

__all__ = ["AXIAL", "LAYOUT", "PRIOR", "PRIOR_LAYOUT", "StationViews", "orientation_letters"]

LAYOUT = "Axial Primary"  # axial large; 3D, coronal and sagittal beside it
PRIOR_LAYOUT = "Prior beside"  # with a prior CT: the current and the prior axial side by side
AXIAL, CORONAL, SAGITTAL, THREE_D = "Red", "Green", "Yellow", "ThreeD"
PRIOR = "Prior"  # the prior CT's axial view (station/prior_view.py)
VIEW_BOX_ID = "station-view-{}"  # DOM id of a box covering each view (tests, click mapping)
# Field of view (mm) of a jump to a nodule: this many of its diameters, at least ZOOM_MIN_MM.
ZOOM_DIAMETERS, ZOOM_MIN_MM = 6.0, 50.0
# Height (px) kept free of the CT at the bottom of a fitted slice view: Slicer's scale bar and its
# label (14 px text) lie on black there, not over the image (coronal, sagittal).
RULER_BAND_PX = 24
# The 3D view after its fit: this much of the way to the focal point (trame-slicer's zoom).
THREE_D_ZOOM = 0.1
# RAS axis directions as a reader names them (patient Right, Anterior, Superior and opposites).
_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))


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
        self.layout.register_layout(PRIOR_LAYOUT, _prior_beside())
        self.layout.set_layout(LAYOUT)
        self._fitted: set[str] = set()
        self.titles: dict[str, str] = {}  # per view tag: which CT it shows (with a prior)

    @property
    def scene(self):
        return self.app.scene

    def view(self, name: str):
        return self.app.view_manager.get_view(name)

    def slice_node(self, name: str = AXIAL):
        return self.view(name).get_view_node()

    def show_volume(self, volume) -> None:
        """CT in every slice view's background, a scale bar in each; the 3D view shows the
        lungs (translucent, once the warm-up built them) and the nodules' surfaces, without
        opaque slice planes in front of them, from the front; views fitted once their browser
        size is known (:meth:`fit_resized`)."""

        display = self.app.display_manager
        display.show_volume_in_slice_background(volume)
        display.show_volume_in_slice_foreground(None)
        self._show_slice_views()

    def show_prior(self, current, prior) -> None:
        """The prior CT in its own axial view beside the current one (the layout changes); the
        other views keep the current CT (loading a volume shows it in every view)."""
        self.layout.set_layout(PRIOR_LAYOUT)
        self.app.display_manager.show_volume_in_slice_background(current)
        view = self.view(PRIOR)
        view.set_background_volume_id(prior.GetID())
        view.set_foreground_volume_id(None)
        self._show_slice_views()

    def _show_slice_views(self) -> None:
        from slicer import vtkMRMLAbstractViewNode as ViewNode

        for view in self.app.view_manager.get_slice_views():
            view.set_visible_in_3d(False)
            view.set_ruler(ViewNode.RulerTypeThin, ViewNode.RulerColorWhite)
        for view in self.app.view_manager.get_threed_views():
            # The translucent lungs (controller.show_lungs) with the nodules inside: depth
            # peeling draws no translucent surface at all in the server's EGL window.
            view.get_view_node().SetUseDepthPeeling(False)
            view.renderer().SetUseDepthPeeling(False)
        for view in self.app.view_manager.get_views():
            view.reset_view()
        self._fitted.clear()

    def fit_resized(self) -> bool:
        """Fit each slice view to the CT once the browser has sized it (after the page is laid
        out); later resizes keep the reader's slice, centre and zoom (Slicer's own resize)."""
        changed = False
        for view in self.app.view_manager.get_slice_views():
            tag = view.get_singleton_tag()
            if tag not in self._fitted and min(view.render_window().GetSize()) > 50:
                self._fitted.add(tag)
                view.fit_view_to_content()
                self._free_ruler_band(view)
                view.schedule_render()
                changed = True
        return changed

    def _free_ruler_band(self, view) -> None:
        """Zoom a fitted view out a little when the CT reaches its bottom edge (a view fitted
        to the body's height), so the scale bar's label is not drawn over the image."""
        import vtk

        node = view.get_view_node()
        volume = self.scene.GetNodeByID(view.get_background_volume_id() or "")
        _, height, _ = node.GetDimensions()
        if volume is None or height <= 4 * RULER_BAND_PX:
            return
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        ras_to_xy = vtk.vtkMatrix4x4()
        ras_to_xy.DeepCopy(node.GetXYToRAS())
        ras_to_xy.Invert()
        corners = [(x, y, z, 1.0) for x in bounds[:2] for y in bounds[2:4] for z in bounds[4:]]
        if min(ras_to_xy.MultiplyPoint(c)[1] for c in corners) > RULER_BAND_PX:
            return
        k = height / (height - RULER_BAND_PX)  # zoomed out about the centre...
        fov = node.GetFieldOfView()
        node.SetFieldOfView(fov[0] * k, fov[1] * k, fov[2])
        # ...and the centre moved down by half the band: the band is all at the bottom.
        shift_mm = 0.5 * RULER_BAND_PX * fov[1] * k / height
        slice_to_ras = node.GetSliceToRAS()
        for row in range(3):
            moved = slice_to_ras.GetElement(row, 3) - shift_mm * slice_to_ras.GetElement(row, 1)
            slice_to_ras.SetElement(row, 3, moved)
        node.UpdateMatrices()

    def zoom_to(self, ras: Sequence[float], diameter_mm: float) -> None:
        """Centre every slice view on a nodule with a field of view a few diameters wide."""
        fov = max(ZOOM_MIN_MM, ZOOM_DIAMETERS * float(diameter_mm or 0.0))
        for view in self.app.view_manager.get_slice_views():
            node = view.get_view_node()
            width, height, _ = node.GetDimensions()
            aspect = height / width if width else 1.0
            old = node.GetFieldOfView()
            node.SetFieldOfView(fov, fov * aspect, old[2])
            node.JumpSliceByCentering(*map(float, ras))
            view.schedule_render()

    def annotations(self, volume) -> dict[str, dict]:
        """Per slice view: the orientation letters at its four edges, the slice position and
        the window/level, as the page prints them over the view."""
        display = volume.GetDisplayNode() if volume is not None else None
        window = f"W {display.GetWindow():.0f}  L {display.GetLevel():.0f}" if display else ""
        out = {}
        for view in self.app.view_manager.get_slice_views():
            node = view.get_view_node()
            m = node.GetSliceToRAS()
            axes = [[m.GetElement(r, c) for r in range(3)] for c in range(3)]
            letters = orientation_letters(axes[0], axes[1])
            normal = np.asarray(axes[2])
            axis = int(np.argmax(np.abs(normal)))
            center = [m.GetElement(r, 3) for r in range(3)]
            position = float(center[axis])
            out[view.get_singleton_tag()] = {
                **letters,
                "position": f"{_LETTERS[axis][int(position >= 0)]} {abs(position):.1f} mm",
                "window": window,
                "title": self.titles.get(view.get_singleton_tag(), ""),
            }
        return out

    def refresh(self) -> None:
        """Ask every view to render again (after MRML changes the views do not observe)."""
        for view in self.app.view_manager.get_views():
            view.schedule_render()

    def step_slice(self, name: str, steps: int) -> float:
        """Move a slice view by ``steps`` slices (its volume's spacing along the view's normal,
        Slicer's own step; + towards the view's normal), within the CT; returns the offset."""
        view = self.view(name)
        low, high = view.get_slice_range()
        offset = view.get_slice_value() + int(steps) * view.get_slice_step()
        view.set_slice_value(min(max(offset, low), high))
        view.schedule_render()
        return view.get_slice_value()

    def reset_3d(self) -> None:
        """The 3D view from the front (anterior), fitted to what it shows (the lungs once
        built), a little closer than Slicer's fit, which leaves a wide margin."""
        for view in self.app.view_manager.get_threed_views():
            view.reset_view()
            view.zoom(THREE_D_ZOOM)
            view.schedule_render()

    # Placement -------------------------------------------------------------------------------
    def set_place_mode(self, markups, on: bool) -> None:
        """Clicks in the views place points into ``markups`` (Slicer's markups placement)."""
        logic = self.app.markups_logic
        if on and markups is not None:
            logic.place_node(markups, persistent=True)
        elif logic.interaction_node is not None:
            logic.disable_place_mode()

    def set_mode(self, mode: str, markups) -> None:
        """The slice views' mouse mode: ``place`` (a left click places a point),
        ``window_level`` (left drag: window and level) or ``pan_zoom`` (Slicer's view mode:
        Shift+left or middle drag pans, right drag zooms). The markers are locked outside
        ``place``: a drag starting on one pans or windows, never moves the point."""
        from slicer import vtkMRMLInteractionNode as Interaction

        if markups is not None:  # a drag from a marker moves it only while placing
            markups.SetLocked(mode != "place")
        if mode == "place":
            self.set_place_mode(markups, markups is not None)
            return
        self.set_place_mode(markups, False)
        node = self.app.markups_logic.interaction_node
        if node is not None:
            node.SetCurrentInteractionMode(
                Interaction.AdjustWindowLevel
                if mode == "window_level"
                else Interaction.ViewTransform
            )
        self._left_drag_pans(mode == "pan_zoom")

    def _left_drag_pans(self, on: bool) -> None:
        """In Slicer's view mode a left drag does nothing in a slice view (middle drag pans,
        right drag zooms): in the pan/zoom mode a left drag pans too."""
        import vtk
        from slicer import vtkMRMLSliceIntersectionWidget as Widget

        for view in self.app.view_manager.get_slice_views():
            group = view._displayable_manager_group  # trame-slicer keeps no public accessor
            manager = group.GetDisplayableManagerByClassName("vtkMRMLCrosshairDisplayableManager")
            widget = manager.GetSliceIntersectionWidget() if manager is not None else None
            if widget is None:
                continue
            press = vtk.vtkCommand.LeftButtonPressEvent
            if on:
                widget.SetEventTranslationClickAndDrag(
                    Widget.WidgetStateIdle,
                    press,
                    vtk.vtkEvent.NoModifier,
                    Widget.WidgetStateTranslateSlice,
                    Widget.WidgetEventTranslateSliceStart,
                    Widget.WidgetEventTranslateSliceEnd,
                )
            else:
                widget.SetEventTranslation(
                    Widget.WidgetStateIdle, press, vtk.vtkEvent.NoModifier, Widget.WidgetEventNone
                )

    def keep_mode(self, mode: str, markups) -> bool:
        """Put the mode back when Slicer left it (a right click ends placement in Slicer):
        the mode the page shows is the one the views obey. Returns whether it was restored."""
        from slicer import vtkMRMLInteractionNode as Interaction

        node = self.app.markups_logic.interaction_node
        if node is None or markups is None:
            return False
        wanted = {
            "place": Interaction.Place,
            "window_level": Interaction.AdjustWindowLevel,
            "pan_zoom": Interaction.ViewTransform,
        }[mode]
        persistent = mode != "place" or node.GetPlaceModePersistence()
        locked = bool(markups.GetLocked()) == (mode != "place")
        if node.GetCurrentInteractionMode() == wanted and persistent and locked:
            return False
        self.set_mode(mode, markups)
        return True

    # Click mapping ---------------------------------------------------------------------------
    def ras_to_view_fraction(self, ras: Sequence[float], name: str = AXIAL) -> dict:
        """Where a RAS point (mm) is drawn in a slice view, as fractions of the view's box
        (0, 0 = top left), after moving that view's slice onto the point (and centring the
        view on it when it lies outside).

        Slice XY is in render-window pixels with the origin at the bottom left; the browser
        shows the image at the view's CSS size, so fractions are what a click needs.
        """

        node = self.slice_node(name)
        node.JumpSliceByOffsetting(*map(float, ras))
        where = self._fraction(node, ras)
        if not (0.02 < where[0] < 0.98 and 0.02 < where[1] < 0.98):  # off the view: centre it
            node.JumpSliceByCentering(*map(float, ras))
            where = self._fraction(node, ras)
        width, height, _ = node.GetDimensions()
        return {
            "view": name,
            "box_id": VIEW_BOX_ID.format(name),
            "fx": where[0],
            "fy": where[1],
            "size": [int(width), int(height)],
        }

    @staticmethod
    def _fraction(node, ras: Sequence[float]) -> tuple[float, float]:
        import vtk

        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy(node.GetXYToRAS())
        matrix.Invert()
        x, y, _, _ = matrix.MultiplyPoint((*map(float, ras), 1.0))
        width, height, _ = node.GetDimensions()
        return float(x / width), float(1.0 - y / height)

    def view_fraction_to_ras(self, fx: float, fy: float, name: str = AXIAL) -> list[float]:
        """The inverse: a click at fractions of a slice view's box -> RAS on its slice (mm)."""
        node = self.slice_node(name)
        width, height, _ = node.GetDimensions()
        xy = np.array([fx * width, (1.0 - fy) * height, 0.0, 1.0])
        return list(node.GetXYToRAS().MultiplyPoint(tuple(xy))[:3])


def orientation_letters(right: Sequence[float], up: Sequence[float]) -> dict[str, str]:
    """The letters at a view's edges from its screen-right and screen-up directions in RAS
    (e.g. an axial view in radiological convention: left edge "R", top "A")."""

    def letter(direction) -> str:
        d = np.asarray(direction, dtype=float)
        axis = int(np.argmax(np.abs(d)))
        return _LETTERS[axis][int(d[axis] > 0)]

    return {
        "left": letter(-np.asarray(right)),
        "right": letter(right),
        "top": letter(up),
        "bottom": letter(-np.asarray(up)),
    }


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


def _prior_beside():
    """The current CT's axial view and the prior's side by side, equal widths."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    prior = ViewLayoutDefinition.slice_view("Axial", label=PRIOR, color="#8e7cc3")
    return Layout(LayoutDirection.Horizontal, [ViewLayoutDefinition.axial_view(), prior])


def _box(view_id: str, slice_view: bool = True) -> None:
    """A transparent box covering the view (the page's click mapping and tests find it; the
    keyboard's slice stepping finds the slice views' by their class)."""
    from trame_client.widgets.html import Div

    Div(
        id=VIEW_BOX_ID.format(view_id),
        classes="station-view-box" + (" station-slice-box" if slice_view else ""),
        style="position:absolute;inset:0;pointer-events:none;",
    )


_ANNOTATION_STYLE = (
    "position:absolute;pointer-events:none;color:#ffd54f;font:600 13px sans-serif;"
    "text-shadow:0 0 3px #000,0 0 3px #000;"
)


def _annotations(tag: str) -> None:
    """Orientation letters at the edges, slice position and window/level at the top right
    (from ``StationViews.annotations``; the slider at the bottom stays free)."""
    from trame_client.widgets.html import Div

    a = f"annotations.{tag}"
    with Div(v_if=f"annotations && {a}", classes="station-annotations", id=f"station-annot-{tag}"):
        spots = {
            "left": "left:40px;top:50%;",
            "right": "right:8px;top:50%;",
            "top": "left:50%;top:4px;",
            "bottom": "left:50%;bottom:70px;",
        }
        for edge, where in spots.items():
            Div(
                f"{{{{ {a}.{edge} }}}}",
                classes=f"station-letter-{edge}",
                style=_ANNOTATION_STYLE + where,
            )
        Div(
            f"{{{{ {a}.title }}}}",
            classes="station-view-title",
            style=_ANNOTATION_STYLE + "left:40px;top:4px;",
        )
        Div(
            f"{{{{ {a}.position }}}}<br>{{{{ {a}.window }}}}",
            classes="station-readout",
            style=_ANNOTATION_STYLE + "right:8px;top:4px;text-align:right;font-weight:400;",
        )


def _slice_view_ui(server, view_id, view) -> None:
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    _box(view.get_singleton_tag())
    _annotations(view.get_singleton_tag())
    create_vertical_slice_view_gutter_ui(server, view_id, view)


def _three_d_view_ui(server, view_id, view) -> None:
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    _box(view.get_singleton_tag(), slice_view=False)
    create_vertical_view_gutter_ui(server, view_id, view)
