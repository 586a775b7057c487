"""``evaluate``: every figure of the out-of-fold evaluation in one call -> EVALUATION.md + JSON.

All numbers are pooled over out-of-fold predictions (each nodule is scored by the fold model that
never saw its patient), compared on the same nodules and folds with the size-only baseline, and
given patient-level bootstrap intervals.
"""

from __future__ import annotations

import csv
import math
import shlex
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..core.atomic import write_json
from ..core.config import ORDINAL_ATTRIBUTES, PRESENCE_ATTRIBUTES
from ..core.errors import InputError
from ..core.model import metrics
from ..core.model.folds import load_folds
from ..core.model.fusion import (
    MALIGNANCY_PROBABILITY,
    cross_fit,
    fit_logit_slope,
    fusion_oof,
    logit,
    oof_fusion_inputs,
)
from . import baselines

SMALL_MM = 10.0
ID_COLUMNS = ("patient_id", "nodule_id")
TARGETS = {
    "auroc": 0.95,
    "attribute_mae": 0.40,
    "dice": 0.80,
    "ece_calibrated": 0.03,
}


def load_table(path) -> dict[str, np.ndarray]:
    """CSV -> column arrays: ids as strings, everything else float (blank -> NaN)."""
    with open(Path(path), newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path}: no rows")
    cols = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name in ID_COLUMNS:
            cols[name] = np.array([str(v).strip() for v in values])
            continue
        try:
            cols[name] = np.array([float(v) if str(v).strip() != "" else np.nan for v in values])
        except ValueError:
            cols[name] = np.array(values)
    return cols


def _labels(oof: dict) -> np.ndarray:
    """Binary label: the ``label`` column, else derived from the reader mean (3 -> excluded)."""
    if "label" in oof:
        return oof["label"].astype(float)
    m = oof["malignancy_mean"]
    return np.where(m > 3, 1.0, np.where(m < 3, 0.0, np.nan))


def _resolve_folds(oof: dict, folds_csv) -> tuple[np.ndarray, list[str]]:
    """Folds per nodule from folds.csv (patients missing there: the OOF ``fold`` column)."""
    notes = []
    own = oof.get("fold")
    if folds_csv is None or not Path(folds_csv).exists():
        if own is None:
            raise InputError(
                "no folds: the OOF table has no 'fold' column and folds.csv is missing"
            )
        notes.append("folds.csv not given/found: folds taken from the OOF table's `fold` column.")
        return own.astype(int), notes
    table = load_folds(folds_csv)
    folds = np.array([table.get(p, -1) for p in oof["patient_id"]])
    missing = folds < 0
    if missing.any():
        if own is None:
            raise InputError(f"{missing.sum()} OOF patients are not in {folds_csv}")
        folds[missing] = own[missing].astype(int)
        notes.append(f"{int(missing.sum())} nodules' patients not in folds.csv: OOF `fold` used.")
    if own is not None:
        differ = int((own[~missing].astype(int) != folds[~missing]).sum())
        if differ:
            notes.append(
                f"WARNING: {differ} nodules have a `fold` in oof.csv different from folds.csv; "
                "folds.csv was used for the baselines and cross-fitting."
            )
    return folds, notes


def _finite(x) -> object:
    """JSON-safe: NaN/inf -> None, numpy scalars/arrays -> Python."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, np.ndarray):
        return _finite(x.tolist())
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    return x


def _scores(oof: dict, fused, y: np.ndarray, folds: np.ndarray) -> dict[str, dict]:
    """The malignancy scores to compare, each {label, prob}; the first is the primary one.

    ``fused`` is :func:`oof_fusion_inputs` of the table (None without measurements).
    """
    scores = {}
    if "malignancy_fused_prob" in oof and np.isfinite(oof["malignancy_fused_prob"]).any():
        scores["model_fused"] = {
            "label": "model, fused (`malignancy_fused_prob`)",
            "prob": oof["malignancy_fused_prob"],
        }
    scores["model_raw"] = {
        "label": "model, MIL only (`malignancy_prob`)",
        "prob": oof["malignancy_prob"],
    }
    if fused is not None:
        heads, measured, _ = fused
        scores["fusion_crossfit"] = {
            "label": "fusion refitted here out of fold (malignancy head + measurements of the "
            "segmentation: size, density, shape, margin)",
            "prob": fusion_oof(MALIGNANCY_PROBABILITY, heads["malignancy"], measured, y, folds),
        }
        scores["measured_only"] = {
            "label": "measurements of the segmentation only, no network head (out of fold)",
            "prob": baselines.logistic_oof(measured, y, folds),
        }
        scores["size_seg"] = {
            "label": "size only, model's own segmentation (log volume, out of fold)",
            "prob": baselines.logistic_oof(measured[:, 0], y, folds),
        }
    scores["size_reader"] = {
        "label": "size only, mean reader diameter (log, out of fold)",
        "prob": baselines.size_baseline_oof(oof["diameter_mean_mm"], y, folds),
    }
    if "fusion_crossfit" in scores:
        scores["shown_crossfit"] = {
            "label": "shown probability: the fusion refitted out of fold, its logit calibrated "
            "by a slope fitted on the other folds (what every surface shows)",
            "prob": _calibrated_oof(scores["fusion_crossfit"]["prob"], y, folds),
        }
    if "model_fused" not in scores and "shown_crossfit" in scores:
        # What ships is the malignancy head fused with the measurements (manifest "fusion"),
        # calibrated by a logit slope; its honest estimate refits both without each nodule's fold.
        scores = {"shown_crossfit": scores["shown_crossfit"]} | scores
    return scores


def _calibrated_oof(prob, y, folds) -> np.ndarray:
    """sigmoid(slope x logit) with the slope cross-fitted over the folds (fusion.fit_logit_slope)."""
    z = logit(prob)
    return cross_fit(
        z,
        y,
        folds,
        fit_logit_slope,
        lambda slope, x: 1.0 / (1.0 + np.exp(-slope * x)),
    )


def _fused_attribute_oof(fused, attr: str, folds: np.ndarray) -> np.ndarray | None:
    """What ships for an attribute: its head fused with the measurements, refitted out of fold.

    ``fused`` is :func:`oof_fusion_inputs` of the table (None without measurements).
    """
    if fused is None:
        return None
    heads, measured, targets = fused
    if attr not in heads or attr not in targets:
        return None
    return fusion_oof(attr, heads[attr], measured, targets[attr], folds)


def evaluate(
    oof_csv,
    folds_csv,
    reader_labels_csv,
    out_dir,
    n_boot: int = metrics.N_BOOT,
    seed: int = metrics.SEED,
    command: str | None = None,
) -> dict:
    """Evaluate an out-of-fold predictions table; writes EVALUATION.md, metrics.json, figures/.

    ``folds_csv`` and ``reader_labels_csv`` may be None (OOF ``fold`` column is used; the human
    agreement is left out). Returns the metrics dict that is written to metrics.json.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    oof = load_table(oof_csv)
    for col in ("patient_id", "malignancy_prob", "diameter_mean_mm"):
        if col not in oof:
            raise InputError(f"{oof_csv}: missing column {col!r}")
    y = _labels(oof)
    folds, notes = _resolve_folds(oof, folds_csv)
    groups = oof["patient_id"]
    small = oof["diameter_mean_mm"] < SMALL_MM
    fused = oof_fusion_inputs(oof)  # head logits, measurements, targets: shared by both parts
    scores = _scores(oof, fused, y, folds)
    primary = next(iter(scores))
    boot = {"n_boot": n_boot, "seed": seed}

    res: dict = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "oof": str(oof_csv),
            "folds": None if folds_csv is None else str(folds_csv),
            "reader_labels": None if reader_labels_csv is None else str(reader_labels_csv),
        },
        "command": command,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "unit": "patient (cluster bootstrap)"},
        "primary_score": primary,
        "counts": _counts(oof, y, folds, small),
    }

    # Malignancy discrimination: every score, all nodules and < 10 mm, and paired differences.
    disc = {}
    for subset, mask in (("all", np.ones(len(y), bool)), ("small", small)):
        disc[subset] = {}
        for key, sc in scores.items():
            disc[subset][key] = metrics.auroc_ci(y[mask], sc["prob"][mask], groups[mask], **boot)
        disc[subset]["vs_size_reader"] = {
            key: metrics.paired_auroc_difference(
                y[mask],
                sc["prob"][mask],
                scores["size_reader"]["prob"][mask],
                groups[mask],
                **boot,
            )
            for key, sc in scores.items()
            if key != "size_reader"
        }
        if primary in scores and "measured_only" in scores:
            # Does the network's head add to what is measured on its segmentation? (issue target)
            disc[subset]["head_vs_measured_only"] = metrics.paired_auroc_difference(
                y[mask],
                scores[primary]["prob"][mask],
                scores["measured_only"]["prob"][mask],
                groups[mask],
                **boot,
            )
    res["malignancy_auroc"] = disc
    res["size_matched"] = _size_matched(oof, y, scores, primary, groups, boot)
    res["score_labels"] = {k: v["label"] for k, v in scores.items()}
    res["per_fold_auroc"] = {
        key: {
            int(k): metrics.auroc(y[folds == k], sc["prob"][folds == k]) for k in np.unique(folds)
        }
        for key, sc in scores.items()
    }

    res["attributes"] = _attribute_metrics(
        oof, fused, folds, groups, reader_labels_csv, boot, notes
    )
    res["dice"] = metrics.dice_summary(oof["dice"]) if "dice" in oof else None
    res["calibration"] = {
        key: _calibration(y, scores[key]["prob"], folds, groups, boot)
        for key in scores
        if key.startswith("model") or key in ("fusion_crossfit", "shown_crossfit")
    }
    res["targets"] = _targets(res, primary)
    notes.extend(_standard_notes())
    res["notes"] = notes
    res["figures"] = _figures(y, scores, small, res["calibration"][primary], fig_dir, primary)

    write_json(out_dir / "metrics.json", _finite(res))
    (out_dir / "EVALUATION.md").write_text(_markdown(res))
    return _finite(res)


def _counts(oof, y, folds, small) -> dict:
    m = oof.get("malignancy_mean")
    return {
        "nodules": int(len(y)),
        "patients": int(len(np.unique(oof["patient_id"]))),
        "folds": int(len(np.unique(folds))),
        "labelled": int(np.isfinite(y).sum()),
        "malignant": int((y == 1).sum()),
        "benign": int((y == 0).sum()),
        "excluded_mean_3": int(np.isnan(y).sum()),
        "excluded_check_mean_eq_3": None if m is None else int((m == 3).sum()),
        "small_nodules": int(small.sum()),
        "small_labelled": int((small & np.isfinite(y)).sum()),
        "small_malignant": int((small & (y == 1)).sum()),
    }


def _attribute_metrics(oof, fused, folds, groups, reader_labels_csv, boot, notes) -> dict:
    """Ordinal MAE beside constant predictor and human agreement; presence AUROC."""
    out = {"ordinal": {}, "presence": {}}
    human = {}
    if reader_labels_csv is not None and Path(reader_labels_csv).exists():
        rows = baselines.read_reader_table(reader_labels_csv)
        keys = None
        if "nodule_id" in oof:
            ids = zip(oof["patient_id"], oof["nodule_id"], strict=True)
            keys = {baselines.nodule_key(p, n) for p, n in ids}
        matched = [
            r
            for r in rows
            if keys is None or baselines.nodule_key(r["patient_id"], r["nodule_id"]) in keys
        ]
        if keys is not None and len(matched) < len(keys):
            notes.append(
                f"human agreement: {len(matched)} of {len(keys)} OOF nodules found in the reader "
                "table; computed on those."
            )
        if not matched:
            matched = rows
            notes.append("human agreement: no OOF nodule matched the reader table; used all rows.")
        human = baselines.human_agreement(matched)
    else:
        notes.append("reader table not found: human agreement left out.")
    for attr in ORDINAL_ATTRIBUTES:
        t, p = oof.get(f"{attr}_target"), oof.get(f"{attr}_prob")
        if t is None or p is None:
            continue
        shipped = _fused_attribute_oof(fused, attr, folds)
        out["ordinal"][attr] = {
            "model_mae": metrics.mae_1to5(p, t),
            # What ships: the head fused with the measurements, refitted here out of fold.
            "fused_mae": metrics.mae_1to5(shipped, t) if shipped is not None else math.nan,
            "constant_mae": baselines.constant_predictor_mae(t, folds),
            "human_mae": human.get(attr, {}).get("mae", float("nan")),
            "human_n_nodules": human.get(attr, {}).get("n_nodules", 0),
            "n": int((np.isfinite(t) & np.isfinite(p)).sum()),
        }
    for attr in PRESENCE_ATTRIBUTES:
        t, p = oof.get(f"{attr}_target"), oof.get(f"{attr}_prob")
        if t is None or p is None:
            continue
        pos = np.where(np.isfinite(t), (t > 0.5).astype(float), np.nan)
        shipped = _fused_attribute_oof(fused, attr, folds)
        out["presence"][attr] = metrics.auroc_ci(
            pos, shipped if shipped is not None else p, groups, **boot
        )
        out["presence"][attr]["raw_head_auroc"] = metrics.auroc(pos, p)
    ords = out["ordinal"]
    if ords:
        out["mean_model_mae"] = float(np.mean([v["model_mae"] for v in ords.values()]))
        out["mean_fused_mae"] = float(np.mean([v["fused_mae"] for v in ords.values()]))
        out["mean_constant_mae"] = float(np.mean([v["constant_mae"] for v in ords.values()]))
        hm = [v["human_mae"] for v in ords.values()]
        out["mean_human_mae"] = float(np.mean(hm)) if all(np.isfinite(hm)) else float("nan")
    return out


def _size_matched(oof, y, scores, primary, groups, boot) -> dict:
    """Size-matched AUROC of every score, and what the primary score adds on those pairs."""
    size = oof["diameter_mean_mm"]
    out = {
        "definition": (
            f"pairs of a malignant and a benign nodule whose mean reader diameters differ by "
            f"<= {metrics.SIZE_MATCH_TOLERANCE_MM:g} mm, both "
            f"{metrics.SIZE_MATCH_RANGE_MM[0]:g}-{metrics.SIZE_MATCH_RANGE_MM[1]:g} mm; the "
            "AUROC is the fraction of those pairs ordered correctly (ties 1/2)"
        ),
        "auroc": {
            key: metrics.size_matched_auroc_ci(y, sc["prob"], size, groups, **boot)
            for key, sc in scores.items()
        },
    }
    for other in ("measured_only", "size_reader"):
        if other in scores and other != primary:
            out[f"{primary}_vs_{other}"] = metrics.paired_size_matched_difference(
                y, scores[primary]["prob"], scores[other]["prob"], size, groups, **boot
            )
    return out


def _calibration(y, prob, folds, groups, boot) -> dict:
    """ECE and reliability data before and after out-of-fold Platt scaling, with the ECE of a
    perfectly calibrated model on the same probabilities (the noise floor) and patient-bootstrap
    bands of the observed fraction per bin."""
    platt = baselines.platt_oof(prob, y, folds)
    labelled = np.isfinite(np.asarray(y, dtype=float))
    return {
        "ece_raw": metrics.ece(y, prob),
        "ece_platt_oof": metrics.ece(y, platt),
        "ece_noise_floor_raw": metrics.ece_noise_floor(np.asarray(prob)[labelled]),
        "ece_noise_floor_platt_oof": metrics.ece_noise_floor(np.asarray(platt)[labelled]),
        "reliability_raw": metrics.reliability(y, prob),
        "reliability_platt_oof": metrics.reliability(y, platt),
        "reliability_band_raw": metrics.reliability_bands(y, prob, groups, **boot),
        "reliability_band_platt_oof": metrics.reliability_bands(y, platt, groups, **boot),
    }


def _targets(res, primary) -> list[dict]:
    """Pass/miss of each project target (on the primary score)."""
    a, s = res["malignancy_auroc"]["all"], res["malignancy_auroc"]["small"]
    d_all = a["vs_size_reader"][primary]
    d_small = s["vs_size_reader"][primary]
    attrs = res["attributes"].get("mean_fused_mae", float("nan"))
    dice = (res["dice"] or {}).get("mean", float("nan"))
    # What is shown is already calibrated (shown_crossfit): its own ECE; another score's after
    # an out-of-fold Platt step.
    cal = res["calibration"][primary]
    ece = cal["ece_raw"] if primary == "shown_crossfit" else cal["ece_platt_oof"]
    floor = cal[
        "ece_noise_floor_raw" if primary == "shown_crossfit" else "ece_noise_floor_platt_oof"
    ]

    def ok(cond) -> bool | None:
        return None if cond is None else bool(cond)

    def finite(*v) -> bool:
        return all(isinstance(x, int | float) and math.isfinite(x) for x in v)

    auc = a[primary]["auroc"]
    return [
        {
            "target": "OOF AUROC >= 0.95 and above size-only (CI of difference excludes 0)",
            "value": f"AUROC {auc:.3f}; diff {d_all['diff']:+.3f} "
            f"[{d_all['lo']:+.3f}, {d_all['hi']:+.3f}]",
            "pass": ok(auc >= TARGETS["auroc"] and d_all["lo"] > 0) if finite(auc) else None,
        },
        {
            "target": "AUROC on nodules < 10 mm above size-only",
            "value": f"{s[primary]['auroc']:.3f} vs {s['size_reader']['auroc']:.3f}; diff "
            f"{d_small['diff']:+.3f} [{d_small['lo']:+.3f}, {d_small['hi']:+.3f}]",
            "pass": ok(d_small["diff"] > 0) if finite(d_small["diff"]) else None,
        },
        {
            "target": "mean MAE over the 7 ordinal attributes <= 0.40 (1-5 scale)",
            "value": f"{attrs:.3f}",
            "pass": ok(attrs <= TARGETS["attribute_mae"]) if finite(attrs) else None,
        },
        {
            "target": "mean Dice >= 0.80",
            "value": f"{dice:.3f}",
            "pass": ok(dice >= TARGETS["dice"]) if finite(dice) else None,
        },
        {
            "target": "size-matched AUROC above measurements-only (CI of the difference "
            "excludes 0)",
            "value": _size_matched_value(res, primary),
            "pass": _size_matched_pass(res, primary),
        },
        {
            "target": "ECE of the shown probability <= 0.03, out of fold (beside it: a perfectly "
            "calibrated model's ECE on the same nodules, median [95th percentile])",
            "value": f"{ece:.3f} (perfect model {_floor(floor)})",
            "pass": ok(ece <= TARGETS["ece_calibrated"]) if finite(ece) else None,
        },
    ]


def _size_matched_value(res: dict, primary: str) -> str:
    sm = res["size_matched"]
    auc = sm["auroc"][primary]
    text = f"{auc['auroc']:.3f} [{auc['lo']:.3f}, {auc['hi']:.3f}]"
    d = sm.get(f"{primary}_vs_measured_only")
    if d:
        text += f"; minus measurements-only {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
    return text


def _size_matched_pass(res: dict, primary: str) -> bool | None:
    d = res["size_matched"].get(f"{primary}_vs_measured_only")
    if not d or not math.isfinite(d["lo"]):
        return None
    return bool(d["lo"] > 0)


def _standard_notes() -> list[str]:
    return [
        "Label: malignant = mean reader malignancy > 3, benign = < 3; nodules whose mean is "
        "exactly 3 are excluded from every AUROC, calibration and size baseline fit, but kept for "
        "attribute MAE and Dice.",
        "Every prediction is out of fold: a nodule is scored by the fold model that did not train "
        "on its patient; baselines, Platt scaling and the refitted fusion are cross-fitted on the "
        "same patient folds.",
        "95 % intervals: percentile patient-level cluster bootstrap (several nodules per patient); "
        "p values: two-sided paired bootstrap on the same resamples.",
        "The size-only baseline uses the mean READER diameter, i.e. reader input the model never "
        "sees at inference; it is a strong and slightly optimistic reference. The model's own "
        "segmented volume gives the reader-free size baseline when `seg_volume_mm3` is present.",
        "Small nodules: mean reader diameter < 10 mm.",
        "Attribute MAE is on the 1-5 LIDC scale (score = 1 + 4 p) against the mean of the readers. "
        "Human agreement is one reader's integer rating against the mean of the OTHER readers of "
        "the nodule (>= 2 readers): a reference for reader disagreement, not the same task (the "
        "model predicts a mean, which also makes the constant predictor hard to beat).",
        "Calcification / internal structure: positive = more than half of the readers rated it "
        "present (calcified / not soft tissue); few positives make these AUROCs unstable.",
    ]


def _figures(y, scores, small, calib, fig_dir: Path, primary: str) -> dict:
    """ROC curves (model vs size, all and < 10 mm) and the reliability diagram, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    for subset, mask, title in (
        ("all", np.ones(len(y), bool), "all labelled nodules"),
        ("small", small, f"nodules < {SMALL_MM:g} mm"),
    ):
        fig, ax = plt.subplots(figsize=(5, 5))
        for key, sc in scores.items():
            fpr, tpr, _ = metrics.roc_curve(y[mask], sc["prob"][mask])
            auc = metrics.auroc(y[mask], sc["prob"][mask])
            style = "-" if key.startswith("model") else "--"
            ax.plot(fpr, tpr, style, lw=2 if key == primary else 1.2, label=f"{key} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        n = int(np.isfinite(y[mask]).sum())
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC, {title} (n={n})")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_aspect("equal")
        path = fig_dir / f"roc_{subset}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[f"roc_{subset}"] = f"figures/{path.name}"

    fig, ax = plt.subplots(figsize=(5, 5))
    for key, lab in (("raw", "raw"), ("platt_oof", "Platt (out of fold)")):
        r, band = calib[f"reliability_{key}"], calib[f"reliability_band_{key}"]
        (line,) = ax.plot(r["mean_prob"], r["frac_pos"], "o-", label=lab)
        x = np.asarray(r["mean_prob"], dtype=float)
        ok = np.isfinite(x) & np.isfinite(band["lo"]) & np.isfinite(band["hi"])
        ax.fill_between(
            x[ok],
            np.asarray(band["lo"])[ok],
            np.asarray(band["hi"])[ok],
            color=line.get_color(),
            alpha=0.15,
            lw=0,
        )
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed malignant fraction",
        title=f"Reliability, {primary}\n(10 bins; 95 % patient-bootstrap bands)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(fig_dir / "reliability.png", dpi=110)
    plt.close(fig)
    files["reliability"] = "figures/reliability.png"
    return files


def _f(x, nd: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{float(x):.{nd}f}"


MIN_CLASS_FOR_CI = 10


def _ci(d: dict) -> str:
    if min(d.get("n_pos", 0), d.get("n_neg", 0)) < MIN_CLASS_FOR_CI:
        return f"{_f(d['auroc'])} (too few in one class for a CI)"
    return f"{_f(d['auroc'])} [{_f(d['lo'])}, {_f(d['hi'])}]"


def _p(d: dict) -> str:
    p = d.get("p")
    if p is None or not math.isfinite(p):
        return "n/a"
    if p <= d.get("p_floor", 0) * (1 + 1e-9):
        return f"p <= {d['p_floor']:.2g}"
    return f"p = {p:.3f}"


def _floor(d: dict) -> str:
    return f"{_f(d['median'])} [{_f(d['p95'])}]"


def _size_matched_markdown(sm: dict, primary: str, lab: dict) -> list[str]:
    """The size-matched section: what the scores see beyond size."""
    lines = [
        "",
        "### Size-matched AUROC: malignant vs benign nodules of the same size",
        "",
        f"Definition: {sm['definition']}. Size alone scores near 0.5 here, so this is what a "
        "score sees beyond size (95 % patient-bootstrap CIs).",
        "",
        "| score | size-matched AUROC | pairs (malignant / benign nodules) |",
        "|---|---|---|",
    ]
    for key, d in sm["auroc"].items():
        lines.append(
            f"| {lab[key]} | {_f(d['auroc'])} [{_f(d['lo'])}, {_f(d['hi'])}] "
            f"| {d['n_pairs']} ({d['n_pos']} / {d['n_neg']}) |"
        )
    for key, d in sm.items():
        if key.startswith(f"{primary}_vs_"):
            other = key.removeprefix(f"{primary}_vs_")
            lines += [
                "",
                f"{primary} minus {other} on the same pairs and resamples: {d['diff']:+.3f} "
                f"[{d['lo']:+.3f}, {d['hi']:+.3f}], {_p(d)}.",
            ]
    return lines


def _markdown(res: dict) -> str:
    c = res["counts"]
    lab = res["score_labels"]
    lines = ["# Out-of-fold evaluation", ""]
    lines += [f"Generated {res['generated']} from `{res['inputs']['oof']}`.", ""]
    lines += ["Reproduce with:", "", "```", res["command"] or "(called from Python)", "```", ""]
    lines += [
        f"Primary score: **{res['primary_score']}** ({lab[res['primary_score']]}).",
        "",
        "## Targets",
        "",
        "| target | value | result |",
        "|---|---|---|",
    ]
    for t in res["targets"]:
        mark = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        lines.append(f"| {t['target']} | {t['value']} | **{mark}** |")
    lines += [
        "",
        "## Data",
        "",
        f"{c['nodules']} nodules of {c['patients']} patients in {c['folds']} folds; "
        f"{c['labelled']} labelled ({c['malignant']} malignant, {c['benign']} benign), "
        f"{c['excluded_mean_3']} excluded (mean reader malignancy exactly 3). "
        f"Nodules < {SMALL_MM:g} mm: {c['small_nodules']} ({c['small_labelled']} labelled, "
        f"{c['small_malignant']} malignant).",
        "",
        "## Malignancy AUROC (95 % CI)",
        "",
        "| score | all | < 10 mm |",
        "|---|---|---|",
    ]
    a, s = res["malignancy_auroc"]["all"], res["malignancy_auroc"]["small"]
    for key in lab:
        lines.append(f"| {lab[key]} | {_ci(a[key])} | {_ci(s[key])} |")
    lines += [
        "",
        "Paired difference against size-only (mean reader diameter), same nodules and resamples:",
        "",
        "| score | all: diff [95 % CI], p | < 10 mm: diff [95 % CI], p |",
        "|---|---|---|",
    ]
    for key, d in a["vs_size_reader"].items():
        e = s["vs_size_reader"][key]
        lines.append(
            f"| {key} | {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], {_p(d)} "
            f"| {e['diff']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}], {_p(e)} |"
        )
    if "head_vs_measured_only" in a:
        d, e = a["head_vs_measured_only"], s["head_vs_measured_only"]
        lines += [
            "",
            f"What the network's malignancy head adds: {res['primary_score']} minus the "
            "measurements of the segmentation alone, same nodules and resamples: all "
            f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], {_p(d)}; < 10 mm "
            f"{e['diff']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}], {_p(e)}.",
        ]
    lines += _size_matched_markdown(res["size_matched"], res["primary_score"], lab)
    folds = sorted({k for v in res["per_fold_auroc"].values() for k in v})
    lines += ["", "Per-fold AUROC (spread between folds):", ""]
    lines += ["| score | " + " | ".join(f"fold {k}" for k in folds) + " |"]
    lines += ["|---|" + "---|" * len(folds)]
    for key, v in res["per_fold_auroc"].items():
        lines.append(f"| {key} | " + " | ".join(_f(v.get(k)) for k in folds) + " |")
    lines += [
        "",
        f"![ROC, all]({res['figures']['roc_all']}) ![ROC, < 10 mm]({res['figures']['roc_small']})",
        "",
    ]

    at = res["attributes"]
    lines += [
        "## Attributes",
        "",
        "MAE on the 1-5 scale against the mean reader rating:",
        "",
        "| attribute | model, head fused with measurements out of fold (ships) | model, raw head "
        "| constant "
        "(training-fold mean) | one reader vs other readers | n |",
        "|---|---|---|---|---|---|",
    ]
    for attr, v in at["ordinal"].items():
        lines.append(
            f"| {attr} | {_f(v['fused_mae'])} | {_f(v['model_mae'])} | "
            f"{_f(v['constant_mae'])} | {_f(v['human_mae'])} | {v['n']} |"
        )
    if at["ordinal"]:
        lines.append(
            f"| **mean** | **{_f(at['mean_fused_mae'])}** | {_f(at['mean_model_mae'])} | "
            f"{_f(at['mean_constant_mae'])} | {_f(at['mean_human_mae'])} | |"
        )
    if at["presence"]:
        lines += [
            "",
            "| presence attribute | fused AUROC [95 % CI] (ships) | raw head AUROC | positives / n |",
            "|---|---|---|---|",
        ]
        for attr, v in at["presence"].items():
            lines.append(
                f"| {attr} | {_ci(v)} | {_f(v['raw_head_auroc'])} | {v['n_pos']} / {v['n']} |"
            )
    d = res["dice"]
    lines += ["", "## Segmentation (Dice against the consensus mask)", ""]
    if d and d["n"]:
        lines += [
            "| n | mean | median | IQR |",
            "|---|---|---|---|",
            f"| {d['n']} | {_f(d['mean'])} | {_f(d['median'])} | {_f(d['q1'])}-{_f(d['q3'])} |",
        ]
    else:
        lines.append("No Dice values in the OOF table.")
    lines += [
        "",
        "## Calibration (ECE, 10 equal-width bins, labelled nodules)",
        "",
        "| score | ECE raw | ECE after out-of-fold Platt |",
        "|---|---|---|",
    ]
    for key, v in res["calibration"].items():
        lines.append(
            f"| {key} | {_f(v['ece_raw'])} (perfect model: {_floor(v['ece_noise_floor_raw'])}) "
            f"| {_f(v['ece_platt_oof'])} (perfect model: {_floor(v['ece_noise_floor_platt_oof'])}) |"
        )
    lines += [
        "",
        "A perfectly calibrated model does not score ECE 0 on this many nodules: the figure in "
        "brackets is the median [95th percentile] ECE of labels drawn from the probabilities "
        "themselves. An ECE within that range is as good as this sample can show.",
    ]
    lines += ["", f"![Reliability]({res['figures']['reliability']})", "", "## Notes", ""]
    lines += [f"* {n}" for n in res["notes"]]
    lines += [
        "",
        f"Bootstrap: {res['bootstrap']['n_boot']} resamples of patients, seed "
        f"{res['bootstrap']['seed']}. All numbers also in `metrics.json`.",
        "",
    ]
    return "\n".join(lines)


def command_line(args_list: list[str]) -> str:
    """The shell command that reproduces a report, for EVALUATION.md."""
    return shlex.join(["nodule-malignancy", "evaluate", *args_list])
