"""The prior CT beside the current one (issue 31 item 5, ``app --ct CUR --prior PRIOR``): both
axial views side by side, the prior's following the current's slice, centre and field of view
through the registration (core/prior/registration.py), and in its window, so the reader scrolls,
pans, zooms or windows one and sees the same anatomy on both dates; each analyzed nodule is
looked for on the prior (core/prior/exam_prior.match_on_prior, as ``exam --prior`` does): its
comparison joins the nodule list and its Lung-RADS follow-up category (growing / stable / new,
core/prior/exam_prior.followup_of, the exam's rule) replaces the baseline one in its panel. A
comparison the registration's residual refuses (core/prior/prior_compare.comparison_findings) is
"not compared", the panel then keeps the baseline category, as the exam does.

Why through the registration and not the same coordinates: two scans of one patient lie
differently in the scanner (table height, inspiration); the registered map puts the prior's
view on the nodule the current view shows. The registration runs once, when the prior is
opened (a few seconds on 2 cores).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping

import numpy as np

from ..core.geometry import lps_to_ras, ras_to_lps
from ..core.nodule.analysis import NoduleResult
from ..core.prior.exam_prior import PriorCT, days_between, followup_of, iso_date, match_on_prior
from ..core.prior.prior_compare import comparison_findings, measured_prior_entry, not_compared_entry
from ..core.prior.registration import register_prior
from ..core.scope.validation import RefusedError
from ..mrml.identity import volume_identity
from ..mrml.logic import read_ct_volume
from ..mrml.nodes import nodes_by_class
from .views import AXIAL, PRIOR, StationViews

__all__ = ["PriorView"]

# What the station draws over the current CT (points, outlines, surfaces), kept off the prior.
DRAWN_OVER = ("vtkMRMLMarkupsDisplayNode", "vtkMRMLSegmentationDisplayNode")


class PriorView:
    """The prior's volume node in the prior view, registered to the current CT's."""

    def __init__(self, views: StationViews, current, prior):
        array, _, world = read_ct_volume(current)
        prior_array, _, prior_world = read_ct_volume(prior)
        self.registration = register_prior(array, world, prior_array, prior_world)
        dates = [volume_identity(v).get("study_date") or None for v in (current, prior)]
        try:
            self.interval_days, date = days_between(*dates), iso_date(dates[1])
        except ValueError:  # a date the CT carries that is unreadable or not before: no VDT
            self.interval_days, date = None, None
        self.prior = PriorCT(prior_array, prior_world, date)
        self._current_ct = (array, world)  # a nodule past the field of view: windows on both
        self.findings = comparison_findings(
            world, prior_world, self.interval_days, self.registration
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "prior-comparison")
        self._comparing: dict[str, tuple[int, concurrent.futures.Future]] = {}
        self._reported: set[concurrent.futures.Future] = set()
        # point ID -> (id of the result compared, its follow-up Lung-RADS or None)
        self._followups: dict[str, tuple[int, object]] = {}
        self.views, self.current, self.volume = views, current, prior
        self._last: tuple | None = None
        views.show_prior(current, prior)
        views.titles = {AXIAL: _title("Current", current), PRIOR: _title("Prior", prior)}

    def compare(self, results: Mapping[str, NoduleResult], ensemble_of: Callable) -> dict:
        """Start looking for each answered nodule (by point ID) on the prior, one at a time on
        this view's worker thread (the network runs); returns the ``prior`` entries
        (``exam.json``'s) finished since the last call. A nodule analyzed again is compared
        again."""
        for point_id, result in results.items():
            started = self._comparing.get(point_id)
            if result.assessment.answered and (started is None or started[0] != id(result)):
                future = self._pool.submit(self._entry, point_id, result, ensemble_of)
                self._comparing[point_id] = (id(result), future)
        done = {}
        for point_id, (_, future) in self._comparing.items():
            if future.done() and future not in self._reported:
                self._reported.add(future)
                try:
                    done[point_id], followup = future.result()
                except (RefusedError, ValueError) as exc:
                    done[point_id] = {"status": "not compared", "reason": str(exc)}
                    followup = None
                self._followups[point_id] = (self._comparing[point_id][0], followup)
        return done

    def followup(self, point_id: str, result: NoduleResult):
        """The follow-up Lung-RADS suggestion (core/clinical/lung_rads.LungRadsSuggestion) of the point's
        ``result`` once compared; ``None`` before, for another result of the point (analyzed
        again: compared again), or when not compared."""
        compared, followup = self._followups.get(point_id, (None, None))
        return followup if compared == id(result) else None

    def _entry(self, name: str, result: NoduleResult, ensemble_of: Callable) -> tuple:
        """(the nodule's ``prior`` entry, its follow-up Lung-RADS or ``None``)."""
        date, interval = self.prior.date, self.interval_days
        if any(f.level == "refused" for f in self.findings):
            return not_compared_entry(date, interval, self.findings), None
        match = match_on_prior(
            name, result, self.registration, self.prior, ensemble_of(), self._current_ct
        )
        entry = measured_prior_entry(match, date, interval, self.findings)
        return entry, followup_of(match, interval)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def to_prior_ras(self, ras) -> np.ndarray:
        """A current-CT point (RAS) on the prior (RAS), through the registration."""
        return lps_to_ras(self.registration.current_to_prior(ras_to_lps(ras)))

    def follow(self) -> bool:
        """Put the prior view on the current axial view's centre (mapped), at its field of view
        and in the current CT's window, with the prior CT alone in it; ``True`` when it moved.

        Checked on every poll, so whatever else moved the prior view (a jump of all slices to a
        nodule) or drew into it is undone."""
        self._prior_only()
        node = self.views.slice_node(AXIAL)
        m = node.GetSliceToRAS()
        centre = tuple(round(m.GetElement(r, 3), 3) for r in range(3))
        fov = tuple(node.GetFieldOfView())
        shown = self.current.GetDisplayNode()
        window = (shown.GetWindow(), shown.GetLevel()) if shown else None
        prior_node = self.views.slice_node(PRIOR)
        if (centre, fov, window, _centre(prior_node)) == self._last:
            return False
        display = self.volume.GetDisplayNode()
        if window is not None and display is not None:
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(*window)
        prior_node.SetFieldOfView(*fov)
        prior_node.JumpSliceByCentering(*map(float, self.to_prior_ras(centre)))
        self._last = (centre, fov, window, _centre(prior_node))
        self.views.view(PRIOR).schedule_render()
        return True

    def _prior_only(self) -> None:
        """The current CT's drawings (points, outlines, evidence) are not the prior's: the
        prior view shows its CT only."""
        view = self.views.view(PRIOR)
        if view.get_foreground_volume_id() is not None:
            view.set_foreground_volume_id(None)
        if view.get_background_volume_id() != self.volume.GetID():
            view.set_background_volume_id(self.volume.GetID())
        scene, prior_id = self.views.scene, self.views.slice_node(PRIOR).GetID()
        views = nodes_by_class(scene, "vtkMRMLAbstractViewNode")
        others = [n.GetID() for n in views if n.GetID() != prior_id]
        for kind in DRAWN_OVER:
            for display in nodes_by_class(scene, kind):
                if display.IsDisplayableInView(prior_id):
                    display.SetViewNodeIDs(others)


def _centre(node) -> tuple:
    m = node.GetSliceToRAS()
    return tuple(round(m.GetElement(r, 3), 3) for r in range(3))


def _title(which: str, volume) -> str:
    """``Prior 2024-06-01``: which CT a view shows, with its study date where known."""
    date = volume_identity(volume).get("study_date") or ""
    try:
        date = iso_date(date) or ""
    except ValueError:
        pass
    return f"{which} {date}".strip()
