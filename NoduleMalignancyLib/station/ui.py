"""The station page's widgets: toolbar, status, nodule list, overlays and the results panel.

Why apart from ``app.py``: these are pure layout (vuetify 3 components bound to the
controller's snapshot in the trame state ``st``); the app wires them to the controller. The
results panel is one generic loop over the snapshot's sections (``panel.py``), so a new result
field needs no change here (docs/DESIGN.md §15).
"""

from __future__ import annotations

from collections.abc import Callable

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from ..mrml.roles import EVIDENCE_SCALES
from .controller import OVERLAY_OFF, WINDOW_PRESETS

__all__ = ["nodule_list", "overlay_controls", "results_panel", "status_bar", "toolbar"]

_STATUS_TYPE = (
    "({done: 'success', refused: 'warning', error: 'error', cancelled: 'info', busy: 'info'})"
    "[st.status] || 'info'"
)


def toolbar(on_cancel: Callable, on_analyze: Callable, on_clear: Callable) -> None:
    """Window presets, point placement, analyze again, clear, and Cancel while busy."""
    with v3.VBtnToggle(
        v_model=("window_preset", "lung"), mandatory=True, density="compact", classes="mx-2"
    ):
        for name, (width, level) in WINDOW_PRESETS.items():
            v3.VBtn(
                f"{name.capitalize()}",
                value=name,
                size="small",
                title=f"W{width:g} / L{level:g}",
                id=f"station-window-{name}",
            )
    v3.VSwitch(
        v_model=("placing", True),
        label="Place points",
        color="primary",
        hide_details=True,
        density="compact",
        classes="mx-2",
        disabled=("!st.model_allowed",),
        id="station-placing",
    )
    v3.VBtn(
        "Analyze all",
        click=on_analyze,
        size="small",
        variant="tonal",
        classes="mx-1",
        disabled=("st.busy || !st.nodules.length || !st.model_allowed",),
    )
    v3.VBtn("Clear points", click=on_clear, size="small", variant="text", classes="mx-1")
    with html.Div(v_if="st.busy", classes="d-flex align-center mx-2", id="station-busy"):
        v3.VProgressCircular(indeterminate=True, size=20, width=3, color="primary")
        html.Span("{{ st.cancelling ? 'Cancelling' : 'Analyzing' }}", classes="mx-2")
        v3.VBtn(
            "Cancel",
            click=on_cancel,
            color="error",
            size="small",
            variant="flat",
            disabled=("st.cancelling",),
            id="station-cancel",
        )


def status_bar() -> None:
    """The status line (data-status carries the state for scripts and tests)."""
    with html.Div(
        id="station-status",
        __properties=[("data_status", "data-status")],
        data_status=("st.status",),
    ):
        v3.VAlert(
            text=("st.message",),
            type=(_STATUS_TYPE,),
            density="compact",
            variant="tonal",
            classes="mb-2",
        )
        v3.VProgressLinear(
            v_if="st.busy",
            model_value=("100 * st.fraction",),
            indeterminate=("st.fraction <= 0",),
            color="primary",
            classes="mb-2",
        )


def nodule_list(on_select: Callable) -> None:
    """The points of this CT; a click jumps the views to the nodule (``logic.jumpToNodule``)."""
    html.Div("Nodules", classes="text-overline")
    html.Div(
        "Click on a nodule in a slice view to place a point.",
        v_if="!st.nodules.length",
        classes="text-caption",
    )
    with v3.VList(density="compact", id="station-nodules", classes="py-0"):
        with v3.VListItem(
            v_for="n in st.nodules",
            key="n.id",
            click=(on_select, "[n.id]"),
            active=("n.id === st.current",),
        ):
            v3.VListItemTitle(
                "{{ n.label }}: {{ n.malignancy_text !== null "
                "? n.malignancy_text + ' malignancy' : n.status }}"
            )
            v3.VListItemSubtitle("{{ n.message }}", v_if="n.message")


def overlay_controls() -> None:
    """Evidence volume (combined or one scale, or off), its opacity, the segmentation layer."""
    with html.Div(v_if="st.panel", classes="mt-2", id="station-overlays"):
        html.Div("Overlays", classes="text-overline")
        v3.VSelect(
            v_model=("overlay", EVIDENCE_SCALES[0]),
            items=("overlay_items", [*EVIDENCE_SCALES, OVERLAY_OFF]),
            label="Evidence (logit per mL)",
            density="compact",
            hide_details=True,
        )
        v3.VSlider(
            v_model=("opacity", 0.5),
            min=0.0,
            max=1.0,
            step=0.05,
            label="Opacity",
            density="compact",
            hide_details=True,
            thumb_label=True,
        )
        with html.Div(id="station-segmentation"):
            v3.VSwitch(
                v_model=("segmentation_visible", True),
                label=("`Segmentation outline (${st.layers.segments} segments)`",),
                density="compact",
                hide_details=True,
                color="primary",
            )


def results_panel() -> None:
    """Malignancy with its spread, warnings, then every section of the panel dict."""
    with html.Div(v_if="st.panel", id="station-results"):
        html.Div("Results: {{ st.panel.label }}", classes="text-overline")
        html.Div("{{ st.panel.headline }}", classes="text-h5", id="station-malignancy")
        html.Div("{{ st.panel.spread }}", classes="text-caption mb-2")
        v3.VAlert(
            v_for="w in st.panel.warnings",
            key="w.code",
            title=("w.code",),
            text=("w.message",),
            type="warning",
            density="compact",
            variant="tonal",
            classes="mb-1 station-warning",
        )
        with html.Div(v_for="s in st.panel.sections", key="s.title", classes="mt-2"):
            html.Div("{{ s.title }}", classes="text-subtitle-2")
            with v3.VTable(density="compact"), html.Tbody():
                with html.Tr(v_for="r in s.rows", key="r.key"):
                    html.Td("{{ r.label }}")
                    html.Td(  # a list (the Lung-RADS reasons): one item a line, read left to right
                        "{{ r.text }}",
                        classes=("r.items ? 'text-left' : 'text-right'",),
                        style=("r.items ? 'white-space: pre-line' : ''",),
                    )
                    html.Td("{{ r.note }}", classes="text-caption")
        html.Div(
            "Model output: a suggestion for a reader, never a finding.",
            classes="text-caption mt-2",
        )
