"""Metrics for the out-of-fold evaluation, in plain numpy (no scikit-learn, no scipy).

AUROC is the Mann-Whitney statistic with ties counted as one half. Confidence intervals come from
a patient-level cluster bootstrap: LIDC has several nodules per patient, and resampling nodules
as if they were independent would make the intervals too narrow.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 2000
SEED = 20240611


def _clean(y, *scores) -> tuple[np.ndarray, ...]:
    """Float arrays with the rows dropped where the label or any score is missing."""
    y = np.asarray(y, dtype=float)
    scores = [np.asarray(s, dtype=float) for s in scores]
    keep = np.isfinite(y)
    for s in scores:
        keep &= np.isfinite(s)
    return (y[keep], *(s[keep] for s in scores), keep)


def _weighted_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC under each row of case weights ``w`` (B, n); NaN where a class has no weight.

    One sort serves every bootstrap replicate: a replicate only changes the weights, so the
    Mann-Whitney sum becomes a weighted count of negatives below (and tied with) each positive.
    """
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], w[:, order]
    new_group = np.r_[True, np.diff(s) != 0]
    starts = np.flatnonzero(new_group)
    group = np.cumsum(new_group) - 1
    neg_w = w * (y == 0)
    pos_w = w * (y == 1)
    neg_group = np.add.reduceat(neg_w, starts, axis=1)
    credit = np.cumsum(neg_group, axis=1) - 0.5 * neg_group  # below + half of the ties
    num = (pos_w * credit[:, group]).sum(1)
    den = pos_w.sum(1) * neg_w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def auroc(y, score) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count 1/2); NaN if a class is absent."""
    y, s, _ = _clean(y, score)
    if len(y) == 0:
        return float("nan")
    return float(_weighted_auroc(y, s, np.ones((1, len(y))))[0])


def roc_curve(y, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds), from (0, 0) to (1, 1), one point per distinct score."""
    y, s, _ = _clean(y, score)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y == 1)[last]
    fp = np.cumsum(y == 0)[last]
    n_pos, n_neg = max(tp[-1], 1), max(fp[-1], 1)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last]]


def cluster_bootstrap_weights(groups, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """(n_boot, n) case weights: how often each case's cluster (patient) was drawn.

    Drawing P patients with replacement is a multinomial over patients; every nodule of a drawn
    patient comes along. Pass ``np.arange(n)`` to resample the cases themselves.
    """
    rng = np.random.default_rng(seed)
    _, idx = np.unique(np.asarray(groups), return_inverse=True)
    n = int(idx.max()) + 1 if len(idx) else 0
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) if n else np.zeros((n_boot, 0))
    return counts[:, idx].astype(float)


def _groups_or_cases(groups, keep: np.ndarray) -> np.ndarray:
    """Cluster ids of the kept rows; without groups every nodule is its own cluster."""
    return np.arange(int(keep.sum())) if groups is None else np.asarray(groups)[keep]


def auroc_ci(
    y, score, groups=None, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95
) -> dict:
    """AUROC with a percentile bootstrap CI (patients as clusters when ``groups`` is given)."""
    y, s, keep = _clean(y, score)
    out = {"auroc": auroc(y, s), "lo": float("nan"), "hi": float("nan")}
    out.update(n=int(len(y)), n_pos=int((y == 1).sum()), n_neg=int((y == 0).sum()))
    out["n_boot"] = int(n_boot)
    if out["n_pos"] == 0 or out["n_neg"] == 0:
        return out
    w = cluster_bootstrap_weights(_groups_or_cases(groups, keep), n_boot, seed)
    boot = _weighted_auroc(y, s, w)
    out["n_boot_valid"] = int(np.isfinite(boot).sum())  # resamples holding both classes
    tail = 100 * (1 - level) / 2
    out["lo"], out["hi"] = (float(v) for v in np.nanpercentile(boot, [tail, 100 - tail]))
    return out


def paired_auroc_difference(
    y, score_a, score_b, groups=None, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95
) -> dict:
    """AUROC(a) - AUROC(b) on the same nodules: paired bootstrap CI and two-sided p.

    Both scores see the same resamples, so their correlation is kept. p is twice the smaller
    bootstrap tail beyond 0, with the usual +1 correction so it is never reported as 0.
    """
    y, a, b, keep = _clean(y, score_a, score_b)
    diff = auroc(y, a) - auroc(y, b)
    out = {"diff": float(diff), "lo": float("nan"), "hi": float("nan"), "p": float("nan")}
    out.update(n=int(len(y)), n_boot=int(n_boot))
    if not np.isfinite(diff):
        return out
    w = cluster_bootstrap_weights(_groups_or_cases(groups, keep), n_boot, seed)
    d = _weighted_auroc(y, a, w) - _weighted_auroc(y, b, w)
    d = d[np.isfinite(d)]
    tail = 100 * (1 - level) / 2
    out["lo"], out["hi"] = (float(v) for v in np.percentile(d, [tail, 100 - tail]))
    below = ((d <= 0).sum() + 1) / (len(d) + 1)
    above = ((d >= 0).sum() + 1) / (len(d) + 1)
    out["p"] = float(min(1.0, 2 * min(below, above)))
    out["p_floor"] = float(2 / (len(d) + 1))  # smallest p these resamples can give
    return out


def reliability(y, prob, n_bins: int = 10) -> dict:
    """Reliability-diagram data over equal-width probability bins (empty bins give NaN)."""
    y, p, _ = _clean(y, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(b, weights=y, minlength=n_bins) / count
    return {
        "edges": edges.tolist(),
        "mean_prob": mean_p.tolist(),
        "frac_pos": frac_pos.tolist(),
        "count": count.astype(int).tolist(),
    }


def ece(y, prob, n_bins: int = 10) -> float:
    """Expected calibration error: bin-size-weighted |mean probability - observed rate|."""
    r = reliability(y, prob, n_bins)
    count = np.asarray(r["count"], dtype=float)
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(r["mean_prob"]) - np.asarray(r["frac_pos"]))
    return float(np.nansum(gap * count) / count.sum())


def mae_1to5(prob, target) -> float:
    """MAE on the LIDC 1-5 scale: both sides are (rating - 1) / 4 fractions, score = 1 + 4 p.

    Any shape (all cells pooled); cells where either side is missing are left out.
    """
    t, p, _ = _clean(target, prob)
    return float(np.mean(np.abs(4 * p - 4 * t))) if len(t) else float("nan")


def dice(a, b) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def dice_summary(dice) -> dict:
    """Mean, median and quartiles of per-nodule Dice (missing values ignored)."""
    d = np.asarray(dice, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return {
            "n": 0,
            "mean": float("nan"),
            "median": float("nan"),
            "q1": float("nan"),
            "q3": float("nan"),
        }
    q1, med, q3 = np.percentile(d, [25, 50, 75])
    return {
        "n": int(len(d)),
        "mean": float(d.mean()),
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
    }
