"""A nodule's change between two dates: the volume ratio, the change in %, and the
volume-doubling time VDT = interval x ln 2 / ln(V / V_prior) (docs/DESIGN.md §17) with an
interval that carries the segmentation's uncertainty.

Why the folds: every fold of the ensemble outlines the nodule on both CTs, so each fold gives
its own ratio, paired (the same model on both dates). Their range is the interval reported;
where it contains 1 the nodule is stable within what the segmentation can tell, and there is no
VDT interval (``None, None``; the note says so). A negative VDT is a shrinking nodule's halving
time. The folds share the crop and the scan's noise, so their range understates the change's
uncertainty on small nodules (docs/experiments/prior_pairs.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Growth", "growth", "volume_doubling_days"]


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


@dataclass(frozen=True)
class Growth:
    volume_ratio: float
    volume_change_percent: float
    ratio_range: tuple[float, float] | None  # the folds' paired ratios, lowest and highest
    vdt_days: float | None
    vdt_interval_days: tuple[float | None, float | None] | None
    note: str

    def to_dict(self) -> dict:
        return {
            "volume_ratio": self.volume_ratio,
            "volume_change_percent": self.volume_change_percent,
            "volume_ratio_fold_range": None if self.ratio_range is None else list(self.ratio_range),
            "vdt_days": self.vdt_days,
            "vdt_interval_days": (
                None if self.vdt_interval_days is None else list(self.vdt_interval_days)
            ),
            "vdt_note": self.note,
        }


def _vdt_bounds(ratios: np.ndarray, interval_days: float) -> tuple[float | None, float | None]:
    """The VDT's interval from the lowest and highest ratio: (shortest, longest) when every
    fold grows, (most negative, least negative) when every fold shrinks; ``(None, None)`` when
    the folds disagree (the doubling times would run through infinity: no interval)."""
    lo, hi = float(ratios.min()), float(ratios.max())
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
    """The change from ``prior_mm3`` to ``current_mm3`` over ``interval_days`` (``None``: a
    date is missing, no VDT), with the folds' paired volumes when both are given."""
    if prior_mm3 <= 0 or current_mm3 <= 0:
        raise ValueError(f"volumes must be positive: {prior_mm3}, {current_mm3}")
    ratio = current_mm3 / prior_mm3
    ratios = None
    if prior_folds_mm3 is not None and current_folds_mm3 is not None:
        a = np.asarray(prior_folds_mm3, dtype=float)
        b = np.asarray(current_folds_mm3, dtype=float)
        if len(a) == len(b) and len(a) and np.all(a > 0) and np.all(b > 0):
            ratios = b / a
    ratio_range = None if ratios is None else (float(ratios.min()), float(ratios.max()))
    vdt = volume_doubling_days(prior_mm3, current_mm3, interval_days)
    bounds = None
    if interval_days is None:
        note = "no volume-doubling time: a date is missing"
    elif ratios is None:
        note = "volume-doubling time without an interval (the folds' volumes were not given)"
    else:
        bounds = _vdt_bounds(ratios, interval_days)
        note = f"interval from the {len(ratios)} folds' paired volume ratios"
        if ratio_range[0] <= 1.0 <= ratio_range[1]:
            note += (
                f" ({ratio_range[0]:.2f}-{ratio_range[1]:.2f}, containing 1: stable within "
                "the segmentation's uncertainty, no VDT interval)"
            )
    return Growth(ratio, 100.0 * (ratio - 1.0), ratio_range, vdt, bounds, note)
