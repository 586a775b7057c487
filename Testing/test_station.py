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
from stepping import FakeClock, SteppedExecutor

from NoduleMalignancyLib.core.explanation import PARTS
from NoduleMalignancyLib.core.result_schema import GROUP_TITLES
from NoduleMalignancyLib.files import samples
from NoduleMalignancyLib.mrml.selftest import SAMPLE, random_test_ensemble

NODULE_LPS = (56.17, 86.2, -115.86)
NODULE_RAS = (-56.17, -86.2, -115.86)


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
    from NoduleMalignancyLib.core import lung_mask
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
    assert panel["headline"] == "Malignancy 25.0 %" and "± 5.0 %" in panel["spread"]
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


def test_points_placed_in_a_view_are_analyzed_after_the_debounce(station):
    controller, executor = station
    markups = controller.markups
    markups.AddControlPoint(*NODULE_RAS, "")  # what markups placement in a slice view does
    clock = controller.clock  # the debounce runs on a fake clock
    controller.poll()
    assert controller.snapshot()["nodules"][0]["status"] == "pending" and not executor.jobs
    clock.now += 1.0
    controller.poll()
    assert controller.snapshot()["status"] == "busy" and len(executor.jobs) == 1
    executor.run_next()
    controller.poll()
    assert controller.snapshot()["nodules"][0]["status"] == "done"


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
        assert controller.snapshot()["status"] == "done"
    finally:
        controller.shutdown()


# The page in a real browser ---------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"


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


def test_browser_click_on_the_nodule_shows_the_results(station_server, tmp_path):
    """Chromium opens the page, clicks on the nodule in the axial view (the pixel comes from the
    slice node's XY-to-RAS inverse), sees the busy state end and the results panel, and the
    overlay on the view's own image around the click. Prints page load to views and click to
    overlay (figures, not asserted: docs/benchmarks.md)."""
    import io
    import os
    import re
    import time

    from PIL import Image

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    url, server_log = station_server
    status = "() => document.querySelector('#station-status')?.dataset.status"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_function(  # the four views' server-rendered images arrived
                "() => { const i = Array.from(document.querySelectorAll('img'));"
                " return i.length >= 4 && i.every(x => x.naturalWidth > 0); }",
                timeout=60_000,
            )
            views_s = time.perf_counter() - started
            assert page.evaluate(status) == "ready"
            page.wait_for_timeout(1000)  # the views' sizes settle, the slices are fitted
            where = page.evaluate(
                "(ras) => window.trame.trigger('station_view_point', [ras])", list(NODULE_RAS)
            )
            page.wait_for_timeout(500)
            box = page.locator("#" + where["box_id"]).bounding_box()
            assert box and 0 < where["fx"] < 1 and 0 < where["fy"] < 1, where
            x, y = box["x"] + where["fx"] * box["width"], box["y"] + where["fy"] * box["height"]
            view = page.locator("#" + where["box_id"])
            page.mouse.move(x, y)
            before = np.asarray(Image.open(io.BytesIO(view.screenshot())).convert("RGB"), float)
            clicked = time.perf_counter()
            page.mouse.click(x, y)
            page.wait_for_function(f"() => ['busy', 'done'].includes(({status})())", timeout=30_000)
            page.wait_for_function(f"() => ({status})() !== 'busy'", timeout=120_000)
            assert page.evaluate(status) == "done", page.locator("#station-status").inner_text()
            # The overlay has arrived when the view's image changes around the nodule.
            h, w = before.shape[:2]
            cy, cx = int(where["fy"] * h), int(where["fx"] * w)
            near = (slice(max(0, cy - 25), cy + 25), slice(max(0, cx - 25), cx + 25))
            changed = 0.0
            deadline = time.monotonic() + 30
            while changed < 0.05 and time.monotonic() < deadline:
                after = np.asarray(Image.open(io.BytesIO(view.screenshot())).convert("RGB"), float)
                if after.shape == before.shape:
                    changed = float((np.abs(after - before).sum(-1) > 60)[near].mean())
            overlay_s = time.perf_counter() - clicked
            assert changed >= 0.05, f"no overlay around the click ({changed:.3f} changed)"
            print(
                f"\nstation: page load to views {views_s:.1f} s, click to overlay {overlay_s:.1f} s"
            )
            text = page.locator("#station-malignancy").inner_text()
            assert re.fullmatch(r"Malignancy \d{1,3}\.\d %", text.strip()), text
            assert "1 segments" in page.locator("#station-segmentation").inner_text()
            snapshot = page.evaluate("() => window.trame.trigger('station_snapshot', [])")
            assert snapshot["layers"]["segments"] == 1 and snapshot["layers"]["evidence"]
            (nodule,) = snapshot["nodules"]
            assert np.allclose(nodule["ras"][:2], NODULE_RAS[:2], atol=3.0), nodule
            assert page.locator(".station-warning").count() == len(snapshot["panel"]["warnings"])
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "station.png"))
            assert (tmp_path / "station.png").stat().st_size > 10_000
        finally:
            browser.close()
