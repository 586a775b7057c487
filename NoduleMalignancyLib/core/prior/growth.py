"""A nodule's change between two dates: the volume ratio, the change in %, and the
volume-doubling time VDT = interval x ln 2 / ln(V / V_prior) (docs/DESIGN.md §17) with an
interval that carries the segmentation's uncertainty.

The headline is the ensemble's: the volumes of its outlines (the folds' mean probability,
thresholded) on both dates, the same volumes reported everywhere else, so the VDT and the
volume change % always agree with the two volumes shown beside them.

The interval is built from every estimate of the ratio the ensemble gives: each fold outlines
the nodule on both CTs, so each fold gives its own paired ratio (the same model on both dates),
and the ensemble's outlines give the headline ratio. The interval runs from the lowest to the
highest of these (``volume_ratio_interval``; the folds' alone are kept in
``volume_ratio_fold_range``). Why not the folds' range alone: the ensemble's outline is not the
mean of the folds' outlines (the averaged probability is thresholded, which moves a small
nodule's edge by its own amount on each date), so the headline can lie outside every fold's
ratio (LIDC-IDRI-0006 n0 against a noisy copy of itself: ratio 1.088, folds 1.043-1.084; VDT
3010 days and a "range" 3161-5976 that excluded it). Why not the folds' spread moved onto the
headline: that assumes the ensemble's ratio varies as the folds' do, which nothing here
measures; the envelope assumes nothing, equals the folds' range whenever the headline lies
inside it (48 of 50 synthetic stable pairs, 10 of 10 growth pairs, docs/experiments/
prior_pairs.md) and otherwise only widens it to the headline. So the interval always contains
the reported VDT.

Where the interval's ratios contain 1 the nodule is stable within what the segmentation can
tell, and there is no VDT interval (``None, None``; the note says so). A negative VDT is a
shrinking nodule's halving time. The folds share the crop and the scan's noise, so the interval
understates the change's uncertainty on small nodules (it held the true ratio in 15 of 50
synthetic stable pairs): it is a range of the model's estimates, not a confidence interval.

The dates (:func:`iso_date`, :func:`days_between`) live here too, free of torch, so the module's
parameter node can check a date as it is typed (mrml/parameters.py).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Growth", "days_between", "growth", "iso_date", "volume_doubling_days"]


def iso_date(text: str | None) -> str | None:
    """``YYYY-MM-DD`` of a date written so or as DICOM writes it (``YYYYMMDD``); ``None`` for
    none, a ``ValueError`` for anything else."""
    if not text:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    raise ValueError(f"date {text!r} is not YYYY-MM-DD")


def days_between(current: str | None, prior: str | None) -> float | None:
    """Days from the prior's date to the current one (:func:`iso_date`'s forms); ``None`` when
    either is missing. A prior not before the current is a ``ValueError``."""
    current, prior = iso_date(current), iso_date(prior)
    if current is None or prior is None:
        return None
    days = float((dt.date.fromisoformat(current) - dt.date.fromisoformat(prior)).days)
    if days <= 0:
        raise ValueError(f"the prior's date {prior} is not before the exam's date {current}")
    return days


def volume_doubling_days(
    prior_mm3: float, current_mm3: float, interval_days: float | None
) -> float | None:
    """interval x ln 2 / ln(V / V_prior); ``None`` without an interval, without two positive
    volumes, or when they are equal (no change: no doubling)."""
    if interval_days is None or not prior_mm3 or not current_mm3:
        return None
    if prior_mm3 <= 0 or current_mm3 <= 0 or current_mm3 == prior_mm3:
        return None
    return float(interval_days) * math.log(2.0) / math.log(current_mm3 / prior_mm3)


INTERVAL_BASIS = "the ensemble's ratio and the {n} folds' paired ratios, lowest to highest"


@dataclass(frozen=True)
class Growth:
    volume_ratio: float
    volume_change_percent: float
    ratio_range: tuple[float, float] | None  # the folds' paired ratios, lowest and highest
    ratio_interval: tuple[float, float] | None  # the same with the headline ratio: the interval
    vdt_days: float | None
    vdt_interval_days: tuple[float | None, float | None] | None
    note: str

    def to_dict(self) -> dict:
        return {
            "volume_ratio": self.volume_ratio,
            "volume_change_percent": self.volume_change_percent,
            "volume_ratio_fold_range": None if self.ratio_range is None else list(self.ratio_range),
            "volume_ratio_interval": (
                None if self.ratio_interval is None else list(self.ratio_interval)
            ),
            "vdt_days": self.vdt_days,
            "vdt_interval_days": (
                None if self.vdt_interval_days is None else list(self.vdt_interval_days)
            ),
            "vdt_note": self.note,
        }


def _vdt_bounds(lo: float, hi: float, interval_days: float) -> tuple[float | None, float | None]:
    """The VDT's interval from the lowest and highest ratio: (shortest, longest) when both
    grow, (most negative, least negative) when both shrink; ``(None, None)`` when they lie
    either side of 1 (the doubling times would run through infinity: no interval)."""
    if lo > 1.0 or hi < 1.0:
        return volume_doubling_days(1.0, hi, interval_days), volume_doubling_days(
            1.0, lo, interval_days
        )
    return None, None


def growth(
    prior_mm3: float,
    current_mm3: float,
    interval_days: float | None,
    prior_folds_mm3=None,
    current_folds_mm3=None,
) -> Growth:
    """The change from ``prior_mm3`` to ``current_mm3`` (the ensemble's outlines) over
    ``interval_days`` (``None``: a date is missing, no VDT), with the folds' paired volumes
    when both are given: the interval spans the headline ratio and every fold's (module
    docstring), so it contains the reported VDT."""
    if prior_mm3 <= 0 or current_mm3 <= 0:
        raise ValueError(f"volumes must be positive: {prior_mm3}, {current_mm3}")
    ratio = current_mm3 / prior_mm3
    ratios = None
    if prior_folds_mm3 is not None and current_folds_mm3 is not None:
        a = np.asarray(prior_folds_mm3, dtype=float)
        b = np.asarray(current_folds_mm3, dtype=float)
        if len(a) == len(b) and len(a) and np.all(a > 0) and np.all(b > 0):
            ratios = b / a
    ratio_range = interval = None
    if ratios is not None:
        ratio_range = (float(ratios.min()), float(ratios.max()))
        interval = (min(ratio, ratio_range[0]), max(ratio, ratio_range[1]))
    vdt = volume_doubling_days(prior_mm3, current_mm3, interval_days)
    bounds = None
    if interval_days is None:
        note = "no volume-doubling time: a date is missing"
    elif ratios is None:
        note = "volume-doubling time without an interval (the folds' volumes were not given)"
    else:
        bounds = _vdt_bounds(*interval, interval_days)
        note = f"interval from {INTERVAL_BASIS.format(n=len(ratios))}"
        note += f" ({interval[0]:.3f}-{interval[1]:.3f}"
        if not ratio_range[0] <= ratio <= ratio_range[1]:
            note += f"; the ensemble's {ratio:.3f} lies outside the folds' "
            note += f"{ratio_range[0]:.3f}-{ratio_range[1]:.3f}"
        note += ")"
        if interval[0] <= 1.0 <= interval[1]:
            note += ": containing 1, stable within the segmentation's uncertainty, no VDT interval"
    return Growth(ratio, 100.0 * (ratio - 1.0), ratio_range, interval, vdt, bounds, note)
