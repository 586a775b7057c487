"""Size-matched AUROC, the ECE noise floor and reliability bands (core/model/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from NoduleMalignancyLib.core.model import metrics


def _cohort(n: int = 300, seed: int = 0):
    """Malignant nodules are larger and, at the same size, score higher on ``image``."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    size = np.clip(rng.normal(8 + 4 * y, 3), 3, 25)
    image = y + rng.normal(0, 1, n)
    groups = np.arange(n) // 2  # two nodules per patient
    return y, size, image, groups


def test_pairs_are_within_tolerance_and_range():
    y = np.array([1, 0, 0, 1, 0, np.nan])
    size = np.array([10.0, 10.9, 12.0, 3.5, 4.2, 10.0])
    i, j = metrics.size_matched_pairs(y, size)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1)]
    i, j = metrics.size_matched_pairs(y, size, tolerance_mm=2.0)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (0, 2)]


def test_size_matched_auroc_is_pair_concordance():
    y, size, image, groups = _cohort()
    res = metrics.size_matched_auroc_ci(y, image, size, groups, n_boot=200)
    i, j = metrics.size_matched_pairs(y, size)
    brute = np.mean(
        [(image[a] > image[b]) + 0.5 * (image[a] == image[b]) for a, b in zip(i, j, strict=True)]
    )
    assert res["auroc"] == pytest.approx(brute)
    assert res["n_pairs"] == len(i) > 50
    assert res["lo"] <= res["auroc"] <= res["hi"]
    # Size itself, matched to within 1 mm, is close to chance; the image score is not.
    by_size = metrics.size_matched_auroc_ci(y, size, size, groups, n_boot=200)["auroc"]
    assert abs(by_size - 0.5) < 0.1
    assert res["auroc"] > 0.65


def test_paired_size_matched_difference():
    y, size, image, groups = _cohort()
    same = metrics.paired_size_matched_difference(y, image, image, size, groups, n_boot=200)
    assert same["diff"] == 0 and same["lo"] == 0 and same["hi"] == 0
    better = metrics.paired_size_matched_difference(y, image, size, size, groups, n_boot=200)
    assert better["diff"] > 0.1 and better["lo"] > 0 and better["p"] < 0.05


def test_no_pairs_gives_nan():
    res = metrics.size_matched_auroc_ci([1, 0], [0.9, 0.1], [5.0, 15.0])
    assert res["n_pairs"] == 0 and np.isnan(res["auroc"])


def test_ece_noise_floor_shrinks_with_more_nodules():
    rng = np.random.default_rng(1)
    small = metrics.ece_noise_floor(rng.random(100), n_draws=200)
    large = metrics.ece_noise_floor(rng.random(5000), n_draws=200)
    assert 0 < large["median"] < small["median"] <= small["p95"]


def test_reliability_bands_hold_the_observed_fraction():
    y, _, image, groups = _cohort()
    prob = 1 / (1 + np.exp(-image))
    r = metrics.reliability(y, prob)
    band = metrics.reliability_bands(y, prob, groups, n_boot=300)
    for frac, lo, hi, n in zip(r["frac_pos"], band["lo"], band["hi"], r["count"], strict=True):
        if n >= 5:
            assert lo <= frac <= hi
