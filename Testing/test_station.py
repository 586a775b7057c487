"""The browser reading station (docs/DESIGN.md §15): its controller without a browser, then the
real page in Debian's chromium through Playwright.

The controller tests drive the same state machine the page drives (load, place a point, run
through the analysis runner, poll, cancel) on LIDC-IDRI-0001 with the tiny random ensemble; the
browser test starts ``nodule-malignancy app`` in a subprocess and clicks on the nodule.
"""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np
import pytest
import station_page
from stepping import FakeClock, SteppedExecutor

from NoduleMalignancyLib.core.nodule.explanation import PARTS
from NoduleMalignancyLib.core.result_schema import GROUP_TITLES
from NoduleMalignancyLib.files import samples
from NoduleMalignancyLib.mrml.selftest import SAMPLE, random_test_ensemble

NODULE_LPS = (56.17, 86.2, -115.86)
NODULE_RAS = (-56.17, -86.2, -115.86)
AIR_RAS = (-14.0, 140.0, -115.86)  # in front of the chest, on the nodule's slice


@pytest.fixture
def station(slicer_runtime, mrml_scene, ct_0001_path):
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic
    from NoduleMalignancyLib.station.controller import StationController

    executor, clock = SteppedExecutor(), FakeClock()
    controller = StationController(
        NoduleMalignancyLogic(ensemble=random_test_ensemble()),
        device="cpu",
        executor=executor,
        clock=clock,
    )
    controller.load_ct(ct_0001_path, name=SAMPLE)
    controller.clock = clock
    yield controller, executor
    controller.shutdown()


def test_sample_point_is_the_known_nodule(data_dir):
    (_, point), *_ = samples.nodule_points_lps(SAMPLE, data_dir=data_dir)
    assert np.allclose(point, NODULE_LPS)


def test_load_windows_the_ct_for_the_lung(station):
    controller, _ = station
    display = controller.volume.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (1500.0, -600.0)
    controller.set_window("mediastinum")
    assert (display.GetWindow(), display.GetLevel()) == (400.0, 40.0)
    snap = controller.snapshot()
    assert (
        snap["status"] == "ready" and snap["window"] == "mediastinum" and snap["volume"] == SAMPLE
    )


def test_loading_a_ct_builds_its_lung_mask_before_the_first_click(station):
    """The warm-up thread leaves the CT's lung mask in the cache the click's scope check reads
    (the first click then costs a warm one) and the scene as it was."""
    from NoduleMalignancyLib.core.scope import lung_mask
    from NoduleMalignancyLib.mrml.logic import read_ct_volume

    controller, _ = station
    controller.warm_up_thread.join(timeout=60)
    assert not controller.warm_up_thread.is_alive()
    image, _, world = read_ct_volume(controller.volume)
    calls = []
    original = lung_mask._block_max
    lung_mask._block_max = lambda *a: calls.append(1) or original(*a)
    try:
        assert lung_mask.lung_mask(image, world) is not None
    finally:
        lung_mask._block_max = original
    assert calls == []  # a cache hit: the mask was built by the warm-up
    assert controller.snapshot()["status"] == "ready"


def test_point_on_the_nodule_gives_the_results_panel(station):
    controller, executor = station
    point_id = controller.add_point(NODULE_RAS)
    snap = controller.snapshot()
    assert snap["busy"] and snap["status"] == "busy" and snap["nodules"][0]["status"] == "busy"
    executor.run_next()
    assert controller.poll()
    snap = controller.snapshot()
    assert snap["status"] == "done" and not snap["busy"] and snap["current"] == point_id
    panel = snap["panel"]
    assert 0.0 <= panel["malignancy_probability"] <= 1.0 and panel["malignancy_sd"] >= 0
    assert re.fullmatch(r"Malignancy \d{1,3}\.\d %", panel["headline"]), panel["headline"]
    assert isinstance(panel["warnings"], list)
    assert all({"code", "message"} <= set(w) for w in panel["warnings"])
    sections = {s["title"]: s["rows"] for s in panel["sections"]}
    attributes = {r["key"]: r for r in sections[GROUP_TITLES["attributes"]]}
    assert {"subtlety", "spiculation", "malignancy_score"} <= set(attributes)
    assert all(1.0 <= r["value"] <= 5.0 and r["note"] for r in attributes.values())
    measured = {r["key"]: r for r in sections[GROUP_TITLES["size"]]}
    assert {"volume_mm3", "diameter_mm", "mean_diameter_mm"} <= set(measured)
    assert measured["mean_diameter_mm"]["text"].endswith(" mm")
    explained = {r["key"]: r["value"] for r in sections[GROUP_TITLES["explanation"]]}
    shares = [v for k, v in explained.items() if k.startswith("malignancy_logit_")]
    assert len(shares) == len(PARTS)
    assert abs(sum(shares) - explained["malignancy_logit"]) < 1e-6, "the parts sum to the logit"
    nodule_text = snap["nodules"][0]["malignancy_text"]
    assert panel["headline"] == f"Malignancy {nodule_text}"
    # The overlays are in the scene: segment, combined evidence as foreground.
    segmentation = controller.logic.lastOutput.segmentation_node
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert controller.select(point_id) is not None


def _first_dicom_header(archive):
    """The first DICOM header of an archive, read with pydicom (not the code under test)."""
    import io
    import tarfile

    import pydicom

    with tarfile.open(archive) as tar:
        member = next(m for m in tar if m.isfile() and m.name.lower().endswith(".dcm"))
        return pydicom.dcmread(io.BytesIO(tar.extractfile(member).read()), stop_before_pixels=True)


def _vue_text(template: str, values: dict) -> str:
    """The text Vue 3 shows for a template of spans (its default whitespace "condense": a text
    node on lines of its own keeps one space each side, whitespace between elements goes;
    ``v-text`` sets the text exactly), with ``st.input.<key>`` read from ``values``. The old
    template read "Patient X , study date D , series U"."""
    from html.parser import HTMLParser

    def evaluate(expression: str) -> str:
        for term in expression.split("||"):
            term = term.strip()
            if term[:1] == "'":
                return term.strip("'")
            if values.get(term.removeprefix("st.input.")):
                return values[term.removeprefix("st.input.")]
        return ""

    pieces: list[str] = []

    class Reader(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if dict(attrs).get("v-text"):
                pieces.append(evaluate(dict(attrs)["v-text"]))

        def handle_data(self, data):
            if data.strip():
                text = re.sub(r"[\t\r\n\f ]+", " ", data)
                pieces.append(re.sub(r"\{\{(.*?)\}\}", lambda m: evaluate(m.group(1)), text))

    Reader().feed(template)
    return re.sub(" +", " ", "".join(pieces)).strip()  # the browser collapses runs of spaces


def test_the_identity_line_has_no_space_before_its_commas():
    """The station's "Patient X, study date D, series U" line as Vue renders its template (a
    span's text on lines of its own gave "Patient X , study date D , series U")."""
    from trame.app import get_server
    from trame.ui.html import DivLayout

    from NoduleMalignancyLib.station import ui

    with DivLayout(get_server("identity-line", client_type="vue3")) as layout:
        ui.input_identity()
    template = layout.root.html
    known = template[template.index('id="station-identity"') :].split("</div>")[0]
    values = {"patient_id": "LIDC-IDRI-0001", "study_date": "2000-01-01"}
    values["series_uid_short"] = "…123456789012"
    assert _vue_text("<div " + known, values) == (
        "Patient LIDC-IDRI-0001, study date 2000-01-01, series …123456789012"
    )


def test_the_station_says_whose_ct_it_shows_and_the_table_records_it(station, data_dir):
    """Issue 28: the station and the results table name the patient, study date and series
    read, for the cached sample (an NRRD that keeps the DICOM tags) and a DICOM archive."""
    from NoduleMalignancyLib.mrml.roles import ROLE_TABLE

    controller, executor = station
    shown = controller.snapshot()["input"]
    assert shown["patient_id"] == SAMPLE and shown["known"]
    assert shown["series_uid"].startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.")
    assert shown["series_uid_short"] == "…" + shown["series_uid"][-12:]
    archive = data_dir / "lidc_ct" / "LIDC-IDRI-0006.tar.gz"
    header = _first_dicom_header(archive)
    controller.load_ct(archive, name="LIDC-IDRI-0006")
    shown = controller.snapshot()["input"]
    date = str(header.StudyDate)
    assert shown == {
        "patient_id": "LIDC-IDRI-0006",
        "study_date": f"{date[:4]}-{date[4:6]}-{date[6:]}",
        "series_uid": str(header.SeriesInstanceUID),
        "series_uid_short": "…" + str(header.SeriesInstanceUID)[-12:],
        "known": True,
    }
    from NoduleMalignancyLib.core.geometry import lps_to_ras

    (_, nodule), *_ = samples.nodule_points_lps("LIDC-IDRI-0006", data_dir=data_dir)
    _analyze(controller, executor, lps_to_ras(nodule))
    assert controller.snapshot()["nodules"][0]["status"] == "done"
    table = controller.logic.getParameterNode().GetNodeReference(ROLE_TABLE)
    cells = {
        name: table.GetTable().GetColumnByName(name).GetValue(0)
        for name in ("patient_id", "study_date", "series_uid")
    }
    assert cells == {
        "patient_id": "LIDC-IDRI-0006",
        "study_date": date,
        "series_uid": str(header.SeriesInstanceUID),
    }
    controller.close_ct()
    assert controller.snapshot()["input"] is None


def test_the_panel_shows_schema_fields_with_their_units_once():
    """Every row is a schema field with the schema's label and unit; the Lung-RADS section and
    the measurements print the same mean diameter (one rounding), calcification appears once."""
    from NoduleMalignancyLib.core.result_schema import field, unknown_names
    from NoduleMalignancyLib.station.panel import result_panel

    summary = {
        "malignancy_probability": 0.25,
        "malignancy_sd": 0.05,
        "fold_malignancy_probabilities": [0.2, 0.3],
        "margin": 3.2,
        "margin_wording": "Medium margin",
        "warnings": ["thick_slices"],
        "warning_messages": ["Slices are 3 mm thick."],
        "volume_mm3": 512.0,
        "mean_diameter_mm": 5.75,
        "calcification_probability": 0.12,
        "lung_rads": "3",
        "lung_rads_reasons": ["mean axial diameter 5.8 mm (long and short axis, to 0.1 mm)"],
    }
    panel = result_panel(summary, "N1")
    assert panel["headline"] == "Malignancy 25.0 %"
    assert panel["spread"] == "the 2 models of the ensemble: 20.0 % to 30.0 %"
    certain = result_panel(
        summary
        | {
            "malignancy_probability": 0.9991,
            "malignancy_sd": 0.0004,
            "fold_malignancy_probabilities": [0.999, 0.9993],
        }
    )
    assert certain["headline"] == "Malignancy > 99 %", "no digits past what was calibrated"
    assert certain["spread"] == "all 2 models of the ensemble: > 99 %"
    assert panel["warnings"] == [{"code": "thick_slices", "message": "Slices are 3 mm thick."}]
    rows = [r for s in panel["sections"] for r in s["rows"]]
    assert unknown_names(r["key"] for r in rows) == []
    by_key = {r["key"]: r for r in rows}
    assert by_key["volume_mm3"]["text"] == "512.0 mm³"
    assert by_key["mean_diameter_mm"]["text"] == "5.8 mm"
    assert "5.8 mm" in by_key["lung_rads_reasons"]["text"]
    assert by_key["margin"]["note"] == "Medium margin"
    assert [r["key"] for r in rows].count("calcification_probability") == 1
    assert by_key["calcification_probability"]["text"] == "12.0 %"
    assert all(r["label"] == field(r["key"]).label for r in rows)


def test_cancel_changes_nothing(station):
    controller, executor = station
    # Counted after what the loaded CT adds on its own: the warm-up's 3D lung surface (on the
    # poll after it ends) and the module's parameter node (on the first snapshot); the test
    # raced them (64 == 63 on a loaded machine).
    controller.warm_up_thread.join(timeout=300)
    controller.poll()
    controller.snapshot()
    nodes_before = controller.logic.scene.GetNumberOfNodes()
    controller.add_point(NODULE_RAS)
    controller.cancel()
    assert controller.snapshot()["cancelling"]
    executor.run_next()
    controller.poll()
    snap = controller.snapshot()
    assert snap["status"] == "cancelled" and snap["panel"] is None and not snap["busy"]
    assert snap["nodules"][0]["status"] == "cancelled"
    assert controller.logic.scene.GetNumberOfNodes() == nodes_before


def test_a_point_in_air_is_refused_with_a_message_not_numbers(station):
    controller, executor = station
    volume = controller.volume
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    k = volume.GetImageData().GetDimensions()[2] // 2
    air = ijk_to_ras.MultiplyPoint((4.0, 4.0, float(k), 1.0))[:3]  # a corner: outside the body
    controller.add_point(air)
    executor.run_next()
    controller.poll()
    snap = controller.snapshot()
    assert snap["status"] == "refused" and snap["code"] == "no_tissue", snap["message"]
    assert snap["panel"] is None and snap["nodules"][0]["malignancy_text"] is None
    assert "air" in snap["message"].lower() or "tissue" in snap["message"].lower()


def test_a_click_in_a_view_starts_at_once_a_moved_point_after_the_debounce(station):
    """One click needs no wait (issue 29: the 0.5 s debounce was spent on every single click);
    a dragged point is analyzed once the drag has stopped for the debounce."""
    controller, executor = station
    markups = controller.markups
    markups.AddControlPoint(*NODULE_RAS, "")  # what markups placement in a slice view does
    clock = controller.clock  # the debounce runs on a fake clock
    controller.poll()
    controller.poll()
    assert controller.snapshot()["status"] == "busy" and len(executor.jobs) == 1
    executor.run_next()
    controller.poll()
    assert controller.snapshot()["nodules"][0]["status"] == "done"
    markups.SetNthControlPointPositionWorld(0, NODULE_RAS[0] + 1.0, *NODULE_RAS[1:])
    controller.poll()
    snap = controller.snapshot()
    assert snap["nodules"][0]["status"] == "pending" and not executor.jobs
    assert snap["panel"] is None, "a moved point's old numbers are not its new position's"
    clock.now += 1.0
    controller.poll()
    assert controller.snapshot()["status"] == "busy" and len(executor.jobs) == 1


def test_a_click_makes_the_new_point_current_before_its_analysis_starts(station):
    """Right after a click is synced the panel is the new point's (waiting, no numbers), never
    the previous nodule's result while the new one waits for its run (issue 29)."""
    controller, executor = station
    first = _analyze(controller, executor, NODULE_RAS)
    assert controller.snapshot()["panel"] is not None
    controller.markups.AddControlPoint(NODULE_RAS[0] + 40.0, *NODULE_RAS[1:], "")
    (new,) = controller.sync_points()
    snap = controller.snapshot()
    assert new != first and snap["current"] == new and snap["panel"] is None
    assert snap["current_point"]["status"] == "pending"
    assert snap["nodules"][-1]["malignancy_text"] is None
    assert snap["layers"]["evidence"] == ""


def _analyze(controller, executor, ras) -> str:
    point_id = controller.add_point(ras)
    executor.run_next()
    controller.poll()
    return point_id


def _air(controller):
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    controller.volume.GetIJKToRASMatrix(ijk_to_ras)
    k = controller.volume.GetImageData().GetDimensions()[2] // 2
    return ijk_to_ras.MultiplyPoint((4.0, 4.0, float(k), 1.0))[:3]  # a corner: no body


def test_the_panel_is_the_current_points_after_a_refusal_and_a_cancel(station):
    """Never the previous nodule's numbers: a refused or cancelled point becomes the current
    one, with its state and message and no panel; its marker is drawn grey (unselected)."""
    controller, executor = station
    first = _analyze(controller, executor, NODULE_RAS)
    assert controller.snapshot()["panel"] is not None
    refused = _analyze(controller, executor, _air(controller))
    snap = controller.snapshot()
    assert snap["current"] == refused and snap["panel"] is None
    assert snap["current_point"]["status"] == "refused" and snap["current_point"]["message"]
    markups = controller.markups
    assert not markups.GetNthControlPointSelected(markups.GetControlPointIndexByID(refused))
    assert markups.GetNthControlPointSelected(markups.GetControlPointIndexByID(first))
    controller.select(first)
    assert controller.snapshot()["panel"]["label"] == "N1"
    cancelled = controller.add_point((NODULE_RAS[0] + 40.0, *NODULE_RAS[1:]))
    assert controller.snapshot()["panel"] is None, "busy: no other nodule's numbers"
    controller.cancel()
    executor.run_next()
    controller.poll()
    snap = controller.snapshot()
    assert snap["current"] == cancelled and snap["panel"] is None
    assert snap["current_point"]["status"] == "cancelled"
    assert not markups.GetNthControlPointSelected(markups.GetControlPointIndexByID(cancelled))


def test_each_marker_takes_its_points_state_colour(station):
    """Green (selected) while analysed and when answered; grey (unselected) when refused; a
    not-assessed point hidden in the reader's list and drawn, with its label, by the orange
    display-only list; the point left highlighted by the placement (Slicer's "active" point,
    which hid the refused point's grey in issue 29's picture) is no longer highlighted."""
    from NoduleMalignancyLib.mrml.roles import MARKER_WARNING_COLOR
    from NoduleMalignancyLib.station.controller import WARNING_MARKUPS_NAME

    controller, executor = station
    markups, warning = controller.markups, controller.warning_markers
    assert warning.GetName() == WARNING_MARKUPS_NAME and warning.GetLocked()
    assert warning.GetDisplayNode().GetSelectedColor() == MARKER_WARNING_COLOR
    first = _analyze(controller, executor, NODULE_RAS)
    display = markups.GetDisplayNode()
    display.SetActiveControlPoint(0)  # as the placement leaves the clicked point
    refused = _analyze(controller, executor, _air(controller))
    assert not display.HasActiveComponent()

    def index(point_id):
        return markups.GetControlPointIndexByID(point_id)

    assert markups.GetNthControlPointSelected(index(first))
    assert not markups.GetNthControlPointSelected(index(refused))
    assert markups.GetNthControlPointVisibility(index(refused))
    assert warning.GetNumberOfControlPoints() == 0
    controller.points[first]["assessment"] = "not_assessed"  # as a chest-wall click ends
    controller.style_markers()
    assert not markups.GetNthControlPointVisibility(index(first))
    assert warning.GetNumberOfControlPoints() == 1 and warning.GetNthControlPointLabel(0) == "N1"
    assert np.allclose(warning.GetNthControlPointPositionWorld(0), controller.points[first]["ras"])
    controller.delete_point(first)
    assert warning.GetNumberOfControlPoints() == 0


def test_the_3d_view_gets_the_lungs_from_the_warm_up_not_from_a_click(station):
    """The warm-up thread builds the lung surface (the scope layer's mask, smoothed and
    decimated); the next poll adds it, once, as a translucent model drawn in 3D only; it spans
    both lungs (about 25 cm across on LIDC-IDRI-0001) and goes with the CT."""
    from NoduleMalignancyLib.mrml.roles import ATTR_ROLE, ROLE_LUNG_SURFACE

    controller, executor = station
    controller.warm_up_thread.join(timeout=120)
    controller.poll()
    model = controller.lung_model
    assert model is not None and model.GetAttribute(ATTR_ROLE) == ROLE_LUNG_SURFACE
    display = model.GetDisplayNode()
    assert display.GetVisibility3D() and not display.GetVisibility2D()
    assert 0 < display.GetOpacity() < 0.5
    polys = model.GetPolyData().GetNumberOfPolys()
    assert 10_000 < polys <= 40_000, polys
    x0, x1, y0, y1, z0, z1 = model.GetPolyData().GetBounds()
    assert 200 < x1 - x0 < 300 and x0 < NODULE_RAS[0] < x1 and z0 < NODULE_RAS[2] < z1
    _analyze(controller, executor, NODULE_RAS)
    assert controller.lung_model is model  # a click builds nothing for the 3D view
    controller.close_ct()
    assert model.GetScene() is None


def test_the_banner_describes_the_current_point_and_follows_the_selection(station):
    """Assessed: "Analyzed N1" (success look); refused: its reason (refusal look); not
    assessed: "N1: not assessed — reason" with a warning look, never "Analyzed" as a success;
    selecting another nodule replaces the banner (no refusal left over)."""
    from NoduleMalignancyLib.core.scope.validation import Finding

    controller, executor = station
    first = _analyze(controller, executor, NODULE_RAS)
    tier = controller.results[first].assessment.tier
    snap = controller.snapshot()
    assert snap["status"] == "done" and snap["message"].startswith("Analyzed N1"), tier
    assert snap["tone"] == ("warning" if tier == "flagged" else "")
    refused = _analyze(controller, executor, _air(controller))
    snap = controller.snapshot()
    reason = snap["message"]
    assert snap["status"] == "refused" and snap["code"] == "no_tissue" and snap["tone"] == ""
    controller.select(first)
    snap = controller.snapshot()
    assert snap["status"] == "done" and snap["message"].startswith("Analyzed N1"), snap["message"]
    controller.results[first].warnings = [
        Finding("outside_lung", "The point is outside."),
        Finding("point_off_nodule", "The outline lies beside the point."),
    ]  # the banner says the first reason, the panel all of them
    controller.select(refused)
    snap = controller.snapshot()
    assert (snap["status"], snap["message"], snap["code"]) == ("refused", reason, "no_tissue")
    controller.select(first)
    snap = controller.snapshot()
    assert snap["message"] == "N1: not assessed — The point is outside."
    assert snap["status"] == "done" and snap["tone"] == "warning"


def test_a_click_on_an_analyzed_nodule_selects_it_and_one_point_can_be_deleted(station):
    from NoduleMalignancyLib.mrml.roles import ROLE_SEGMENTATION, ROLE_TABLE

    controller, executor = station
    first = _analyze(controller, executor, NODULE_RAS)
    other = _analyze(controller, executor, (NODULE_RAS[0] + 40.0, *NODULE_RAS[1:]))
    markups = controller.markups
    assert markups.GetNumberOfControlPoints() == 2 and controller.current == other
    # The API and a click in a view (markups placement) both select instead of duplicating.
    assert controller.add_point((NODULE_RAS[0] + 0.5, *NODULE_RAS[1:])) == first
    assert markups.GetNumberOfControlPoints() == 2 and controller.current == first
    controller.select(other)
    markups.AddControlPoint(NODULE_RAS[0], NODULE_RAS[1] + 0.5, NODULE_RAS[2], "")
    controller.poll()
    assert markups.GetNumberOfControlPoints() == 2 and controller.current == first
    assert not executor.jobs and len(controller.snapshot()["nodules"]) == 2
    # Delete one: its outline and row go, the other nodule stays.
    param = controller.logic.getParameterNode()
    segments = param.GetNodeReference(ROLE_SEGMENTATION).GetSegmentation()
    assert segments.GetNumberOfSegments() == 2
    controller.delete_point(first)
    snap = controller.snapshot()
    assert [n["id"] for n in snap["nodules"]] == [other] and snap["panel"] is None
    assert markups.GetNumberOfControlPoints() == 1 and segments.GetNumberOfSegments() == 1
    assert param.GetNodeReference(ROLE_TABLE).GetNumberOfRows() == 1
    assert controller.logic.evidenceNode(first) is None
    assert controller.logic.evidenceNode(other) is not None


def test_a_not_assessed_answer_leads_with_its_reason_and_withholds_the_numbers():
    """Not assessed: no headline malignancy, the reason first, every number (Lung-RADS, the
    explanation, the readers' malignancy rating, the outline's size) withheld (the page shows
    them only on "show anyway");
    flagged: the warning in words; no snake_case in anything the page prints."""
    from NoduleMalignancyLib.station.panel import result_panel

    summary = {
        "assessment": "not_assessed",
        "assessment_reason": "The point lies outside the lung.",
        "malignancy_probability": 0.877,
        "malignancy_sd": 0.05,
        "fold_malignancy_probabilities": [0.85, 0.9],
        "malignancy_score": 3.9,
        "margin": 3.2,
        "warnings": ["outside_lung"],
        "warning_messages": ["The point lies outside the lung."],
        "diameter_mm": 12.3,
        "malignancy_logit": 1.9,
        "lung_rads_reasons": ["solid 12.3 mm"],
    }
    panel = result_panel(summary, "N2")
    assert not panel["answered"] and panel["headline"] == "Not assessed"
    assert "87.7" not in panel["headline"] and panel["withheld_headline"] == "Malignancy 87.7 %"
    assert panel["reason"] == "The point lies outside the lung."
    withheld = {s["group"] for s in panel["sections"] if s["withheld"]}
    assert {"lung_rads", "explanation", "attributes", "size"} <= withheld
    assert [s["group"] for s in panel["sections"] if not s["withheld"]] == []
    solid = summary | {"assessment": "assessed", "warnings": [], "warning_messages": []}
    solid |= {"lung_rads_texture_class": "solid", "lung_rads_solid_mean_diameter_mm": 28.0}
    rows = [r["key"] for s in result_panel(solid, "N4")["sections"] for r in s["rows"]]
    assert "lung_rads_solid_mean_diameter_mm" not in rows  # part-solid only (a review: 28 vs 29)
    part = solid | {"lung_rads_texture_class": "part-solid"}
    rows = [r["key"] for s in result_panel(part, "N4")["sections"] for r in s["rows"]]
    assert "lung_rads_solid_mean_diameter_mm" in rows
    flagged = result_panel(summary | {"assessment": "flagged", "warnings": ["thick_slices"]}, "N3")
    assert flagged["answered"] and flagged["headline"] == "Malignancy 87.7 %"
    assert flagged["assessment_label"] == "Assessed, with a warning"
    assert not any(s["withheld"] for s in flagged["sections"])
    sections = {s["group"]: s for s in flagged["sections"]}
    assert [s["group"] for s in flagged["sections"]][:2] == ["lung_rads", "size"]
    rating = sections["attributes"]["rows"][0]
    assert rating["key"] == "malignancy_score" and "not the probability" in rating["note"]
    printed = [flagged["headline"], flagged["spread"], flagged["assessment_label"]]
    printed += [w["message"] for w in flagged["warnings"]]
    printed += [s["title"] for s in flagged["sections"]]
    printed += [v for s in flagged["sections"] for r in s["rows"] for v in (r["label"], r["text"])]
    assert not [t for t in printed if re.search(r"[a-z]_[a-z]", t)], printed


def test_orientation_letters_of_the_three_slice_views():
    from NoduleMalignancyLib.station.views import orientation_letters

    # Slicer's default slice-to-RAS: axial x = -R (screen right is patient left), y = A.
    assert orientation_letters((-1, 0, 0), (0, 1, 0)) == {
        "left": "R", "right": "L", "top": "A", "bottom": "P"
    }  # fmt: skip
    assert orientation_letters((-1, 0, 0), (0, 0, 1))["top"] == "S"  # coronal
    assert orientation_letters((0, 1, 0), (0, 0, 1))["right"] == "A"  # sagittal


def test_real_worker_thread_run(slicer_runtime, mrml_scene, ct_0001_path):
    """The default executor (one worker thread): poll until the busy state ends."""
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic
    from NoduleMalignancyLib.station.controller import StationController

    controller = StationController(NoduleMalignancyLogic(ensemble=random_test_ensemble()))
    try:
        controller.load_ct(ct_0001_path, name=SAMPLE)
        controller.add_point(NODULE_RAS)
        deadline = time.monotonic() + 60
        while controller.busy and time.monotonic() < deadline:
            controller.poll()
            time.sleep(0.05)
        controller.poll()
        assert controller.snapshot()["status"] == "done", controller.snapshot()["message"]
    finally:
        controller.shutdown()


MODES_SCRIPT = """
import sys
from NoduleMalignancyLib.station.app import StationApp
app = StationApp(models_dir=sys.argv[1], device="cpu")
app.load_sample("LIDC-IDRI-0001")
view, node = app.views.view("Red"), app.views.slice_node("Red")
view.render_window().SetSize(600, 600)
view.interactor().SetSize(600, 600)
app.views.fit_resized()
display = app.controller.volume.GetDisplayNode()

def left_drag():
    it = view.interactor()
    it.SetEventInformationFlipY(300, 300)
    it.InvokeEvent("LeftButtonPressEvent")
    for k in range(1, 8):
        it.SetEventInformationFlipY(300 + 10 * k, 300 + 5 * k)
        it.InvokeEvent("MouseMoveEvent")
    it.InvokeEvent("LeftButtonReleaseEvent")

def seen():
    m = node.GetXYToRAS()
    return (display.GetWindow(), display.GetLevel(), tuple(m.GetElement(i, 3) for i in range(3)),
            app.controller.markups.GetNumberOfControlPoints())

for mode in ("pan_zoom", "window_level", "place"):
    app.views.set_mode(mode, app.controller.markups)
    before = seen()
    left_drag()
    after = seen()
    print(mode, [a != b for a, b in zip(before, after)])
markups = app.controller.markups
for mode in ("pan_zoom", "window_level"):  # a drag starting on a marker leaves it in place
    app.views.set_mode(mode, markups)
    markups.RemoveAllControlPoints()
    markups.AddControlPoint(*node.GetXYToRAS().MultiplyPoint((300, 300, 0, 1))[:3], "N1")
    before = markups.GetNthControlPointPositionWorld(0)
    it = view.interactor()
    it.SetEventInformationFlipY(300, 300)
    it.InvokeEvent("MouseMoveEvent")  # hover the marker first, as a reader's mouse does
    left_drag()
    moved = max(abs(a - b) for a, b in zip(before, markups.GetNthControlPointPositionWorld(0)))
    print("marker_" + mode, f"moved {moved:.1f} mm")
app.controller.shutdown()
"""


def test_each_mouse_mode_does_what_it_says_with_a_left_drag(tiny_dir, ct_0001_path):
    """In Slicer's slice views (no browser): pan/zoom pans (only the slice origin moves),
    window/level changes window and level, place adds a point; a drag starting on a marker
    moves it in neither pan/zoom nor window/level (the markers are locked outside placing)."""
    lines, output = station_page.run_script(MODES_SCRIPT, tiny_dir)
    assert lines == {
        "pan_zoom": "[False, False, True, False]",
        "window_level": "[True, True, False, False]",
        "place": "[False, False, False, True]",
        "marker_pan_zoom": "moved 0.0 mm",
        "marker_window_level": "moved 0.0 mm",
    }, output


RULER_SCRIPT = """
import sys
import vtk
from NoduleMalignancyLib.station.app import StationApp
BAND = 20  # px: the scale bar and its 14 px label
app = StationApp(models_dir=sys.argv[1], device="cpu")
app.load_sample("LIDC-IDRI-0001")
for name in ("Red", "Green", "Yellow"):
    app.views.view(name).render_window().SetSize(400, 260)
app.views.fit_resized()
volume = app.controller.volume
bounds = [0.0] * 6
volume.GetRASBounds(bounds)
for name in ("Red", "Green", "Yellow"):
    node = app.views.slice_node(name)
    m = vtk.vtkMatrix4x4()
    m.DeepCopy(node.GetXYToRAS())
    m.Invert()
    ys = [m.MultiplyPoint((x, y, z, 1.0))[1]
          for x in bounds[:2] for y in bounds[2:4] for z in bounds[4:]]
    print(name, min(ys) >= BAND, max(ys) - min(ys) >= 260 - 1.5 * BAND)  # not shrunk more
app.controller.shutdown()
"""


def test_the_scale_bar_label_lies_below_the_ct_in_a_fitted_view(tiny_dir, ct_0001_path):
    """A slice view fitted to a CT taller than the view is wide (coronal, sagittal) keeps a
    band free at its bottom for Slicer's scale bar and "10 cm" (not drawn over the image)."""
    lines, output = station_page.run_script(RULER_SCRIPT, tiny_dir)
    assert lines.get("Green") == lines.get("Yellow") == "True True", output


# The page in a real browser ---------------------------------------------------------------------
CHROMIUM = station_page.CHROMIUM


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_station(arguments: list[str], models_dir):
    """``nodule-malignancy app ARGUMENTS`` on 127.0.0.1 and a free port (CPU, ``models_dir``);
    yields (page address, the server's output lines) once it serves."""
    import sys

    from served import served

    port = _free_port()
    command = [
        sys.executable, "-m", "NoduleMalignancyLib.cli", "app", *arguments,
        "--port", str(port), "--models", str(models_dir), "--device", "cpu",
    ]  # fmt: skip
    with served(command, "reading station on") as lines:
        address = next(line for line in lines if "reading station on" in line).split()[-1]
        assert address.startswith(f"http://127.0.0.1:{port}/?secret=")  # the station's own
        yield address, lines


@pytest.fixture
def station_server(tiny_dir, ct_0001_path):
    """``nodule-malignancy app --sample LIDC-IDRI-0001`` (tiny ensemble, CPU)."""
    with run_station(["--sample", SAMPLE], tiny_dir) as served:
        yield served


def _browser():
    import os

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def test_browser_click_on_the_nodule_shows_the_results(station_server, tmp_path):
    """Chromium opens the page, clicks on the nodule in the axial view (the pixel comes from the
    slice node's XY-to-RAS inverse), sees the busy state end and the results panel, and the
    overlay on the view's own image around the click. Prints page load to views and click to
    overlay (figures, not asserted: docs/benchmarks.md)."""
    import os

    url, server_log = station_server
    with _browser() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page, views_s = station_page.open_page(browser, url)
            assert page.evaluate(station_page.STATUS) == "ready"
            # Whose CT (issue 28): the patient, and the series UID's tail with the full one.
            assert page.locator("#station-patient-id").inner_text() == SAMPLE
            uid = page.locator("#station-series-uid")
            full = uid.get_attribute("title")
            assert full.startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.")
            assert uid.inner_text() == "…" + full[-12:]
            # The whole line as the reader sees it: no space before the commas.
            date = page.locator("#station-study-date").inner_text()
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)
            line = page.locator("#station-identity").inner_text()
            assert line == f"Patient {SAMPLE}, study date {date}, series …{full[-12:]}"
            x, y, where = station_page.locate(page, NODULE_RAS)
            page.mouse.move(x, y)
            before = station_page.view_image(page, where["box_id"])
            clicked = time.perf_counter()
            page.mouse.click(x, y)
            page.wait_for_function(f"() => ({station_page.STATUS})() !== 'ready'")
            busy_s = time.perf_counter() - clicked  # the click seen, the analysis started
            status = station_page.wait_analyzed(page)
            done_s = time.perf_counter() - clicked
            assert status == "done", page.locator("#station-status").inner_text()
            changed = station_page.wait_changed_near(
                page, where["box_id"], before, where["fx"], where["fy"]
            )
            overlay_s = time.perf_counter() - clicked
            assert changed >= 0.05, f"no overlay around the click ({changed:.3f} changed)"
            print(
                f"\nstation: page load to views {views_s:.1f} s, click to overlay {overlay_s:.2f} s"
                f" (click to busy {busy_s:.2f} s, to done {done_s:.2f} s; load {os.getloadavg()})"
            )
            snapshot = station_page.snapshot(page)
            assert snapshot["layers"]["segments"] == 1 and snapshot["layers"]["evidence"]
            (nodule,) = snapshot["nodules"]
            assert np.allclose(nodule["ras"][:2], NODULE_RAS[:2], atol=3.0), nodule
            panel = snapshot["panel"]
            if panel["answered"]:
                text = page.locator("#station-malignancy").inner_text()
                assert re.fullmatch(r"Malignancy \d{1,3}\.\d %", text.strip()), text
                shown = page.locator(".station-warning").count()
                assert shown == len(panel["warnings"])
            else:  # the tiny random ensemble may outline no nodule here: the reason leads
                assert page.locator("#station-not-assessed").is_visible()
                assert page.locator("#station-malignancy").count() == 0
            assert "(1 segment)" in page.locator("#station-segmentation").inner_text()
            legend = page.locator("#station-legend").inner_text()
            assert "towards malignant" in legend and "towards benign" in legend
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "station.png"))
            assert (tmp_path / "station.png").stat().st_size > 10_000
        finally:
            browser.close()


def test_browser_viewer_basics_and_point_states(station_server):
    """In one page: orientation letters, slice position and window/level over the slice views,
    nothing over the axial slider; placement still on after a right-drag; a second click on
    the analyzed nodule selects it (no duplicate); a click in the air outside the body is
    refused and the panel then shows that point, not the nodule's numbers; one point
    deleted; "Clear points" asks first; left-drag window/level in its mode."""
    url, _ = station_server
    with _browser() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page, _ = station_page.open_page(browser, url)
            # The readouts over the axial view: letters at its edges, position, W/L.
            annotations = page.locator("#station-annot-Red")
            assert annotations.locator(".station-letter-left").inner_text() == "R"
            assert annotations.locator(".station-letter-top").inner_text() == "A"
            readout = annotations.locator(".station-readout").inner_text()
            assert re.search(r"[SI] \d+\.\d mm", readout), readout
            assert re.search(r"W 1500\s+L -600", readout), readout
            slider = page.locator("#station-view-Red").locator("xpath=..").locator(".slice-slider")
            box = slider.bounding_box()
            hit = page.evaluate(
                "([x, y]) => !!document.elementFromPoint(x, y)?.closest('.slice-slider')",
                [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
            )
            assert hit, "something covers the axial view's slice slider"
            active = "v-btn--active"
            assert active in page.locator("#station-mode-place").get_attribute("class")
            # A right-drag (Slicer ends placement on a right click), then a click still places.
            x, y, where = station_page.locate(page, NODULE_RAS)
            page.mouse.move(x + 60, y + 60)
            page.mouse.down(button="right")
            page.mouse.move(x + 60, y + 90, steps=5)
            page.mouse.up(button="right")
            page.wait_for_timeout(1000)
            x, y, where = station_page.locate(page, NODULE_RAS)
            page.mouse.click(x, y)
            assert station_page.wait_analyzed(page) == "done"
            first = station_page.snapshot(page)["current"]
            # A resized window keeps the reader's slice (it was refitted to the CT's centre).
            readout = annotations.locator(".station-readout")
            at_nodule = readout.inner_text()
            page.set_viewport_size({"width": 1250, "height": 820})
            page.wait_for_timeout(2000)
            assert readout.inner_text() == at_nodule
            page.set_viewport_size({"width": 1400, "height": 900})
            page.wait_for_timeout(1000)
            # A second click on the analyzed nodule selects it.
            x, y, _ = station_page.locate(page, (NODULE_RAS[0] + 0.7, *NODULE_RAS[1:]))
            page.mouse.click(x, y)
            page.wait_for_timeout(1500)
            snapshot = station_page.snapshot(page)
            assert len(snapshot["nodules"]) == 1 and snapshot["current"] == first
            # Air outside the body: refused; the panel is that point's, not the nodule's.
            x, y, _ = station_page.locate(page, AIR_RAS)
            page.mouse.click(x, y)
            assert station_page.wait_analyzed(page, 1) == "refused"
            page.wait_for_timeout(500)
            assert page.locator("#station-results").count() == 0
            current = page.locator("#station-current")
            assert current.get_attribute("data-status") == "refused", current.inner_text()
            states = page.locator(".station-nodule").evaluate_all(
                "items => items.map(i => i.dataset.status)"
            )
            assert states == ["done", "refused"]
            # Delete the refused point alone.
            page.locator(".station-nodule").nth(1).locator(".station-delete").click()
            page.wait_for_function("() => document.querySelectorAll('.station-nodule').length == 1")
            # Clear asks first; keeping them keeps them.
            page.locator("#station-clear").click()
            page.locator("#station-clear-dialog").wait_for()
            assert "1 points" in page.locator("#station-clear-dialog").inner_text()
            page.locator("#station-clear-keep").click()
            page.wait_for_timeout(500)
            assert page.locator(".station-nodule").count() == 1
            page.locator("#station-clear").click()
            page.locator("#station-clear-confirm").click()
            page.wait_for_function("() => document.querySelectorAll('.station-nodule').length == 0")
            page.locator("#station-clear-dialog").wait_for(state="hidden", timeout=10_000)
            # Window/level mode: a left drag changes the window, and the readout says so.
            page.locator("#station-mode-window_level").click()
            page.wait_for_timeout(500)
            x, y, _ = station_page.locate(page, NODULE_RAS)
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + 80, y + 40, steps=8)
            page.mouse.up()
            page.wait_for_function(
                "() => !/W 1500\\s+L -600/.test(document.querySelector("
                "'#station-annot-Red .station-readout').innerText)",
                timeout=10_000,
            )
            assert station_page.snapshot(page)["nodules"] == [], "no point in this mode"
        finally:
            browser.close()


def _readout(page, view: str) -> str:
    return page.locator(f"#station-annot-{view} .station-readout").inner_text().splitlines()[0]


def _mm(readout: str) -> float:
    """A readout's position along its axis, signed (S, A, L positive: "I 115.9 mm" -> -115.9)."""
    letter, value, _ = readout.split()
    return float(value) * (1 if letter in "SAL" else -1)


def test_browser_keys_step_the_slice_and_the_toolbar_stays_put_while_busy(station_server):
    """Up/Down and PageUp/PageDown step the slice view under the mouse by one slice (2.5 mm
    on LIDC-IDRI-0001's axial view), else the view last clicked; the readout follows and the
    other views stay. While an analysis runs, the toolbar's buttons do not move (the busy
    indicator's place is kept) and its Cancel shows."""
    url, _ = station_server
    with _browser() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page, _ = station_page.open_page(browser, url)
            red = page.locator("#station-view-Red").bounding_box()
            page.mouse.move(red["x"] + red["width"] / 2, red["y"] + red["height"] / 3)
            start, green = _mm(_readout(page, "Red")), _readout(page, "Green")
            seen = []
            for key in ("ArrowDown", "ArrowDown", "PageUp", "ArrowUp", "ArrowUp", "PageDown"):
                before = _readout(page, "Red")
                page.keyboard.press(key)
                page.wait_for_function(
                    "([b]) => document.querySelector('#station-annot-Red .station-readout')"
                    ".innerText.split('\\n')[0] !== b",
                    arg=[before],
                    timeout=10_000,
                )
                seen.append(round(_mm(_readout(page, "Red")) - start, 1))
            assert seen == [-2.5, -5.0, -2.5, 0.0, 2.5, 0.0], seen
            assert _readout(page, "Green") == green
            # Pan/zoom mode (a click places nothing): the view last clicked steps when the
            # mouse is over no view.
            page.locator("#station-mode-pan_zoom").click()
            yellow = page.locator("#station-view-Yellow").bounding_box()
            page.mouse.click(yellow["x"] + yellow["width"] / 2, yellow["y"] + yellow["height"] / 2)
            page.mouse.move(5, 5)
            page.wait_for_timeout(1500)  # what the click changes reaches the readouts first
            sagittal, axial = _mm(_readout(page, "Yellow")), _readout(page, "Red")
            page.keyboard.press("ArrowUp")
            page.wait_for_timeout(1500)
            assert _mm(_readout(page, "Yellow")) > sagittal and _readout(page, "Red") == axial
            # The toolbar while an analysis runs.
            page.locator("#station-mode-place").click()
            buttons = ["#station-window-lung", "#station-mode-place", "#station-clear"]
            idle = [page.locator(b).bounding_box() for b in buttons]
            assert not page.locator("#station-cancel").is_visible()
            x, y, _ = station_page.locate(page, NODULE_RAS)
            page.mouse.click(x, y)
            page.wait_for_function(f"() => ({station_page.STATUS})() === 'busy'")
            busy = [page.locator(b).bounding_box() for b in buttons]
            assert page.locator("#station-cancel").is_visible()
            assert busy == idle
            station_page.wait_analyzed(page)
            assert [page.locator(b).bounding_box() for b in buttons] == idle
        finally:
            browser.close()
