"""The similar LIDC nodules in the reading station (issue 30 item 4, docs/DESIGN.md §15): the
collapsed block under the details with the summary line; opened, each neighbour's LIDC name,
diameter, reader rating and, with the LIDC data folder, its thumbnail.

The tiny random ensemble with an index of random features under real LIDC names beside it
(``similar_index.py``): which neighbours a click finds is random, that they are shown is not.
"""

from __future__ import annotations

import pytest
import similar_index
import station_page
from stepping import FakeClock, SteppedExecutor

NODULE_RAS = (-56.17, -86.2, -115.86)  # LIDC-IDRI-0001's readers' nodule


@pytest.fixture(scope="module")
def tiny_similar_dir(tmp_path_factory):
    """The tiny random ensemble with a similar-nodule index beside it (bound to its weights)."""
    from NoduleMalignancyLib.core.model.ensemble import write_random_ensemble

    folder = tmp_path_factory.mktemp("tiny_similar")
    write_random_ensemble(folder)
    similar_index.write_beside(folder)
    return folder


def test_the_controller_gives_the_neighbours_and_renders_thumbnails_once_opened(
    slicer_runtime, mrml_scene, ct_0001_path, data_dir, tiny_similar_dir, monkeypatch
):
    from NoduleMalignancyLib.core.model.ensemble import Ensemble
    from NoduleMalignancyLib.core.settings import DATA_ENV
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic
    from NoduleMalignancyLib.station.controller import StationController

    ensemble = Ensemble.load(tiny_similar_dir, device="cpu")
    assert ensemble.similar_index is not None
    executor = SteppedExecutor()
    controller = StationController(
        NoduleMalignancyLogic(ensemble=ensemble), device="cpu", executor=executor, clock=FakeClock()
    )
    try:
        controller.load_ct(ct_0001_path, name="LIDC-IDRI-0001")
        controller.add_point(NODULE_RAS)
        executor.run_next()
        controller.poll()
        panel = controller.snapshot()["panel"]
        similar = panel["similar"]
        assert similar["summary"].startswith("6 similar LIDC nodules: ")
        assert similar["withheld"] == (not panel["answered"])
        names = [n["nodule"] for n in similar["neighbours"]]
        assert len(names) == 6 and set(names) <= set(similar_index.NAMES)
        assert all(n["thumbnail"] == "" for n in similar["neighbours"]), "closed: none rendered"
        monkeypatch.setenv(DATA_ENV, str(data_dir))
        controller.set_similar_open(True)
        opened = controller.snapshot()["panel"]["similar"]["neighbours"]
        assert all(n["thumbnail"].startswith("data:image/png;base64,") for n in opened)
        monkeypatch.delenv(DATA_ENV)  # no data folder: the text rows stay, no thumbnails
        bare = controller.snapshot()["panel"]["similar"]
        assert bare["summary"] == similar["summary"]
        assert [n["nodule"] for n in bare["neighbours"]] == names
        assert all(n["thumbnail"] == "" for n in bare["neighbours"])
    finally:
        controller.shutdown()


def test_browser_shows_the_summary_and_the_thumbnails_when_opened(
    tiny_similar_dir, ct_0001_path, data_dir, tmp_path
):
    """Chromium: after a click on the nodule the block's title is the summary line; opened,
    six thumbnails arrive (the server has the data folder) with name, diameter and rating."""
    from test_station import _browser, run_station

    with run_station(["--sample", "LIDC-IDRI-0001"], tiny_similar_dir) as (url, _):
        with _browser() as p:
            browser = p.chromium.launch(
                executable_path=station_page.CHROMIUM, args=["--no-sandbox"]
            )
            try:
                page, _ = station_page.open_page(browser, url)
                x, y, _ = station_page.locate(page, NODULE_RAS)
                page.mouse.click(x, y)
                assert station_page.wait_analyzed(page) == "done"
                panel = station_page.snapshot(page)["panel"]
                if not panel["answered"]:  # withheld with the numbers: "show anyway"
                    assert page.locator("#station-similar").count() == 0
                    page.locator("#station-show-anyway").click()
                summary = page.locator("#station-similar-summary")
                summary.wait_for()
                assert summary.inner_text().strip() == panel["similar"]["summary"]
                page.locator("#station-similar-title").click()
                page.wait_for_function(
                    "() => { const i = document.querySelectorAll('.station-similar-thumbnail');"
                    " return i.length == 6 && Array.from(i).every(x => x.naturalWidth == 96); }",
                    timeout=30_000,
                )
                cells = page.locator(".station-similar-nodule").all_inner_texts()
                assert len(cells) == 6 and all(" mm\nreader rating " in c for c in cells), cells
                page.locator("#station-similar").scroll_into_view_if_needed()
                page.locator("#station-similar").screenshot(path=str(tmp_path / "similar.png"))
                assert (tmp_path / "similar.png").stat().st_size > 5_000
            finally:
                browser.close()
