"""Driving the station's page in chromium (Playwright): open it, click a world point, wait.

Why a module: the browser tests (``test_station.py``) and the gallery script
(``make_station_gallery.py``) click the same way. Trame's views are server-rendered images, so
a click on a RAS point asks the server where that point is drawn (``station_view_point``: the
slice node's XY-to-RAS inverse, which also moves the view's slice onto it) and clicks there.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent  # the repository (the station's working folder)
STATUS = "() => document.querySelector('#station-status')?.dataset.status"


def open_page(browser, url: str, width: int = 1400, height: int = 900, views: int = 4):
    """A page on the station, once the views' images arrived (four; two side by side with a
    prior); returns (page, seconds)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_function(
        "(n) => { const i = Array.from(document.querySelectorAll('img'));"
        " return i.length >= n && i.every(x => x.naturalWidth > 0); }",
        arg=views,
        timeout=60_000,
    )
    seconds = time.perf_counter() - started
    page.wait_for_timeout(1000)  # the views' sizes settle, the slices are fitted
    return page, seconds


def locate(page, ras, view: str = "Red") -> tuple[float, float, dict]:
    """The page pixel (x, y) where a RAS point is drawn in a slice view, after moving that
    view's slice onto it; and the server's answer (``box_id``, ``fx``, ``fy``)."""
    where = page.evaluate(
        "([ras, view]) => window.trame.trigger('station_view_point', [ras, view])",
        [list(map(float, ras)), view],
    )
    page.wait_for_timeout(500)
    box = page.locator("#" + where["box_id"]).bounding_box()
    assert box and 0 < where["fx"] < 1 and 0 < where["fy"] < 1, where
    return box["x"] + where["fx"] * box["width"], box["y"] + where["fy"] * box["height"], where


def view_image(page, box_id: str) -> np.ndarray:
    """A view's pixels as the browser shows them (RGB, float)."""
    from PIL import Image

    shot = page.locator("#" + box_id).screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), float)


def wait_analyzed(page, points_before: int = 0, timeout_ms: int = 120_000) -> str:
    """Wait until the page lists more than ``points_before`` points and the newest one's
    analysis has ended; returns the station's status (done, refused, ...)."""
    page.wait_for_function(
        "(n) => { const p = document.querySelectorAll('.station-nodule');"
        " return p.length > n && !['placed', 'pending', 'busy']"
        ".includes(p[p.length - 1].dataset.status); }",
        arg=points_before,
        timeout=timeout_ms,
    )
    page.wait_for_function(f"() => ({STATUS})() !== 'busy'", timeout=timeout_ms)
    return page.evaluate(STATUS)


def snapshot(page) -> dict:
    return page.evaluate("() => window.trame.trigger('station_snapshot', [])")


def wait_changed_near(page, box_id: str, before: np.ndarray, fx: float, fy: float) -> float:
    """Wait (up to 30 s) until the view's image changes around (fx, fy); the changed share."""
    h, w = before.shape[:2]
    cy, cx = int(fy * h), int(fx * w)
    near = (slice(max(0, cy - 25), cy + 25), slice(max(0, cx - 25), cx + 25))
    changed = 0.0
    deadline = time.monotonic() + 30
    while changed < 0.05 and time.monotonic() < deadline:
        after = view_image(page, box_id)
        if after.shape == before.shape:
            changed = float((np.abs(after - before).sum(-1) > 60)[near].mean())
    return changed


def write_moved_prior(ct_path, out_path):
    """A SYNTHETIC prior of a CT for the side-by-side station: the CT under a known rigid map
    (2° about z, a 6/-4/3 mm shift) with 10 HU noise, written to ``out_path``; returns the map
    (SimpleITK: prior point -> current point)."""
    import SimpleITK as sitk

    from NoduleMalignancyLib.core.geometry import ImageGeometry
    from NoduleMalignancyLib.evaluation.synthetic_pairs import affine, transformed_ct

    image = sitk.ReadImage(str(ct_path))
    geometry = ImageGeometry.from_sitk(image)
    centre = geometry.index_to_lps(np.asarray(geometry.size) / 2.0)
    transform = affine(centre, (0.0, 0.0, 2.0), (1.0, 1.0, 1.0), (6.0, -4.0, 3.0))
    moved, grid = transformed_ct(sitk.GetArrayFromImage(image), geometry, transform, 10.0, 1)
    prior = sitk.GetImageFromArray(moved)
    grid.apply_to_sitk(prior)
    sitk.WriteImage(prior, str(out_path), True)
    return transform


@contextlib.contextmanager
def station_in_chromium(command: list[str]):
    """The station ``command`` serves (``nodule-malignancy app ...``) and a chromium to open it
    in (the gallery scripts): yields (browser, the station's address)."""
    from playwright.sync_api import sync_playwright
    from served import served

    with served(command, "reading station on") as lines:
        url = next(line for line in lines if "reading station on" in line).split()[-1]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                yield browser, url
            finally:
                browser.close()


def run_script(script: str, *arguments) -> tuple[dict[str, str], str]:
    """Run a station script in its own interpreter (Slicer's views, no browser): its
    ``name value`` lines, and its output for a failure's message."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(ROOT),
    )
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line[:1].isalpha())
    return lines, done.stdout + done.stderr[-3000:]
