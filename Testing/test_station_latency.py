"""What the station does between a click and the overlay, without waiting for its timer.

Issue 29 asks for click to overlay <= 1.5 s: a point placed in a view starts its analysis at
once and a finished analysis is shown at once (``StationApp._poll_soon``), rather than at the
page's next poll tick (up to ``POLL_S`` each); the ensemble runs once while the CT loads
(``NoduleMalignancyLogic.warmUp``), so the first click costs a warm one. The timings themselves
are figures (docs/benchmarks.md), not asserted.
"""

from __future__ import annotations

import station_page

# The poll tick is set to an hour: only the event-driven polls can start and show the analysis.
NO_TICK_SCRIPT = """
import asyncio, sys, time
import NoduleMalignancyLib.station.app as station_app
station_app.POLL_S = 3600.0
app = station_app.StationApp(models_dir=sys.argv[1], device="cpu")
app.load_sample("LIDC-IDRI-0001")
view = app.views.view("Red")
view.render_window().SetSize(600, 600)
view.interactor().SetSize(600, 600)
app.views.fit_resized()

async def main():
    app._start_polling()
    app.controller.warm_up_thread.join(timeout=120)
    app.views.set_mode("place", app.controller.markups)
    it = view.interactor()
    it.SetEventInformationFlipY(300, 300)
    it.InvokeEvent("MouseMoveEvent")  # the placement's preview point follows the mouse
    it.InvokeEvent("LeftButtonPressEvent")
    it.InvokeEvent("LeftButtonReleaseEvent")
    statuses = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        status = app.controller.snapshot()["status"]
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if status not in ("ready", "busy"):
            break
    print("statuses", " ".join(statuses))

asyncio.run(main())
app.controller.shutdown()
"""


def test_a_click_is_analyzed_and_shown_without_the_poll_tick(tiny_dir, data_dir):
    """A left click in place mode starts the analysis and its end is applied to the scene with
    the timer out of the way: the status goes from busy to an answer (done or refused)."""
    lines, output = station_page.run_script(NO_TICK_SCRIPT, tiny_dir)
    assert "statuses" in lines, output
    statuses = lines["statuses"].split()
    assert "busy" in statuses, statuses
    assert statuses[-1] in ("done", "refused"), statuses


def test_the_warm_up_runs_the_ensemble_once(monkeypatch):
    """Loading a CT runs the network once on an empty VOI of the manifest's shape."""
    import tempfile

    import numpy as np

    from NoduleMalignancyLib.core.geometry import ImageGeometry
    from NoduleMalignancyLib.core.model.ensemble import Ensemble, write_random_ensemble
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic

    shapes = []
    original = Ensemble.run
    monkeypatch.setattr(
        Ensemble, "run", lambda self, x: shapes.append(x.shape) or original(self, x)
    )
    with tempfile.TemporaryDirectory() as folder:
        write_random_ensemble(folder)
        ensemble = Ensemble.load(folder, device="cpu")
    logic = NoduleMalignancyLogic(ensemble=ensemble)
    image = np.full((40, 64, 64), -800, dtype=np.int16)
    geometry = ImageGeometry(
        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), tuple(np.eye(3).ravel()), (64, 64, 40)
    )
    logic.warmUp(image, geometry)
    network, voi = ensemble.manifest.network, ensemble.manifest.voi
    assert shapes == [(1, network.in_channels, *voi.shape_zyx)]


def test_runs_from_two_threads_at_once_are_serialized():
    """The station's warm-up runs the ensemble while the first click may already run it on the
    worker thread; the vmapped call swaps weights into one shared template module, so the runs
    must not overlap (before the lock: "Tensor on device meta is not on the expected device")."""
    import tempfile
    import threading

    import numpy as np

    from NoduleMalignancyLib.core.model.ensemble import Ensemble, write_random_ensemble

    with tempfile.TemporaryDirectory() as folder:
        write_random_ensemble(folder)
        ensemble = Ensemble.load(folder, device="cpu")
    shape = (1, ensemble.manifest.network.in_channels, *ensemble.manifest.voi.shape_zyx)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = ensemble.run(x).bag_logits
    errors, outputs = [], []

    def run() -> None:
        try:
            for _ in range(5):
                outputs.append(ensemble.run(x).bag_logits)
        except Exception as exc:  # the failure is what the test reports
            errors.append(repr(exc))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:1]
    assert len(outputs) == 15 and all(np.allclose(o, expected, atol=1e-5) for o in outputs)
