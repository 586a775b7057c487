"""Tests of the out-of-fold evaluation: metrics by hand, baselines by construction, full report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from NoduleMalignancyLib.core.config import ATTRIBUTES, ORDINAL_ATTRIBUTES
from NoduleMalignancyLib.core.model import metrics
from NoduleMalignancyLib.evaluation import baselines
from NoduleMalignancyLib.evaluation.report import evaluate


def _brute_auroc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean()


# --- AUROC -----------------------------------------------------------------------------------


def test_auroc_hand_cases():
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # one positive tied with one negative: 1 + 0.5 + 1 + 1 of 4 pairs
    assert metrics.auroc([0, 0, 1, 1], [1, 2, 2, 3]) == pytest.approx(0.875)
    assert metrics.auroc([0, 0, 1, 1], [1, 2, 3, 4]) == 1.0
    assert metrics.auroc([0, 0, 1, 1], [4, 3, 2, 1]) == 0.0
    assert np.isnan(metrics.auroc([1, 1, 1], [1, 2, 3]))
    # missing labels (mean == 3) are ignored
    assert metrics.auroc([0, np.nan, 1], [0.2, 0.9, 0.5]) == 1.0


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300).astype(float)
    s = rng.integers(0, 12, 300).astype(float) + y * 2  # many ties
    assert metrics.auroc(y, s) == pytest.approx(_brute_auroc(y, s), abs=1e-12)


def test_roc_curve_area_equals_auroc():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)
    fpr, tpr, _ = metrics.roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(metrics.auroc(y, s), abs=1e-12)


# --- bootstrap -------------------------------------------------------------------------------


def _synthetic(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    return y, rng.normal(size=n) + 1.2 * y, np.arange(n) // 2  # two nodules per patient


def test_cluster_weights_follow_patients():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    w = metrics.cluster_bootstrap_weights(groups, n_boot=50, seed=0)
    assert w.shape == (50, 6)
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 3] == w[:, 5])
    # three patients drawn each time
    assert np.all(w[:, [0, 2, 3]].sum(1) == 3)


def test_bootstrap_ci_contains_estimate_and_narrows():
    y, s, g = _synthetic(120, 3)
    small = metrics.auroc_ci(y, s, g, n_boot=500)
    assert small["lo"] <= small["auroc"] <= small["hi"]
    y, s, g = _synthetic(2400, 3)
    big = metrics.auroc_ci(y, s, g, n_boot=500)
    assert big["lo"] <= big["auroc"] <= big["hi"]
    assert (big["hi"] - big["lo"]) < 0.5 * (small["hi"] - small["lo"])
    # fixed seed: reproducible
    assert metrics.auroc_ci(y, s, g, n_boot=500) == big


def test_case_level_bootstrap_without_groups():
    y, s, _ = _synthetic(300, 13)
    y[::7] = np.nan
    r = metrics.auroc_ci(y, s, None, n_boot=300)
    assert r["n"] == int(np.isfinite(y).sum()) and r["lo"] <= r["auroc"] <= r["hi"]


def test_paired_difference_of_score_with_itself_is_zero():
    y, s, g = _synthetic(200, 4)
    d = metrics.paired_auroc_difference(y, s, s, g, n_boot=300)
    assert d["diff"] == 0 and d["lo"] == 0 and d["hi"] == 0 and d["p"] == 1.0


def test_paired_difference_detects_better_score():
    y, s, g = _synthetic(600, 5)
    noisy = s + np.random.default_rng(6).normal(scale=2.0, size=len(s))
    d = metrics.paired_auroc_difference(y, s, noisy, g, n_boot=500)
    assert d["diff"] > 0 and d["lo"] > 0 and d["p"] < 0.01


# --- calibration, MAE, Dice ------------------------------------------------------------------


def test_ece_calibrated_small_miscalibrated_large():
    rng = np.random.default_rng(7)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert metrics.ece(y, p) < 0.02
    assert metrics.ece(y, p**4) > 0.15
    r = metrics.reliability(y, p)
    assert sum(r["count"]) == p.size and len(r["mean_prob"]) == 10


def test_mae_and_dice_summary():
    assert metrics.mae_1to5([0.5, 0.25], [0.25, 0.25]) == pytest.approx(0.5)
    d = metrics.dice_summary([0.9, 0.8, np.nan, 0.7, 1.0])
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.85) and d["q1"] <= d["median"] <= d["q3"]


# --- baselines -------------------------------------------------------------------------------


def test_cross_fit_never_trains_on_own_fold():
    rng = np.random.default_rng(8)
    folds = np.repeat([0, 1, 2], 40)
    x = folds.astype(float)  # the feature *is* the fold, so a fitted model can tell
    y = rng.integers(0, 2, len(x)).astype(float)
    seen = []

    def fit(xt, yt):
        seen.append(set(xt.ravel().tolist()))
        return set(xt.ravel().tolist())

    def predict(model, xs):
        assert not set(xs.ravel().tolist()) & model
        return np.zeros(len(xs))

    baselines.cross_fit(x, y, folds, fit, predict)
    assert seen == [{1.0, 2.0}, {0.0, 2.0}, {0.0, 1.0}]


def test_platt_cross_fitting_uses_other_folds_only():
    # Two folds with opposite score-label relations: in-fold Platt would rank each fold
    # perfectly, cross-fitted Platt learns the other fold's (inverted) slope.
    s = np.tile(np.linspace(0.05, 0.95, 50), 2)
    folds = np.repeat([0, 1], 50)
    y = np.where(folds == 0, s > 0.5, s < 0.5).astype(float)
    p = baselines.platt_oof(s, y, folds)
    assert metrics.auroc(y[folds == 0], p[folds == 0]) == 0.0
    assert metrics.auroc(y[folds == 1], p[folds == 1]) == 0.0


def test_platt_improves_ece_of_miscalibrated_scores():
    rng = np.random.default_rng(9)
    p = rng.uniform(0.02, 0.98, 3000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    bad = p**3
    folds = rng.integers(0, 5, p.size)
    assert metrics.ece(y, baselines.platt_oof(bad, y, folds)) < 0.5 * metrics.ece(y, bad)


def test_size_baseline_on_diameter_dependent_labels():
    rng = np.random.default_rng(10)
    d = rng.lognormal(np.log(10), 0.5, 600)
    y = (rng.uniform(size=d.size) < 1 / (1 + np.exp(-4 * (np.log(d) - np.log(12))))).astype(float)
    y[rng.uniform(size=d.size) < 0.1] = np.nan  # some "mean == 3" nodules
    p = baselines.size_baseline_oof(d, y, rng.integers(0, 5, d.size))
    assert np.isfinite(p).all()
    assert metrics.auroc(y, p) > 0.8
    assert metrics.auroc(y, p) == pytest.approx(metrics.auroc(y, d), abs=0.02)


def test_constant_predictor_mae():
    t = np.array([0.0, 0.5, 1.0, 0.5])
    # fold 0 predicted by mean of fold 1 (0.75) and vice versa (0.25)
    assert baselines.constant_predictor_mae(t, [0, 0, 1, 1]) == pytest.approx(
        4 * np.mean([0.75, 0.25, 0.75, 0.25])
    )


def test_human_agreement_by_hand():
    rows = [
        {"patient_id": "p", "nodule_id": "1", "malignancy_readers": "1;3"},  # |1-3|, |3-1|
        {"patient_id": "p", "nodule_id": "2", "malignancy_readers": "2;2;5"},  # 1.5, 1.5, 3
        {"patient_id": "q", "nodule_id": "1", "malignancy_readers": "4"},  # one reader: skipped
    ]
    h = baselines.human_agreement(rows, ("malignancy",))["malignancy"]
    assert h["n_nodules"] == 2 and h["mae"] == pytest.approx((2 + 2) / 2)


def test_human_agreement_on_real_reader_table(data_dir):
    rows = baselines.read_reader_table(data_dir / "lidc_vois" / "reader_labels.csv")
    h = baselines.human_agreement(rows)
    mean = np.mean([v["mae"] for v in h.values()])
    print({k: round(v["mae"], 3) for k, v in h.items()}, f"mean {mean:.3f}")
    assert 0.5 < mean < 0.9
    assert all(0.2 < v["mae"] < 1.2 and v["n_nodules"] > 700 for v in h.values())


# --- full report -----------------------------------------------------------------------------


def _write_synthetic_oof(tmp_path: Path, data_dir: Path) -> tuple[Path, Path, Path]:
    """oof.csv from the real reader means + noise, patient folds made up, plus folds.csv."""
    reader_csv = data_dir / "lidc_vois" / "reader_labels.csv"
    rows = baselines.read_reader_table(reader_csv)
    rng = np.random.default_rng(11)
    patients = sorted({r["patient_id"] for r in rows})
    fold_of = dict(zip(patients, rng.permutation(len(patients)) % 5, strict=True))
    with open(tmp_path / "folds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "fold"])
        w.writerows(sorted(fold_of.items()))
    header = ["patient_id", "nodule_id", "fold", "label", "malignancy_mean", "diameter_mean_mm"]
    for a in ATTRIBUTES:
        header += [f"{a}_target", f"{a}_prob"]
    header += ["malignancy_logit", "seg_volume_mm3", "seg_diameter_mm", "seg_mean_hu"]
    header += ["seg_calcified_fraction", "seg_elongation", "seg_compactness"]
    header += ["seg_boundary_gradient_hu_per_mm", "seg_boundary_contrast_hu", "dice"]
    header += ["malignancy_fused_prob"]
    out = []
    for r in rows:
        m = float(r["malignancy_mean"])
        rec = {
            "patient_id": r["patient_id"],
            "nodule_id": r["nodule_id"],
            "fold": fold_of[r["patient_id"]],
            "label": "" if m == 3 else int(m > 3),
            "malignancy_mean": m,
            "diameter_mean_mm": float(r["diameter_mean_mm"]),
        }
        for a in ORDINAL_ATTRIBUTES:
            t = (baselines.reader_ratings(r, a).mean() - 1) / 4
            rec[f"{a}_target"] = t
            rec[f"{a}_prob"] = float(np.clip(t + rng.normal(0, 0.08), 0, 1))
        calc = baselines.reader_ratings(r, "calcification")
        struct = baselines.reader_ratings(r, "internal_structure")
        for a, t in (
            ("calcification", (calc != 6).mean()),
            ("internal_structure", (struct != 1).mean()),
        ):
            rec[f"{a}_target"] = t
            rec[f"{a}_prob"] = float(np.clip(t + rng.normal(0, 0.2), 0, 1))
        logit = 2.0 * (m - 3) + rng.normal(0, 1.5)
        rec["malignancy_logit"] = logit
        rec["malignancy_prob"] = 1 / (1 + np.exp(-logit))
        rec["seg_volume_mm3"] = float(r["volume_mean_mm3"]) * np.exp(rng.normal(0, 0.2))
        rec["seg_diameter_mm"] = float(r["diameter_mean_mm"]) * np.exp(rng.normal(0, 0.1))
        rec["seg_mean_hu"] = -800 + 800 * rec["texture_target"] + rng.normal(0, 60)
        rec["seg_calcified_fraction"] = float(
            np.clip(0.4 * rec["calcification_target"] + rng.normal(0, 0.03), 0, 1)
        )
        rec["seg_elongation"] = float(rng.uniform(0.4, 1.0))
        rec["seg_compactness"] = float(rng.uniform(0.2, 0.7))
        rec["seg_boundary_gradient_hu_per_mm"] = float(rng.uniform(50, 300))
        rec["seg_boundary_contrast_hu"] = float(rng.uniform(300, 900))
        rec["dice"] = float(np.clip(rng.normal(0.82, 0.1), 0, 1))
        rec["malignancy_fused_prob"] = 1 / (
            1 + np.exp(-(logit + np.log(rec["seg_volume_mm3"]) - 5))
        )
        out.append(rec)
    oof = tmp_path / "oof.csv"
    with open(oof, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header + ["malignancy_prob"])
        w.writeheader()
        w.writerows(out)
    return oof, tmp_path / "folds.csv", reader_csv


def test_evaluate_writes_report(tmp_path, data_dir):
    oof, folds, readers = _write_synthetic_oof(tmp_path, data_dir)
    out = tmp_path / "models"
    res = evaluate(oof, folds, readers, out, n_boot=200, command="nodule-malignancy evaluate ...")
    for name in (
        "EVALUATION.md",
        "metrics.json",
        "figures/roc_all.png",
        "figures/roc_small.png",
        "figures/reliability.png",
    ):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["primary_score"] == "model_fused"
    c = saved["counts"]
    assert c["excluded_mean_3"] == c["excluded_check_mean_eq_3"] > 0
    assert c["labelled"] + c["excluded_mean_3"] == c["nodules"]
    a = res["malignancy_auroc"]["all"]
    assert a["model_raw"]["lo"] <= a["model_raw"]["auroc"] <= a["model_raw"]["hi"]
    assert 0.85 < a["size_reader"]["auroc"] < 0.95
    assert len(res["attributes"]["ordinal"]) == 7
    assert res["attributes"]["mean_model_mae"] < res["attributes"]["mean_constant_mae"]
    # The shipped attributes fuse each head with the measurements: mean HU carries texture here.
    ords = res["attributes"]["ordinal"]
    assert ords["texture"]["fused_mae"] < ords["texture"]["model_mae"]
    calc = res["attributes"]["presence"]["calcification"]
    assert calc["n_pos"] > 20 and calc["auroc"] > calc["raw_head_auroc"]
    assert {"fusion_crossfit", "measured_only", "size_seg"} <= res["score_labels"].keys()
    assert len(res["targets"]) == 6
    # Size-matched pairs: what the scores see beyond size, with patient-bootstrap CIs.
    sm = res["size_matched"]["auroc"]
    assert sm["size_reader"]["n_pairs"] > 100
    assert abs(sm["size_reader"]["auroc"] - 0.5) < 0.15
    assert sm["model_fused"]["lo"] <= sm["model_fused"]["auroc"] <= sm["model_fused"]["hi"]
    assert "model_fused_vs_measured_only" in res["size_matched"]
    floor = res["calibration"]["model_fused"]["ece_noise_floor_raw"]
    assert 0 < floor["median"] <= floor["p95"] < 0.2
    assert "Size-matched AUROC" in (out / "EVALUATION.md").read_text()
    text = (out / "EVALUATION.md").read_text()
    assert "figures/roc_all.png" in text and "PASS" in text and "excluded" in text
    print(text)


def test_cli_evaluate(tmp_path, capsys, data_dir):
    import argparse

    from NoduleMalignancyLib.evaluation.cli import register

    oof, folds, _ = _write_synthetic_oof(tmp_path, data_dir)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "m"
    args = parser.parse_args(
        [
            "evaluate",
            "--oof",
            str(oof),
            "--folds",
            str(folds),
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--n-boot",
            "100",
        ]
    )
    assert args.func(args) == 0
    assert "--n-boot 100" in (out / "EVALUATION.md").read_text()
    printed = capsys.readouterr().out
    assert printed.count("[PASS]") + printed.count("[MISS]") + printed.count("[n/a]") == 6


def test_evaluate_minimal_table_without_optional_inputs(tmp_path):
    """Only the required columns, no folds.csv, no reader table: still a complete report."""
    rng = np.random.default_rng(12)
    n = 150
    mal = rng.choice([1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0], n)
    diam = np.exp(rng.normal(np.log(8) + 0.2 * (mal - 3), 0.4))
    prob = 1 / (1 + np.exp(-(mal - 3 + rng.normal(0, 1, n))))
    with open(tmp_path / "oof.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "patient_id",
                "nodule_id",
                "fold",
                "malignancy_mean",
                "diameter_mean_mm",
                "malignancy_prob",
            ]
        )
        for i in range(n):
            w.writerow([f"P{i // 2}", i % 2 + 1, (i // 2) % 3, mal[i], diam[i], prob[i]])
    res = evaluate(tmp_path / "oof.csv", None, None, tmp_path / "out", n_boot=100)
    assert res["primary_score"] == "model_raw"
    assert res["counts"]["excluded_mean_3"] == int((mal == 3).sum())
    assert res["dice"] is None and res["attributes"]["ordinal"] == {}
    assert [t["pass"] for t in res["targets"]][2:4] == [None, None]
    assert (tmp_path / "out" / "figures" / "reliability.png").exists()
    assert any("folds.csv" in note for note in res["notes"])
