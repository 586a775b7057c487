"""Late fusion of the MIL malignancy logit with the model's own nodule size.

On LIDC, size alone predicts the readers' malignancy label very well, so the size signal is made
explicit: a two-feature logistic model (MIL logit, log of the segmented volume) fitted on
out-of-fold predictions. It needs no reader input at inference: the volume comes from the
ensemble's own segmentation. Stored in the manifest as plain numbers.
"""

from __future__ import annotations

import numpy as np

FEATURES = ("mil_logit", "log_volume_mm3")


def fusion_features(mil_logit, volume_mm3) -> np.ndarray:
    """(N, 2) features: MIL malignancy logit and log volume (1 mm^3 floor)."""
    mil_logit = np.atleast_1d(np.asarray(mil_logit, dtype=float))
    vol = np.atleast_1d(np.asarray(volume_mm3, dtype=float))
    return np.stack([mil_logit, np.log(np.maximum(vol, 1.0))], axis=-1)


def apply_fusion(fusion: dict | None, mil_logit, volume_mm3) -> np.ndarray:
    """Malignancy probability: fused when a fusion model is given, else sigmoid of the logit."""
    z = np.atleast_1d(np.asarray(mil_logit, dtype=float))
    if fusion:
        x = fusion_features(z, volume_mm3)
        mean = np.asarray(fusion["mean"])
        scale = np.asarray(fusion["scale"])
        z = ((x - mean) / scale) @ np.asarray(fusion["coef"]) + float(fusion["intercept"])
    return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 100
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression by Newton's method on standardised features.

    Returns (coef, intercept, mean, scale). Small and dependency-free (no scikit-learn).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    mean, scale = x.mean(0), x.std(0) + 1e-12
    xs = np.column_stack([np.ones(len(x)), (x - mean) / scale])
    w = np.zeros(xs.shape[1])
    reg = np.diag([0.0] + [l2] * (xs.shape[1] - 1))
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-xs @ w))
        grad = xs.T @ (p - y) + reg @ w
        hess = (xs * (p * (1 - p))[:, None]).T @ xs + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w[1:], float(w[0]), mean, scale


def fit_fusion(mil_logit, volume_mm3, label) -> dict:
    """Fit the fusion model; returns the manifest entry."""
    coef, intercept, mean, scale = fit_logistic(fusion_features(mil_logit, volume_mm3), label)
    return {
        "type": "logistic",
        "features": list(FEATURES),
        "coef": coef.tolist(),
        "intercept": intercept,
        "mean": mean.tolist(),
        "scale": scale.tolist(),
    }


def logit(p) -> np.ndarray:
    """Inverse sigmoid, clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_attribute_calibration(
    logits: dict[str, np.ndarray], targets: dict[str, np.ndarray]
) -> dict:
    """Per-attribute Platt scaling of the ordinal heads, fitted on out-of-fold predictions.

    The heads are trained with a focal loss, which leaves their soft-target regression biased;
    a two-parameter map per attribute (fitted with the soft targets themselves) removes that
    bias. Returns the manifest entry {attribute: {coef, intercept, mean, scale}}.
    """
    entry = {}
    for name, z in logits.items():
        z = np.asarray(z, dtype=float)
        t = np.asarray(targets[name], dtype=float)
        keep = np.isfinite(z) & np.isfinite(t)
        if keep.sum() < 10:
            continue
        coef, intercept, mean, scale = fit_logistic(z[keep, None], t[keep])
        entry[name] = {
            "coef": float(coef[0]),
            "intercept": intercept,
            "mean": float(mean[0]),
            "scale": float(scale[0]),
        }
    return entry


def apply_attribute_calibration(calibration: dict | None, name: str, logit) -> np.ndarray:
    """Calibrated probability of an attribute head (sigmoid of the logit when uncalibrated)."""
    z = np.asarray(logit, dtype=float)
    c = (calibration or {}).get(name)
    if c:
        z = (z - c["mean"]) / c["scale"] * c["coef"] + c["intercept"]
    return 1.0 / (1.0 + np.exp(-z))


def attribute_calibration_oof(prob, target, folds) -> np.ndarray:
    """Out-of-fold calibrated probabilities: each fold mapped by a fit on the other folds."""
    z = logit(prob)
    t = np.asarray(target, dtype=float)
    folds = np.asarray(folds)
    out = np.full(len(z), np.nan)
    for k in np.unique(folds):
        test = folds == k
        cal = fit_attribute_calibration({"a": z[~test]}, {"a": t[~test]})
        out[test] = apply_attribute_calibration(cal, "a", z[test])
    return out
