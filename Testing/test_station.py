"""The browser reading station (docs/DESIGN.md §15): its controller without a browser, then the
real page in Debian's chromium through Playwright.

The controller tests drive the same state machine the page drives (load, place a point, run
through the analysis runner, poll, cancel) on LIDC-IDRI-0001 with the tiny random ensemble; the
browser test starts ``nodule-malignancy app`` in a subprocess and clicks on the nodule.
"""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest

from NoduleMalignancyLib.files import samples
from NoduleMalignancyLib.mrml.selftest import SAMPLE, random_test_ensemble

NODULE_LPS = (56.17, 86.2, -115.86)
NODULE_RAS = (-56.17, -86.2, -115.86)


class SteppedExecutor(concurrent.futures.Executor):
    """Queues submitted jobs; :meth:`run_next` runs one on the calling thread."""

    def __init__(self):
        self.jobs: list = []

    def submit(self, fn, *args, **kwargs):
        future = concurrent.futures.Future()
        self.jobs.append((future, fn, args, kwargs))
        return future

    def run_next(self) -> None:
        future, fn, args, kwargs = self.jobs.pop(0)
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def station(slicer_runtime, mrml_scene, ct_0001_path):
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic
    from NoduleMalignancyLib.station.controller import StationController

    executor, clock = SteppedExecutor(), _Clock()
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
    assert 0.0 <= panel["malignancy_percent"] <= 100.0 and panel["malignancy_sd_percent"] >= 0
    assert isinstance(panel["warnings"], list)
    assert all({"code", "message"} <= set(w) for w in panel["warnings"])
    sections = {s["title"]: s["rows"] for s in panel["sections"]}
    attributes = {r["key"]: r for r in sections["Attributes (LIDC 1-5 scale)"]}
    assert {"subtlety", "spiculation", "malignancy"} <= set(attributes)
    assert all(1.0 <= r["value"] <= 5.0 and r["note"] for r in attributes.values())
    measured = {r["key"] for r in sections["Measurements"]}
    assert {"volume_mm3", "diameter_mm"} <= measured
    parts = sections["Explanation (logit parts, sum = logit)"]
    total = parts[-1]["value"]
    assert abs(sum(r["value"] for r in parts[:-1]) - total) < 1e-6, "the parts sum to the logit"
    assert snap["nodules"][0]["malignancy_percent"] == panel["malignancy_percent"]
    # The overlays are in the scene: segment, combined evidence as foreground.
    segmentation = controller.logic.lastOutput.segmentation_node
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert controller.select(point_id) is not None


def test_new_result_fields_appear_in_the_panel_without_ui_work():
    from NoduleMalignancyLib.station.panel import result_panel

    summary = {
        "malignancy_probability": 0.25,
        "malignancy_sd": 0.05,
        "fold_malignancy_probabilities": [0.2, 0.3],
        "scores": {"margin": 3.2},
        "wording": {"margin": "Medium margin"},
        "warnings": [{"code": "thick_slices", "message": "Slices are 3 mm thick."}],
        "volume_mm3": 512.0,
        "a_new_figure_mm": 1.5,
        "a_new_group": {"x": 1.0, "y": 2.0},
    }
    panel = result_panel(summary, "N1")
    assert panel["headline"].startswith("25.0 %") and panel["warnings"][0]["code"] == "thick_slices"
    rows = {r["key"]: r for s in panel["sections"] for r in s["rows"]}
    assert rows["a_new_figure_mm"]["text"] == "1.50" and "a_new_group.y" in rows
    assert rows["volume_mm3"]["text"] == "512 mm³"


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
    assert snap["panel"] is None and snap["nodules"][0]["malignancy_percent"] is None
    assert "air" in snap["message"].lower() or "tissue" in snap["message"].lower()


def test_points_placed_in_a_view_are_analysed_after_the_debounce(station):
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
