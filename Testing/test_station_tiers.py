"""The station in chromium: a click on the chest wall and one on a lung vessel are not assessed.

Issue 29's reader clicked chest-wall muscle and got "Malignancy 87.7 %" with Lung-RADS 4A.
With the shipped ensemble (the tiers decide on its outlines; core/scope/assessment.py) the page must
lead with "Not assessed" and show neither a malignancy nor a Lung-RADS category. The points are
two of docs/experiments/negative_clicks.py's clicks on LIDC-IDRI-0001 (voxel i, j, k): the
lateral chest wall muscle (``outside_lung``) and a lung vessel (``vessel_at_point``, score 10.2
against 2.33). Only what the page shows is asserted (the layout is the station's, §15): the panel, the nodule
list's wording, and each marker's colour on the view's pixels (with a refused click in the air).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
import station_page
from test_station import _browser, run_station

from NoduleMalignancyLib.core.settings import shipped_models_dir
from NoduleMalignancyLib.mrml.selftest import SAMPLE

CLICKS = {"lateral chest wall muscle": (80, 250, 66), "vessel in the lung": (160, 253, 86)}
AIR_RAS = (-14.0, 140.0, -115.86)  # in front of the chest (test_station.py's)


@pytest.fixture
def shipped_station(ct_0001_path):
    """``nodule-malignancy app --sample LIDC-IDRI-0001`` with the shipped ensemble (CPU)."""
    with run_station(["--sample", SAMPLE], shipped_models_dir()) as served:
        yield served


def _ras(ct_path, ijk) -> tuple[float, float, float]:
    image = sitk.ReadImage(str(ct_path))
    x, y, z = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in ijk))
    return (-x, -y, z)  # LPS -> RAS


def test_browser_chest_wall_and_vessel_clicks_are_not_assessed(shipped_station, ct_0001_path):
    url, _ = shipped_station
    with _browser() as p:
        browser = p.chromium.launch(executable_path=station_page.CHROMIUM, args=["--no-sandbox"])
        try:
            page, _ = station_page.open_page(browser, url)
            for n, (structure, ijk) in enumerate(CLICKS.items()):
                x, y, _ = station_page.locate(page, _ras(ct_0001_path, ijk))
                page.mouse.click(x, y)
                station_page.wait_analyzed(page, points_before=n)
                results = page.locator("#station-results")
                assert results.get_attribute("data-assessment") == "not_assessed", structure
                assert page.locator("#station-not-assessed").is_visible(), structure
                assert page.locator("#station-malignancy").count() == 0, structure
                text = results.inner_text()
                assert "Not assessed" in text, (structure, text)
                assert not re.search(r"Malignancy \d", text), (structure, text)
                assert not re.search(r"Lung-RADS( category)? [1-4]", text), (structure, text)
                # The nodule list says so, its reason in short below (issue 29).
                item = page.locator(".station-nodule").nth(n)
                assert item.locator(".v-list-item-title").inner_text() == f"N{n + 1}: not assessed"
                reason = item.locator(".v-list-item-subtitle").first.inner_text()
                assert reason and reason != "Not assessed" and len(reason) < 60, reason
            # Air in front of the chest: refused.
            x, y, _ = station_page.locate(page, AIR_RAS)
            page.mouse.click(x, y)
            assert station_page.wait_analyzed(page, points_before=2) == "refused"
            title = page.locator(".station-nodule").nth(2).locator(".v-list-item-title")
            assert title.inner_text() == "N3: refused"
            # The markers' colours on the view's pixels, the mouse away from the views: the
            # chest wall's orange (not assessed), the air's grey (refused), no green at either.
            page.mouse.move(5, 5)
            wall = _marker_colours(page, _ras(ct_0001_path, CLICKS["lateral chest wall muscle"]))
            air = _marker_colours(page, AIR_RAS)
            assert wall["orange"] >= 8 and wall["green"] == 0, wall
            assert air["grey"] >= 8 and air["green"] == 0 and air["orange"] == 0, air
        finally:
            browser.close()


def _marker_colours(page, ras) -> dict[str, int]:
    """Pixels of each marker colour within 14 px of where a point is drawn (its slice shown):
    orange (not assessed), grey (refused, on black air), green (analysed, answered)."""
    x, y, where = station_page.locate(page, ras)
    page.wait_for_timeout(1500)
    image = station_page.view_image(page, where["box_id"])
    h, w = image.shape[:2]
    cy, cx = int(where["fy"] * h), int(where["fx"] * w)
    r, g, b = np.moveaxis(image[cy - 14 : cy + 15, cx - 14 : cx + 15], -1, 0)
    return {
        "orange": int(((r > 200) & (g > 80) & (g < 175) & (b < 90)).sum()),
        "grey": int(((abs(r - g) < 20) & (abs(g - b) < 20) & (r > 100) & (r < 180)).sum()),
        "green": int(((g > 180) & (r < 150) & (b < 150)).sum()),
    }
