"""The analysis runner (what the widget's timer drives) with the real logic on the real CT.

A hand-stepped executor decides when the worker's job runs, so every interleaving the widget
meets (poll before the result, cancel mid-run, clicks while busy, a burst of moves) is
reproduced exactly; a fake clock drives the debounce.
"""

from __future__ import annotations

import pytest
from stepping import FakeClock, SteppedExecutor

from NoduleMalignancyLib.core.geometry import lps_to_ras
from NoduleMalignancyLib.files import samples
from NoduleMalignancyLib.mrml.logic import InputError, NoduleMalignancyLogic
from NoduleMalignancyLib.mrml.runner import AnalysisRunner
from NoduleMalignancyLib.mrml.selftest import SAMPLE, random_test_ensemble


@pytest.fixture
def setup(slicer_runtime, mrml_scene, ct_0001_path, data_dir):
    volume = slicer_runtime.util.loadVolume(str(ct_0001_path))
    _, point = samples.nodule_points_lps(SAMPLE, data_dir=data_dir)[0]
    markups = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
    markups.AddControlPoint(*lps_to_ras(point), "n1")
    logic = NoduleMalignancyLogic(ensemble=random_test_ensemble())
    executor, clock = SteppedExecutor(), FakeClock()
    runner = AnalysisRunner(
        logic, lambda: (volume, markups, "cpu"), executor=executor, debounce_s=0.5, clock=clock
    )
    return runner, executor, clock, volume, markups, mrml_scene


def _rows(scene) -> int:
    tables = scene.GetNodesByClass("vtkMRMLTableNode")
    return sum(
        tables.GetItemAsObject(i).GetNumberOfRows() for i in range(tables.GetNumberOfItems())
    )


def test_start_poll_apply(setup):
    runner, executor, _, volume, markups, scene = setup
    assert runner.idle
    assert runner.start(volume, markups, None, "cpu")
    assert not runner.start(volume, markups, None, "cpu"), "one analysis at a time"
    update = runner.poll()
    assert update.running and update.output is None and _rows(scene) == 0
    executor.run_next()
    update = runner.poll()
    assert not update.running and update.error is None
    assert update.output.points[0].label == "n1" and _rows(scene) == 1
    assert update.fraction == 1.0 and any("malignancy" in m.lower() for m in update.log)
    assert runner.idle


def test_cancel_mid_run_changes_nothing(setup):
    runner, executor, _, volume, markups, scene = setup
    nodes_before = scene.GetNumberOfNodes()
    runner.start(volume, markups, None, "cpu")
    runner.cancel()
    executor.run_next()
    update = runner.poll()
    assert update.cancelled and update.output is None
    assert scene.GetNumberOfNodes() == nodes_before and runner.idle


def test_bad_input_is_refused_before_anything_runs(setup):
    runner, executor, _, volume, _, _ = setup
    with pytest.raises(InputError, match="point list"):
        runner.start(volume, None, None, "cpu")
    with pytest.raises(InputError, match="device"):
        runner.start(volume, None, None, "tpu")
    assert not executor.jobs and runner.idle


def test_moves_while_busy_are_analyzed_after_the_run_once_debounced(setup):
    runner, executor, clock, volume, markups, scene = setup
    runner.start(volume, markups, None, "cpu")
    markups.AddControlPoint(*markups.GetNthControlPointPosition(0), "n2")
    second = markups.GetNthControlPointID(1)
    first = markups.GetNthControlPointID(0)
    runner.point_changed(second)
    clock.now += 0.3
    runner.point_changed(first)  # a burst: the deadline moves
    executor.run_next()
    clock.now += 0.3  # 0.6 s after the first change, 0.3 s after the last
    update = runner.poll()
    assert update.output is not None and not update.started and not executor.jobs
    assert runner.pending == {first, second}
    clock.now += 0.3
    update = runner.poll()
    assert update.started and update.running and len(executor.jobs) == 1
    _, _, args, _ = executor.jobs[0]
    assert [p.point_id for p in args[0].points] == [first, second], "one run for the burst"
    executor.run_next()
    update = runner.poll()
    assert {p.label for p in update.output.points} == {"n1", "n2"} and _rows(scene) == 2
    assert runner.idle


def test_pending_point_outside_the_ct_is_reported_not_raised(setup):
    runner, _, clock, _, markups, _ = setup
    markups.AddControlPoint(900.0, 900.0, 900.0, "far away")
    runner.point_changed(markups.GetNthControlPointID(1))
    clock.now += 1.0
    update = runner.poll()
    assert isinstance(update.error, InputError) and "outside" in str(update.error)
    assert runner.idle


def test_a_failing_worker_is_reported_and_the_runner_recovers(setup, monkeypatch):
    runner, executor, _, volume, markups, _ = setup

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure in the worker")

    monkeypatch.setattr(runner.logic, "compute", broken)
    runner.start(volume, markups, None, "cpu")
    executor.run_next()
    update = runner.poll()
    assert isinstance(update.error, RuntimeError) and not update.cancelled and runner.idle
    monkeypatch.undo()
    assert runner.start(volume, markups, None, "cpu")
    executor.run_next()
    assert runner.poll().output is not None
