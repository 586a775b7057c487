"""The station with a prior CT (issue 31 item 5, ``app --ct CUR --prior PRIOR``): both axial
views side by side, the prior's following the current's slice, centre, field of view and window
through the registration (station/prior_view.py), in Slicer's views without a browser.

The prior is SYNTHETIC: LIDC-IDRI-0001 under a known rigid map (2° about z, a 6 mm shift) with
noise, so where the prior view must go is known independently of the registration."""

from __future__ import annotations

import station_page

PRIOR_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, "Testing")
from station_page import write_moved_prior
from NoduleMalignancyLib.core.geometry import lps_to_ras, ras_to_lps
from NoduleMalignancyLib.station.app import StationApp
from NoduleMalignancyLib.station.views import AXIAL, PRIOR

models, ct, out = sys.argv[1:4]
transform = write_moved_prior(ct, out)
app = StationApp(models_dir=models, device="cpu")
app.load(ct)
app.load_prior(out)
views = app.views
print("backgrounds", views.view(AXIAL).get_background_volume_id() == app.controller.volume.GetID(),
      views.view(PRIOR).get_background_volume_id() == app.prior.volume.GetID())
nodule_lps = np.array([56.17, 86.2, -115.86])
views.slice_node(AXIAL).JumpSliceByCentering(*lps_to_ras(nodule_lps))
views.slice_node(AXIAL).SetFieldOfView(60.0, 60.0, 1.0)
app.controller.volume.GetDisplayNode().SetWindowLevel(400.0, 40.0)
print("follows", app.prior.follow(), app.prior.follow())
m = views.slice_node(PRIOR).GetSliceToRAS()
shown = ras_to_lps([m.GetElement(r, 3) for r in range(3)])
truth = np.asarray(transform.GetInverse().TransformPoint(tuple(nodule_lps)))
print("error_mm", float(np.linalg.norm(shown - truth)))
print("shift_mm", float(np.linalg.norm(truth - nodule_lps)))
print("fov", views.slice_node(PRIOR).GetFieldOfView()[0])
# A jump of every slice view to a nodule (the station's, after an analysis) is undone.
views.slicer.vtkMRMLSliceNode.JumpAllSlices(views.scene, *lps_to_ras(nodule_lps), 0)
print("restored", app.prior.follow())
m = views.slice_node(PRIOR).GetSliceToRAS()
back = ras_to_lps([m.GetElement(r, 3) for r in range(3)])
print("restored_error_mm", float(np.linalg.norm(back - truth)))
points = app.controller.markups.GetDisplayNode()
print("points_drawn", points.IsDisplayableInView(views.slice_node(AXIAL).GetID()),
      points.IsDisplayableInView(views.slice_node(PRIOR).GetID()))
display = app.prior.volume.GetDisplayNode()
print("window", display.GetWindow(), display.GetLevel())
titles = views.annotations(app.controller.volume)
print("titles", titles[AXIAL]["title"], "|", titles[PRIOR]["title"])
app.controller.shutdown()
"""


def test_the_prior_view_follows_the_current_one_through_the_registration(
    tiny_dir, ct_0001_path, tmp_path
):
    lines, output = station_page.run_script(
        PRIOR_SCRIPT, tiny_dir, ct_0001_path, tmp_path / "prior.nrrd"
    )
    assert "window" in lines, output
    assert lines["backgrounds"] == "True True"
    assert lines["follows"] == "True False"  # moved once, then nothing to do
    # The prior's view lies on the nodule where the known map puts it (not at the same
    # coordinates: the map moves it by several mm).
    assert float(lines["shift_mm"]) > 5.0
    assert float(lines["error_mm"]) < 1.5
    assert float(lines["fov"]) == 60.0
    assert lines["window"] == "400.0 40.0"
    assert lines["restored"] == "True" and float(lines["restored_error_mm"]) < 1.5
    # The sample keeps its LIDC study date; the prior written here has none.
    assert lines["titles"] == "Current 2000-01-01 | Prior"
    assert lines["points_drawn"] == "True False"  # the current's points are not the prior's


COMPARE_SCRIPT = """
import re, sys, time
sys.path.insert(0, "Testing")
from station_page import write_moved_prior
from NoduleMalignancyLib.station.app import StationApp

models, ct, out = sys.argv[1:4]
write_moved_prior(ct, out)
app = StationApp(models_dir=models, device="cpu")
app.load(ct)
app.load_prior(out)
point = app.controller.add_point_lps((56.17, 86.2, -115.86), "A")  # analyzed at once
deadline = time.monotonic() + 400
while time.monotonic() < deadline and not app.controller.points[point].get("prior_text"):
    app.controller.poll()
    app._compare_with_prior()
    time.sleep(0.2)
snapshot = app.controller.snapshot()
record = snapshot["nodules"][0]
print("status", record["status"])
print("text", record.get("prior_text"))
(section,) = [s for s in snapshot["panel"]["sections"] if s["group"] == "lung_rads"]
rows = {r["key"]: r for r in section["rows"]}
print("lung_rads", rows["lung_rads"]["text"], "|", rows["lung_rads"]["note"])
print("section", section["title"])
print("reasons", " || ".join(rows["lung_rads_reasons"]["value"]))
app.controller.followup = None  # as before the comparison: the baseline screen
(section,) = [s for s in app.controller.panel()["sections"] if s["group"] == "lung_rads"]
rows = {r["key"]: r for r in section["rows"]}
print("baseline", rows["lung_rads"]["text"], "|", rows["lung_rads"]["note"])
print("baseline_section", section["title"])
print("baseline_reasons", " || ".join(rows["lung_rads_reasons"]["value"]))
app.prior.close()
app.controller.shutdown()
"""


def test_each_analyzed_nodule_is_looked_for_on_the_prior_and_listed_with_the_change(
    ct_0001_path, tmp_path
):
    """The shipped ensemble: the nodule clicked on the current CT is found on the (synthetic,
    rigidly moved, same anatomy) prior and its list entry says so, with a small change; its
    panel's Lung-RADS is then the follow-up screen's (stable, with the change in its reasons),
    not the baseline's, as exam.json's."""
    import re

    models = station_page.ROOT / "models"
    lines, output = station_page.run_script(
        COMPARE_SCRIPT, models, ct_0001_path, tmp_path / "prior.nrrd"
    )
    assert lines.get("status") == "done", output
    text = lines["text"]
    assert re.match(r"prior \d+ mm³ → now \d+ mm³ \([+-]\d+ %\)", text), text
    change = float(re.search(r"\(([+-]\d+) %\)", text).group(1))
    assert abs(change) < 20.0, text  # the same nodule, resampled with noise
    category, note = lines["lung_rads"].split(" | ")
    assert note == "follow-up screen: stable; a suggestion: the reader decides", output
    assert lines["section"] == "Lung-RADS (suggested, follow-up screen)"
    assert lines["baseline_section"] == "Lung-RADS (suggested, baseline screen)"
    assert text.endswith(f"; Lung-RADS {category} (stable)"), text
    assert ": stable (growth: > 1.5 mm within 12 months)" in lines["reasons"]
    assert "need a prior CT" not in lines["reasons"]
    # Without the comparison the same panel says the baseline screen's category.
    baseline, note = lines["baseline"].split(" | ")
    assert note == "a suggestion: the reader decides" and "stable" not in lines["baseline_reasons"]
    assert (category, baseline) == ("4B", "4B")  # 23 mm solid: 4B stays 4B when stable
