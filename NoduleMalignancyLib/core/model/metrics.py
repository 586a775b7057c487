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
    return out | _difference_interval(_weighted_auroc(y, a, w) - _weighted_auroc(y, b, w), level)


def _difference_interval(d: np.ndarray, level: float) -> dict:
    """Percentile CI of bootstrap differences and the two-sided p of 0 (never reported as 0)."""
    d = d[np.isfinite(d)]
    tail = 100 * (1 - level) / 2
    lo, hi = (float(v) for v in np.percentile(d, [tail, 100 - tail]))
    below = ((d <= 0).sum() + 1) / (len(d) + 1)
    above = ((d >= 0).sum() + 1) / (len(d) + 1)
    return {
        "lo": lo,
        "hi": hi,
        "p": float(min(1.0, 2 * min(below, above))),
        "p_floor": float(2 / (len(d) + 1)),  # smallest p these resamples can give
    }


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


# Size-matched discrimination: malignant vs benign nodules of (nearly) the same size.
SIZE_MATCH_TOLERANCE_MM = 1.0
SIZE_MATCH_RANGE_MM = (4.0, 20.0)


def size_matched_pairs(
    y,
    size_mm,
    tolerance_mm: float = SIZE_MATCH_TOLERANCE_MM,
    range_mm: tuple[float, float] = SIZE_MATCH_RANGE_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (malignant i, benign j) of every pair whose sizes differ by <= ``tolerance_mm``,
    both sizes within ``range_mm`` (inclusive).

    Why pairs: size alone separates malignant from benign LIDC nodules well (AUROC ~0.90), so the
    plain AUROC hides what a model sees beyond size; restricted to size-matched pairs, size alone
    scores near 0.5 and what remains is the image (docs/DESIGN.md, the evaluation).
    """
    y = np.asarray(y, dtype=float)
    d = np.asarray(size_mm, dtype=float)
    lo, hi = range_mm
    ok = np.isfinite(y) & np.isfinite(d) & (d >= lo) & (d <= hi)
    pos = np.flatnonzero(ok & (y == 1))
    neg = np.flatnonzero(ok & (y == 0))
    close = np.abs(d[pos][:, None] - d[neg][None, :]) <= tolerance_mm
    i, j = np.nonzero(close)
    return pos[i], neg[j]


def _pair_concordance(score: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """1 where the malignant nodule of a pair scores higher, 1/2 on a tie, 0 otherwise."""
    a, b = score[pairs[0]], score[pairs[1]]
    return (a > b) + 0.5 * (a == b)


def _weighted_pair_mean(conc: np.ndarray, pairs, w: np.ndarray) -> np.ndarray:
    """Concordance under case weights (B, n): a pair counts w_i * w_j (drawn copies pair up)."""
    pw = w[:, pairs[0]] * w[:, pairs[1]]
    den = pw.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (pw * conc).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def size_matched_auroc_ci(
    y,
    score,
    size_mm,
    groups=None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = 0.95,
    tolerance_mm: float = SIZE_MATCH_TOLERANCE_MM,
    range_mm: tuple[float, float] = SIZE_MATCH_RANGE_MM,
) -> dict:
    """Size-matched AUROC: the fraction of size-matched (malignant, benign) pairs that the score
    orders correctly (ties 1/2), with a patient-level bootstrap CI (see size_matched_pairs)."""
    y, s, d, keep = _clean(y, score, size_mm)
    pairs = size_matched_pairs(y, d, tolerance_mm, range_mm)
    out = {"auroc": float("nan"), "lo": float("nan"), "hi": float("nan"), "n_pairs": len(pairs[0])}
    out.update(n_pos=len(np.unique(pairs[0])), n_neg=len(np.unique(pairs[1])), n_boot=int(n_boot))
    out.update(tolerance_mm=float(tolerance_mm), range_mm=[float(v) for v in range_mm])
    if not len(pairs[0]):
        return out
    conc = _pair_concordance(s, pairs)
    out["auroc"] = float(conc.mean())
    w = cluster_bootstrap_weights(_groups_or_cases(groups, keep), n_boot, seed)
    boot = _weighted_pair_mean(conc, pairs, w)
    tail = 100 * (1 - level) / 2
    out["lo"], out["hi"] = (float(v) for v in np.nanpercentile(boot, [tail, 100 - tail]))
    return out


def paired_size_matched_difference(
    y,
    score_a,
    score_b,
    size_mm,
    groups=None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = 0.95,
    tolerance_mm: float = SIZE_MATCH_TOLERANCE_MM,
    range_mm: tuple[float, float] = SIZE_MATCH_RANGE_MM,
) -> dict:
    """Size-matched AUROC(a) - AUROC(b) on the same pairs and resamples: CI and two-sided p."""
    y, a, b, d, keep = _clean(y, score_a, score_b, size_mm)
    pairs = size_matched_pairs(y, d, tolerance_mm, range_mm)
    out = {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p": float("nan")}
    out.update(n_pairs=len(pairs[0]), n_boot=int(n_boot))
    if not len(pairs[0]):
        return out
    conc = _pair_concordance(a, pairs) - _pair_concordance(b, pairs)
    out["diff"] = float(conc.mean())
    w = cluster_bootstrap_weights(_groups_or_cases(groups, keep), n_boot, seed)
    return out | _difference_interval(_weighted_pair_mean(conc, pairs, w), level)


def ece_noise_floor(
    prob, n_bins: int = 10, n_draws: int = 1000, seed: int = SEED
) -> dict[str, float]:
    """ECE of a perfectly calibrated model on these probabilities: labels drawn as
    Bernoulli(prob). Why: with a few hundred nodules the ECE of a perfect model is not 0, so a
    measured ECE means something only beside this floor (median and 95th percentile)."""
    p = np.asarray(prob, dtype=float)
    p = p[np.isfinite(p)]
    rng = np.random.default_rng(seed)
    draws = [ece((rng.random(len(p)) < p).astype(float), p, n_bins) for _ in range(n_draws)]
    return {"median": float(np.median(draws)), "p95": float(np.percentile(draws, 95))}


def reliability_bands(
    y, prob, groups=None, n_bins: int = 10, n_boot: int = N_BOOT, seed: int = SEED
) -> dict[str, list[float]]:
    """Patient-bootstrap 95 % band of the observed malignant fraction in each probability bin."""
    y, p, keep = _clean(y, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    onehot = np.eye(n_bins)[b]  # (n, bins)
    w = cluster_bootstrap_weights(_groups_or_cases(groups, keep), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (w * y) @ onehot / (w @ onehot)
    lo, hi = np.nanpercentile(frac, [2.5, 97.5], axis=0)
    return {"lo": lo.tolist(), "hi": hi.tolist()}
