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

__all__ = [
    "MODES",
    "evidence_legend",
    "input_identity",
    "nodule_list",
    "overlay_controls",
    "results_panel",
    "similar_nodules",
    "slice_keys",
    "status_bar",
    "toolbar",
]

_STATUS_TYPE = (  # st.tone: a finished not-assessed point's banner is a warning
    "st.tone || ({done: 'success', refused: 'warning', error: 'error', cancelled: 'info',"
    " busy: 'info'})[st.status] || 'info'"
)


# Mouse modes of the slice views: what a left click or drag does (one is always on).
MODES = {
    "place": ("Place point", "Left click: place a point on a nodule and analyze it"),
    "window_level": ("Window/level", "Left drag: window (left-right) and level (up-down)"),
    "pan_zoom": ("Pan/zoom", "Left drag: pan; right drag: zoom"),
}
# The evidence overlays in words (the stored scale names are the values).
OVERLAY_WORDS = {
    "combined": "Evidence: all scales",
    "fine": "Evidence: fine detail",
    "medium": "Evidence: medium detail",
    "coarse": "Evidence: coarse detail",
    OVERLAY_OFF: "No evidence overlay",
}
# A point's state in words (the nodule list and the panel's head).
STATE_WORDS = (
    "({placed: 'placed', pending: 'waiting', busy: 'analyzing', done: 'analyzed',"
    " refused: 'refused', cancelled: 'cancelled', error: 'failed'})"
)


def toolbar(on_cancel: Callable, on_analyze: Callable, on_clear: Callable) -> None:
    """Window presets, the mouse mode, analyze again, clear (asks first), Cancel while busy."""
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
    with v3.VBtnToggle(
        v_model=("mode", "place"),
        mandatory=True,
        density="compact",
        color="primary",
        classes="mx-2",
        id="station-mode",
    ):
        for name, (words, hint) in MODES.items():
            v3.VBtn(
                words,
                value=name,
                size="small",
                title=hint,
                id=f"station-mode-{name}",
                disabled=("!st.model_allowed",) if name == "place" else False,
            )
    v3.VBtn(
        "Analyze all",
        click=on_analyze,
        size="small",
        variant="tonal",
        classes="mx-1",
        disabled=("st.busy || !st.nodules.length || !st.model_allowed",),
    )
    v3.VBtn(
        "Clear points",
        click="confirm_clear = true",
        size="small",
        variant="text",
        classes="mx-1",
        disabled=("!st.nodules.length",),
        id="station-clear",
    )
    with v3.VDialog(v_model=("confirm_clear", False), max_width=420):
        with v3.VCard(id="station-clear-dialog"):
            v3.VCardTitle("Clear all points?")
            v3.VCardText(
                "{{ st.nodules.length }} points, their outlines and results will be removed "
                "from this CT."
            )
            with v3.VCardActions():
                v3.VSpacer()
                v3.VBtn("Keep them", click="confirm_clear = false", id="station-clear-keep")
                v3.VBtn(
                    "Clear {{ st.nodules.length }} points",
                    color="error",
                    click=(on_clear,),
                    id="station-clear-confirm",
                )
    # Always laid out, hidden while idle: the buttons do not move when an analysis starts.
    # A spinner and Cancel only (the banner says what runs): the space kept stays small.
    with html.Div(
        classes="d-flex align-center mx-2",
        id="station-busy",
        style=("st.busy ? '' : 'visibility: hidden'",),
    ):
        v3.VProgressCircular(
            indeterminate=("st.busy",),
            size=20,
            width=3,
            color="primary",
            classes="mr-2",
            title=("st.cancelling ? 'Cancelling' : 'Analyzing'",),
        )
        v3.VBtn(
            "Cancel",
            click=on_cancel,
            color="error",
            size="small",
            variant="flat",
            disabled=("st.cancelling || !st.busy",),
            id="station-cancel",
        )


# Up/Down arrows and PageUp/PageDown step the slice of the slice view under the mouse (else the
# one last clicked) by one slice, as in Slicer's desktop views; the server steps it
# (``station_step_slice``). Not while typing in a field or on a slider (its own arrows).
SLICE_KEYS_SCRIPT = """
(function () {
  const STEPS = {ArrowUp: 1, PageUp: 1, ArrowDown: -1, PageDown: -1};
  let hovered = null, clicked = null;
  function viewAt(e) {
    for (const box of document.querySelectorAll('.station-slice-box')) {
      const r = box.getBoundingClientRect();
      if (e.clientX >= r.left && e.clientX < r.right && e.clientY >= r.top && e.clientY < r.bottom)
        return box.id.replace('station-view-', '');
    }
    return null;
  }
  document.addEventListener('pointermove', (e) => { hovered = viewAt(e); }, true);
  document.addEventListener('pointerdown', (e) => { clicked = viewAt(e) || clicked; }, true);
  document.addEventListener('keydown', (e) => {
    const steps = STEPS[e.key];
    const t = e.target;
    if (!steps || e.altKey || e.ctrlKey || e.metaKey || !window.trame) return;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName)
              || (t.getAttribute && t.getAttribute('role') === 'slider'))) return;
    const view = hovered || clicked;
    if (!view) return;
    e.preventDefault();
    e.stopPropagation();  // not to the view's own key handling as well
    window.trame.trigger('station_step_slice', [view, steps]);
  }, true);
})();
"""


def slice_keys() -> None:
    """The keyboard's slice stepping (:data:`SLICE_KEYS_SCRIPT`), once per page."""
    from trame.widgets import client

    client.Script(SLICE_KEYS_SCRIPT)


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


def input_identity() -> None:
    """Whose CT this is: patient ID, study date and the series UID's tail (the full UID on
    hover and selectable), from ``panel.input_panel``; a file without DICOM headers says so.

    Every piece is ``v-text`` (the element's exact text): a text child is written on lines of
    its own, which Vue condenses to a leading space ("Patient X , study date ...")."""
    with html.Div(v_if="st.input", id="station-input", classes="text-caption mb-2"):
        with html.Div(v_if="st.input.known", id="station-identity"):
            html.Span(v_text="'Patient '")
            html.Strong(v_text="st.input.patient_id || '(none)'", id="station-patient-id")
            html.Span(v_text="', study date '")
            html.Span(v_text="st.input.study_date || '(none)'", id="station-study-date")
            html.Span(v_text="', series '")
            html.Span(
                v_text="st.input.series_uid_short || '(none)'",
                title=("st.input.series_uid",),
                id="station-series-uid",
                __properties=[("data_uid", "data-uid")],
                data_uid=("st.input.series_uid",),
                style="user-select: all; cursor: help;",
            )
        html.Div(
            "No patient or series recorded in this file (not DICOM).",
            v_if="!st.input.known",
        )


def nodule_list(on_select: Callable, delete_trigger: str) -> None:
    """The points of this CT: a click jumps the views to the nodule (``logic.jumpToNodule``);
    the bin (the server's trigger ``delete_trigger``) deletes that point alone."""
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
            classes="station-nodule",
            __properties=[("data_status", "data-status")],
            data_status=("n.status",),
        ):
            # Not assessed: says so, its short reason below (the whole one on hover).
            v3.VListItemTitle(
                "{{ n.label }}: {{ n.malignancy_text !== null "
                "? n.malignancy_text + ' malignancy' : n.status === 'done' && "
                f"n.assessment === 'not_assessed' ? 'not assessed' : {STATE_WORDS}[n.status] }}}}"
            )
            v3.VListItemSubtitle(
                "{{ n.message }}", v_if="n.message", title=("n.reason || n.message",)
            )
            v3.VListItemSubtitle(  # wrapped: its end is the follow-up Lung-RADS
                "{{ n.prior_text }}",
                v_if="n.prior_text",
                classes="station-nodule-prior",
                style="-webkit-line-clamp: 3; white-space: normal",
            )
            with v3.Template(v_slot_append=True):
                v3.VBtn(
                    icon="mdi-delete-outline",
                    size="x-small",
                    variant="text",
                    title="Delete this point",
                    raw_attrs=[f"@click.stop=\"trigger('{delete_trigger}', [n.id])\""],
                    classes="station-delete",
                )


def overlay_controls() -> None:
    """Evidence overlay (all scales, one scale, or off) with its legend in words, its opacity,
    the outline."""
    with html.Div(v_if="st.panel", classes="mt-2", id="station-overlays"):
        html.Div("Overlays", classes="text-overline")
        v3.VSelect(
            v_model=("overlay", EVIDENCE_SCALES[0]),
            items=(
                "overlay_items",
                [{"value": k, "title": v} for k, v in OVERLAY_WORDS.items()],
            ),
            label="Evidence shown",
            density="compact",
            hide_details=True,
        )
        evidence_legend()
        v3.VSlider(
            v_model=("opacity", 0.7),
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
                label=(
                    "`Nodule outline, yellow (${st.layers.segments}"
                    " segment${st.layers.segments === 1 ? '' : 's'})`",
                ),
                density="compact",
                hide_details=True,
                color="primary",
            )


def evidence_legend() -> None:
    """The colour scale in words: blue towards benign, red towards malignant, clear near 0."""
    with html.Div(v_if="overlay !== 'off'", id="station-legend", classes="my-1"):
        html.Div(
            style=(
                "height:12px;border-radius:2px;background:linear-gradient(to right,"
                "rgb(5,48,148),rgb(58,136,188),rgba(135,190,218,0) 45%,"
                "rgba(242,151,117,0) 55%,rgb(221,87,68),rgb(170,20,33));"
            )
        )
        with html.Div(classes="d-flex text-caption"):
            html.Span("towards benign")
            v3.VSpacer()
            html.Span("weak: clear")
            v3.VSpacer()
            html.Span("towards malignant")
        html.Div(
            "Colour strength relative to the strongest evidence of the map shown (full colour"
            " at its top 0.5 %); below 12 % of it nothing is drawn.",
            classes="text-caption text-medium-emphasis",
        )


def results_panel() -> None:
    """The current point: its state when it has no numbers; else the answer first (not
    assessed: the reason, the numbers only behind "show anyway"; with a warning: the warning
    in words), Lung-RADS and size, then the details, collapsed."""
    with _tagged(
        "st.current_point && !st.panel", "station-current", "status", "st.current_point.status"
    ):
        html.Div(
            f"{{{{ st.current_point.label }}}}: {{{{ {STATE_WORDS}[st.current_point.status] }}}}",
            classes="text-overline",
        )
        html.Div("{{ st.current_point.message }}", classes="text-body-2")
    with _tagged("st.panel", "station-results", "assessment", "st.panel.assessment"):
        html.Div(
            "{{ st.panel.label }}: {{ st.panel.assessment_label }}",
            classes="text-overline",
            id="station-assessment",
        )
        with html.Div(v_if="!st.panel.answered", id="station-not-assessed"):
            v3.VAlert(
                title="Not assessed: probably not a lung nodule",
                text=("st.panel.reason",),
                type="info",
                density="compact",
                variant="tonal",
                classes="mb-2",
            )
            v3.VBtn(
                "{{ show_anyway ? 'Hide the numbers' : 'Show the numbers anyway' }}",
                click="show_anyway = !show_anyway",
                size="small",
                variant="text",
                id="station-show-anyway",
            )
        v3.VAlert(
            v_for="w in st.panel.warnings",
            key="w.code",
            v_if="st.panel.answered",
            text=("w.message",),
            type="warning",
            density="compact",
            variant="tonal",
            classes="mb-1 station-warning",
        )
        with html.Div(v_if="st.panel.answered || show_anyway"):
            html.Div(
                "{{ st.panel.answered ? st.panel.headline : st.panel.withheld_headline }}",
                classes=("st.panel.answered ? 'text-h5' : 'text-h6 text-disabled'",),
                id="station-malignancy",
            )
            html.Div("{{ st.panel.spread }}", classes="text-caption mb-1")
        with html.Div(
            v_for="s in st.panel.sections.filter(s => s.compact && (!s.withheld || show_anyway))",
            key="s.title",
            classes="mt-1 station-section",
        ):
            _section_table()
        with v3.VExpansionPanels(variant="accordion", classes="mt-2", id="station-details"):
            with v3.VExpansionPanel(title="Details"):
                with v3.VExpansionPanelText():
                    with html.Div(
                        v_for=(
                            "s in st.panel.sections.filter(s => !s.compact && "
                            "(!s.withheld || show_anyway))"
                        ),
                        key="s.title",
                        classes="mt-1 station-section",
                    ):
                        _section_table()
        similar_nodules()
        html.Div(
            "Model output: a suggestion for a reader, never a finding.",
            classes="text-caption mt-2",
        )


# The readers' rating in words on hover: apart from the model's probability (issue 29 item 2).
_RATING_HINT = (
    "Mean malignancy rating of the LIDC readers for that nodule (1 highly unlikely to 5 highly "
    "suspicious); above 3: rated suspicious. Not the malignancy probability above."
)


def similar_nodules() -> None:
    """The similar LIDC nodules (``panel.similar_panel``), collapsed under the details: the
    summary line as its title; opened, each neighbour's LIDC name, diameter and mean reader
    malignancy rating, with its axial thumbnail (lung window, 5 mm bar) when the server has
    the LIDC data (rendered when opened); a text table without it. Withheld with the numbers
    when the point is not assessed."""
    with html.Div(
        v_if="st.panel.similar && (!st.panel.similar.withheld || show_anyway)",
        id="station-similar",
        classes="mt-2",
    ):
        with v3.VExpansionPanels(v_model=("similar_panel", None), variant="accordion"):
            with v3.VExpansionPanel(value="similar"):
                with v3.VExpansionPanelTitle(id="station-similar-title"):
                    with html.Div():
                        html.Div("{{ st.panel.similar.title }}", classes="text-caption")
                        html.Div("{{ st.panel.similar.summary }}", id="station-similar-summary")
                with v3.VExpansionPanelText():
                    html.Div(
                        "The LIDC training nodules closest to this one in the network's own "
                        "features, nearest first; reader rating: the LIDC readers' mean "
                        "malignancy rating (1-5), not the probability above.",
                        classes="text-caption text-medium-emphasis mb-1",
                    )
                    with html.Div(
                        v_if="st.panel.similar.neighbours.some(n => n.thumbnail)",
                        style="display:grid;grid-template-columns:repeat(3,1fr);gap:6px;",
                    ):
                        with html.Div(
                            v_for="n in st.panel.similar.neighbours",
                            key="n.nodule",
                            classes="station-similar-nodule text-caption",
                            style="text-align:center;",
                        ):
                            html.Img(
                                v_if="n.thumbnail",
                                src=("n.thumbnail",),
                                width=96,
                                height=96,
                                alt=("n.nodule",),
                                title="Axial slice through its centre, lung window; bar 5 mm",
                                classes="station-similar-thumbnail",
                                style="image-rendering:auto;border-radius:2px;",
                            )
                            html.Div("{{ n.nodule }}", style="font-size:0.7rem;")
                            html.Div("{{ n.diameter_text }}")
                            html.Div(
                                "reader rating {{ n.rating_text }}",
                                title=_RATING_HINT,
                                classes=("n.suspicious ? 'text-orange-lighten-2' : ''",),
                            )
                    with v3.VTable(v_else=True, density="compact"):
                        with html.Thead(), html.Tr():
                            html.Th("LIDC nodule")
                            html.Th("Diameter", classes="text-right")
                            html.Th("Reader rating (1-5)", classes="text-right", title=_RATING_HINT)
                        with html.Tbody():
                            with html.Tr(
                                v_for="n in st.panel.similar.neighbours",
                                key="n.nodule",
                                classes="station-similar-nodule",
                            ):
                                html.Td("{{ n.nodule }}")
                                html.Td("{{ n.diameter_text }}", classes="text-right text-no-wrap")
                                html.Td(
                                    "{{ n.rating_text }}{{ n.suspicious ? ' suspicious' : '' }}",
                                    classes="text-right text-no-wrap",
                                    title=_RATING_HINT,
                                )


def _tagged(v_if: str, element_id: str, name: str, value: str):
    """A Div shown when ``v_if`` holds, carrying ``data-NAME`` = ``value`` (scripts, tests)."""
    return html.Div(
        v_if=v_if,
        id=element_id,
        __properties=[(f"data_{name}", f"data-{name}")],
        **{f"data_{name}": (value,)},
    )


def _section_table() -> None:
    """One section: its title and a compact table of label, value (with unit), note."""
    html.Div("{{ s.title }}", classes="text-subtitle-2")
    with v3.VTable(density="compact"), html.Tbody():
        with html.Template(v_for="r in s.rows", key="r.key"):
            with html.Tr(v_if="!r.items"):
                html.Td("{{ r.label }}")
                html.Td("{{ r.text }}", classes="text-right text-no-wrap")
                html.Td("{{ r.note }}", classes="text-caption")
            with html.Tr(v_else=True):  # a list (the Lung-RADS reasons): the full width
                with html.Td(colspan=3, style="white-space: pre-line", classes="py-1"):
                    html.Div("{{ r.label }}", classes="text-caption text-medium-emphasis")
                    html.Div("{{ r.text }}")
