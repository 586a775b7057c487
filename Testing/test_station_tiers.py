"""The station in chromium: a click on the chest wall and one on a lung vessel are not assessed.

Issue 29's reader clicked chest-wall muscle and got "Malignancy 87.7 %" with Lung-RADS 4A.
With the shipped ensemble (the tiers decide on its outlines; core/scope/assessment.py) the page must
lead with "Not assessed" and show neither a malignancy nor a Lung-RADS category. The points are
two of docs/experiments/negative_clicks.py's clicks on LIDC-IDRI-0001 (voxel i, j, k): the
lateral chest wall muscle (``outside_lung``) and a lung vessel (``vessel_at_point``, score 10.2
against 2.33). Only what the page shows is asserted (the layout is the station's, §15).
"""

from __future__ import annotations

import re

import pytest
import SimpleITK as sitk
import station_page
from test_station import _browser, run_station

from NoduleMalignancyLib.core.settings import shipped_models_dir
from NoduleMalignancyLib.mrml.selftest import SAMPLE

CLICKS = {"lateral chest wall muscle": (80, 250, 66), "vessel in the lung": (160, 253, 86)}


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
        finally:
            browser.close()
