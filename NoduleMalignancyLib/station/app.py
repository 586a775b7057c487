"""The browser reading station: a trame page with Slicer's views over the MRML logic.

Thin on purpose (docs/DESIGN.md §15): the state machine is :class:`.controller.StationController`
(tested without a browser), the widgets are in ``ui.py``, the Slicer views in ``views.py``;
this module builds the page, forwards its events to the controller and, from a timer on the
server's event loop, polls the controller and pushes its snapshot to the browser. Torch runs on
the runner's worker thread, never on the event loop (docs/DESIGN.md §7).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..core.errors import NoduleMalignancyError
from ..core.extras import require_extra
from ..files.exam_html import prior_text

try:  # the MRML layer: slicer-core and vtk, with trame from the station's extra
    from ..mrml.logic import InputError
except ModuleNotFoundError:
    require_extra("station", "slicer", "vtk", "trame", "trame_slicer")
    raise
from .access import StationAccess, install_access, local_origins
from .controller import StationController
from .views import AXIAL, LAYOUT, StationViews

__all__ = ["POLL_S", "StationApp"]

POLL_S = 0.15  # the page's poll interval while the server runs
DELETE_TRIGGER = "station_delete_point"  # the nodule list's bin


class StationApp:
    """The page, its controller and its views (one CT at a time).

    :param server: a trame server (default: a new one).
    :param models_dir: ensemble folder (default: the shipped ``models/``).
    :param device: torch device for the analyses.
    """

    def __init__(self, server=None, *, models_dir: str | Path | None = None, device: str = "auto"):
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module

        self.server = get_server(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.views = StationViews(self.server)  # first: the runtime adopts its scene
        self.controller = StationController(models_dir=models_dir, device=device)
        self.suggested: list[dict] = []
        self.prior = None  # station/prior_view.PriorView with a prior CT
        self._poll_task = None
        self._loop = None  # the server's event loop, once it runs
        self._segments = 0
        self._lungs = None  # the lung model the 3D view was last framed on
        state, ctrl = self.server.state, self.server.controller
        state.trame__title = "Nodule malignancy reading station"
        state.st = self.controller.snapshot()
        state.suggested = []
        state.annotations = {}
        state.mode = "place"
        state.show_anyway = False
        state.similar_panel = None  # "similar" while the similar LIDC nodules are open
        state.confirm_clear = False
        state.change("window_preset")(self._on_window)
        state.change("mode")(self._on_mode)
        state.change("overlay", "opacity")(self._on_overlay)
        state.change("segmentation_visible")(self._on_segmentation)
        state.change("show_anyway")(self._on_show_anyway)
        state.change("similar_panel")(self._on_similar)
        ctrl.on_server_ready.add(self._start_polling)
        ctrl.trigger("station_view_point")(self.view_point)
        ctrl.trigger("station_snapshot")(self.controller.snapshot)
        ctrl.trigger(DELETE_TRIGGER)(self.delete_point)
        ctrl.trigger("station_step_slice")(self.step_slice)
        self.ui = self._build_ui()

    # Loading ---------------------------------------------------------------------------------
    def load(
        self,
        path: str | Path,
        name: str | None = None,
        points_lps=(),
        check_ct: bool = False,
        series_uid: str | None = None,
    ) -> None:
        """Show a CT; ``points_lps``: known nodule points offered as shortcuts; ``check_ct``:
        refuse a volume that is not a CT (``mrml.ct_loading.CTLoadError``); ``series_uid``: the
        series of a folder or archive holding several."""
        volume = self.controller.load_ct(path, name, check_ct=check_ct, series_uid=series_uid)
        self.controller.markups.AddObserver(
            self.controller.slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._poll_soon
        )
        if self.prior is not None:  # another CT: its prior is not this one's
            self.prior.close()
            self.prior, self.views.titles = None, {}
            self.controller.followup = None
            self.views.layout.set_layout(LAYOUT)
        self.views.show_volume(volume)
        self.suggested = [
            {"name": str(n), "lps": [float(v) for v in p]} for n, p in (points_lps or ())
        ]
        if self.suggested:  # show the slice of the first one (a start, not the answer)
            from ..core.geometry import lps_to_ras

            ras = lps_to_ras(self.suggested[0]["lps"])
            self.views.slicer.vtkMRMLSliceNode.JumpAllSlices(
                self.views.scene,
                *map(float, ras),
                self.views.slicer.vtkMRMLSliceNode.DefaultJumpSlice,
            )
        self.views.set_mode(self._mode(), self.controller.markups)
        self._push()

    def load_prior(self, path: str | Path, series_uid: str | None = None) -> None:
        """Open a prior CT of the current one beside it, registered, its view following the
        current's (station/prior_view.py)."""
        from ..mrml.ct_loading import load_ct_volume
        from .prior_view import PriorView

        if self.controller.volume is None:
            raise InputError("Open the current CT before its prior.")
        volume = load_ct_volume(path, None, check_ct=True, series_uid=series_uid)
        self.prior = PriorView(self.views, self.controller.volume, volume)
        self.controller.followup = self.prior.followup  # the panel's Lung-RADS: follow-up
        self.prior.follow()
        self._push()

    def _compare_with_prior(self) -> bool:
        """Each analyzed nodule's comparison with the prior in the nodule list, once found,
        with its follow-up Lung-RADS category and behaviour (the panel shows their reasons)."""
        controller = self.controller

        def ensemble():
            return controller.logic.ensemble(controller.device)

        done = self.prior.compare(controller.results, ensemble)
        for point_id, entry in done.items():
            if point_id in controller.points:
                text = prior_text(entry)
                followup = self.prior.followup(point_id, controller.results.get(point_id))
                if followup is not None:
                    text += f"; Lung-RADS {followup.category} ({followup.behavior})"
                controller.points[point_id]["prior_text"] = text
        return bool(done)

    def load_sample(self, name: str) -> None:
        from ..files.samples import nodule_points_lps, sample_path

        path = sample_path(name)
        try:
            points = nodule_points_lps(name)
        except (NoduleMalignancyError, OSError, ValueError, KeyError) as exc:  # a convenience
            logging.getLogger(__name__).warning("no reader points for %s: %s", name, exc)
            points = []
        self.load(path, name, points)

    # Events (event loop thread) --------------------------------------------------------------
    def _on_window(self, window_preset, **_):
        if self.controller.volume is not None:
            self.controller.set_window(window_preset)
            self._push()

    def _mode(self) -> str:
        """The mouse mode the page shows (placing only while the model may be shown)."""
        mode = self.server.state.mode or "place"
        return "pan_zoom" if mode == "place" and not self.controller.model_allowed else mode

    def _on_mode(self, mode, **_):
        self.views.set_mode(self._mode(), self.controller.markups)

    def _on_overlay(self, overlay, opacity, **_):
        self.controller.set_overlay(overlay, float(opacity))
        self._push()

    def _on_segmentation(self, segmentation_visible, **_):
        self.controller.set_segmentation_visible(bool(segmentation_visible))
        self._push()

    def _on_show_anyway(self, show_anyway, **_):
        self.controller.set_show_withheld(bool(show_anyway))
        self.views.refresh()

    def _on_similar(self, similar_panel, **_):
        self.controller.set_similar_open(similar_panel in ("similar", ["similar"]))
        self._push()  # the thumbnails, rendered now

    def cancel(self) -> None:
        self.controller.cancel()
        self._push()

    def analyze_all(self) -> None:
        self.controller.analyze()
        self._push()

    def clear_points(self) -> None:
        """The dialog's confirm button: every point goes (the page asked first)."""
        # Closed from here, and pushed even if the page's "open" never reached the server (a
        # fast confirm): else the dialog's scrim stays over the page.
        self.server.state.confirm_clear = False
        self.server.state.dirty("confirm_clear")
        self.controller.clear_points()
        self._push()

    def delete_point(self, point_id: str) -> None:
        self.controller.delete_point(point_id)
        self._push()

    def select(self, point_id: str) -> None:
        self.controller.select(point_id)
        self._zoom_to_current()
        self._push()

    def _zoom_to_current(self) -> None:
        """A jump to an analyzed nodule zooms the slice views onto it."""
        result = self.controller.results.get(self.controller.current)
        if result is not None:
            ras = self.controller.points[self.controller.current]["ras"]
            self.views.zoom_to(ras, result.diameter_mm)

    def analyze_suggested(self, index: int) -> None:
        point = self.suggested[int(index)]
        self.controller.add_point_lps(point["lps"], point["name"].rsplit("_", 1)[-1])
        self._push()

    def step_slice(self, view: str, steps: int) -> float:
        """The keyboard: a slice view one slice on (Up/PageUp) or back (Down/PageDown); the
        position readout follows at once."""
        if self.controller.volume is None:
            return 0.0
        offset = self.views.step_slice(view, steps)
        self._push_annotations()
        return offset

    def view_point(self, ras, view: str = AXIAL) -> dict:
        """Test and scripting hook: move a slice view onto a RAS point and say where it is
        drawn (fractions of the view's box, ``views.StationViews.ras_to_view_fraction``)."""
        where = self.views.ras_to_view_fraction(ras, view)
        self.views.refresh()
        return where

    # Polling ---------------------------------------------------------------------------------
    def _start_polling(self, **_):
        if self._poll_task is None:
            self._loop = asyncio.get_event_loop()
            self.controller.runner.notify = self._poll_soon
            self._poll_task = asyncio.ensure_future(self._poll_loop())

    def _poll_soon(self, *_) -> None:
        """Poll at once (from any thread): a point placed in a view starts its analysis, and a
        finished analysis is shown, without waiting for the next tick (up to POLL_S each:
        issue 29's click to overlay)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._poll_once)

    async def _poll_loop(self):
        while True:
            await asyncio.sleep(POLL_S)
            self._poll_once()

    def _poll_once(self) -> None:
        try:
            changed = self.views.fit_resized()
            segments = self.controller.layers()["segments"]
            if segments != self._segments:  # the 3D view frames the nodules' surfaces
                self._segments = segments
                self.views.reset_3d()
            changed |= self.views.keep_mode(self._mode(), self.controller.markups)
            if self.prior is not None:
                changed |= self.prior.follow() | self._compare_with_prior()
            current = self.controller.current
            changed |= self.controller.poll()
            if self.controller.lung_model is not self._lungs:  # the lungs came: framed
                self._lungs = self.controller.lung_model
                self.views.reset_3d()
                changed = True
            if changed or current != self.controller.current:
                self._push()
            else:
                self._push_annotations()
        except Exception as exc:  # a bug must not stop the page's polling
            self.controller.set_status("error", f"Station error: {exc}")
            self._push()

    def _push(self) -> None:
        with self.server.state as state:
            snapshot = self.controller.snapshot()
            if snapshot["current"] != (state.st or {}).get("current"):
                state.show_anyway = False  # "show anyway" is asked per nodule
            state.st = snapshot
            state.suggested = self.suggested
            state.annotations = self.views.annotations(self.controller.volume)
            if state.mode == "place" and not self.controller.model_allowed:
                state.mode = "pan_zoom"  # the toggle shows the mode the views obey
            if self.controller.window:  # a new CT starts on the lung preset
                state.window_preset = self.controller.window
        self.views.refresh()

    def _push_annotations(self) -> None:
        """The views' letters, slice position and window/level, when the reader changed them
        (scrolling, left-drag window/level)."""
        annotations = self.views.annotations(self.controller.volume)
        if annotations != self.server.state.annotations:
            self.server.state.annotations = annotations
            self.server.state.flush()

    # Page ------------------------------------------------------------------------------------
    def _build_ui(self):
        from trame.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame.widgets import client, html
        from trame.widgets import vuetify3 as v3

        from . import ui

        with SinglePageWithDrawerLayout(self.server, theme="dark") as layout:
            layout.title.set_text("Nodule malignancy")
            layout.footer.hide()  # it covered the axial view's slice slider
            # The slice sliders sit above Slicer's scale bar (both at the views' bottom).
            client.Style(".slice-slider-gutter { bottom: 26px !important; }")
            ui.slice_keys()
            with layout.toolbar:
                html.Span("{{ st.volume }}", classes="text-caption mx-2")
                v3.VSpacer()
                ui.toolbar(self.cancel, self.analyze_all, self.clear_points)
            with layout.drawer as drawer:
                drawer.width = 440
                drawer.location = "right"
                with html.Div(classes="pa-3"):
                    self._drawer_top()
                    ui.input_identity()
                    ui.status_bar()
                    with html.Div(v_if="suggested.length", classes="mb-2"):
                        html.Div("Readers' nodules of this sample", classes="text-overline")
                        v3.VBtn(
                            "Analyze {{ p.name }}",
                            v_for="(p, i) in suggested",
                            key="p.name",
                            click=(self.analyze_suggested, "[i]"),
                            size="small",
                            variant="tonal",
                            classes="mr-1 mb-1",
                            disabled=("st.busy",),
                        )
                    ui.nodule_list(self.select, DELETE_TRIGGER)
                    ui.overlay_controls()
                    ui.results_panel()
            with layout.content:
                with html.Div(style="position:relative;width:100%;height:calc(100vh - 64px);"):
                    self.views.layout.initialize_layout_grid(layout)
        return layout

    def open_path(self, path: str) -> None:
        """Open a CT by its path on the server (the page's "Open" field)."""
        try:
            self.load(str(path).strip())
        except (InputError, OSError, RuntimeError, ValueError) as exc:
            self.controller.set_status("error", f"Cannot open {path}: {exc}")
            self._push()

    def _drawer_top(self) -> None:
        """Widgets above the status line: opening a CT by path (the study replaces this)."""
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        with html.Div(classes="d-flex align-center mb-2"):
            v3.VTextField(
                v_model=("ct_path", ""),
                label="CT path on the server (file, DICOM folder, .tar.gz)",
                density="compact",
                hide_details=True,
                disabled=("st.busy",),
            )
            v3.VBtn(
                "Open",
                click=(self.open_path, "[ct_path]"),
                size="small",
                classes="ml-2",
                disabled=("st.busy || !ct_path",),
            )

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        access: StationAccess | None = None,
        **kwargs,
    ) -> None:
        """Serve the page (blocking); ``timeout=0``: never exit for lack of clients.

        ``access``: the websocket secret and the extra origins allowed (default: a new secret;
        the page's own origins are always allowed). Call with a concrete port.
        """
        access = access or StationAccess()
        access.origins |= local_origins(host, port)
        install_access(self.server, access)
        try:
            self.server.start(
                host=host, port=port, open_browser=False, timeout=0, exec_mode="main", **kwargs
            )
        finally:
            self.controller.shutdown()
