"""Fusion of the network's heads with what is measured on its own segmentation.

On LIDC the readers' ratings follow facts that are easy to measure and hard for a small network
to learn from 800 nodules: size (malignancy, subtlety), calcium (calcification, and through it a
benign malignancy rating) and attenuation (texture: ground glass vs solid). So every output gets
a small logistic model on its head's logit and these measurements (FEATURES),
fitted on out-of-fold predictions and stored in the manifest as plain numbers. Nothing here
needs reader input at inference: the measurements come from the ensemble's segmentation.

Shape and margin measurements (elongation, compactness, boundary sharpness and contrast) join
them for what readers judge by eye (sphericity, margin, lobulation, spiculation).

For the 1-5 ratings each measurement also enters squared (after centring and scaling on the
fitting rows): ratings saturate and turn (texture is "solid" for anything denser than soft
tissue; subtlety stops growing with size), which a straight line in the logit cannot follow.
The malignancy probability, fitted to a 0/1 label on fewer nodules, stays linear. The
cross-validated measurements behind both choices are in docs/experiments/README.md.

Outputs: the 9 attribute heads (fitted to the readers' soft targets, giving the 1-5 scores and
the presence probabilities) and ``malignancy_probability`` (fitted to the 0/1 label: mean reader
malignancy > 3 vs < 3), which uses the malignancy head's logit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..config import ATTRIBUTES, ORDINAL_ATTRIBUTES

# The measurements the fusion reads (measurements.measure_nodule names) and its features.
MEASUREMENTS = (
    "volume_mm3",
    "diameter_mm",
    "mean_hu",
    "calcified_fraction",
    "elongation",
    "compactness",
    "boundary_gradient_hu_per_mm",
    "boundary_contrast_hu",
)
# Sizes and compactness span orders of magnitude: they enter as logs (with small floors).
LOG_FLOORS = {"volume_mm3": 1.0, "diameter_mm": 1.0, "compactness": 1e-3}
MEASURED_FEATURES = tuple(f"log_{m}" if m in LOG_FLOORS else m for m in MEASUREMENTS)
LINEAR_FEATURES = ("head_logit", *MEASURED_FEATURES)
SQUARED_FEATURES = tuple(f"{f}_squared" for f in MEASURED_FEATURES)
FEATURES = (*LINEAR_FEATURES, *SQUARED_FEATURES)
MALIGNANCY_PROBABILITY = "malignancy_probability"
OUTPUTS = (*ATTRIBUTES, MALIGNANCY_PROBABILITY)
SQUARED_OUTPUTS = ORDINAL_ATTRIBUTES  # outputs whose models also read SQUARED_FEATURES


def features_of(output: str) -> tuple[str, ...]:
    """The features an output's model reads, in coefficient order."""
    return FEATURES if output in SQUARED_OUTPUTS else LINEAR_FEATURES


def head_of(output: str) -> str:
    """The attribute head whose logit an output fuses."""
    return "malignancy" if output == MALIGNANCY_PROBABILITY else output


def measured_features(values) -> np.ndarray:
    """(N, len(MEASURED_FEATURES)) features from measurements (dict of arrays or list of dicts)."""
    if not isinstance(values, dict):
        values = {m: [v[m] for v in values] for m in MEASUREMENTS}
    col = {m: np.atleast_1d(np.asarray(values[m], dtype=float)) for m in MEASUREMENTS}
    for m, floor in LOG_FLOORS.items():
        col[m] = np.log(np.maximum(col[m], floor))
    return np.stack([col[m] for m in MEASUREMENTS], axis=-1)


def _columns(head_logit, measured) -> tuple[np.ndarray, np.ndarray]:
    z = np.atleast_1d(np.asarray(head_logit, dtype=float))
    return z, np.asarray(measured, dtype=float).reshape(len(z), len(MEASURED_FEATURES))


def _inputs(z: np.ndarray, m: np.ndarray, center=None, scale=None) -> np.ndarray:
    """The head's logit, the measurements and (given a centre and scale) their centred squares."""
    if center is None:
        return np.column_stack([z, m])
    return np.column_stack([z, m, ((m - np.asarray(center)) / np.asarray(scale)) ** 2])


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 100
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression by Newton's method on standardised features.

    ``y`` may be soft (in [0, 1]). Returns (coef, intercept, mean, scale). Small and
    dependency-free (no scikit-learn).
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


def fit_output(output: str, head_logit, measured, target) -> dict | None:
    """One output's logistic model (features_of(output)), or None with < 10 usable nodules."""
    z, m = _columns(head_logit, measured)
    t = np.asarray(target, dtype=float)
    keep = np.isfinite(t) & np.isfinite(z) & np.isfinite(m).all(1)
    if keep.sum() < 10:
        return None
    squares = {}
    if output in SQUARED_OUTPUTS:
        squares = {"square_center": m[keep].mean(0), "square_scale": m[keep].std(0) + 1e-12}
    x = _inputs(z[keep], m[keep], squares.get("square_center"), squares.get("square_scale"))
    coef, intercept, mean, scale = fit_logistic(x, t[keep])
    model = {"features": list(features_of(output)), "coef": coef, "intercept": intercept}
    model |= {"mean": mean, "scale": scale, **squares}
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in model.items()}


def fit_fusion(head_logits: dict, measured: np.ndarray, targets: dict) -> dict:
    """The manifest entry: a model per output that has a target (see the module docstring)."""
    models = {}
    for out in OUTPUTS:
        if out in targets and head_of(out) in head_logits:
            m = fit_output(out, head_logits[head_of(out)], measured, targets[out])
            if m is not None:
                models[out] = m
    return {"type": "logistic", "features": list(FEATURES), "outputs": models}


def apply_output_logit(model: dict | None, head_logit, measured) -> np.ndarray:
    """Fused logit of one output; the head's logit without a model."""
    z, m = _columns(head_logit, measured)
    if model:
        x = _inputs(z, m, model.get("square_center"), model.get("square_scale"))
        z = ((x - np.asarray(model["mean"])) / np.asarray(model["scale"])) @ np.asarray(
            model["coef"]
        ) + float(model["intercept"])
    return z


def apply_output(model: dict | None, head_logit, measured) -> np.ndarray:
    """Fused probability of one output; the sigmoid of the head's logit without a model."""
    return 1.0 / (1.0 + np.exp(-apply_output_logit(model, head_logit, measured)))


def apply_fusion_logit(fusion: dict | None, output: str, head_logit, measured) -> np.ndarray:
    """Fused logit of ``output`` under a manifest fusion entry (None: the head's logit)."""
    return apply_output_logit((fusion or {}).get("outputs", {}).get(output), head_logit, measured)


def apply_fusion(fusion: dict | None, output: str, head_logit, measured) -> np.ndarray:
    """Fused probability of ``output`` under a manifest fusion entry (None: raw head)."""
    return 1.0 / (1.0 + np.exp(-apply_fusion_logit(fusion, output, head_logit, measured)))


# The shown malignancy is sigmoid(slope x fused logit): one number, calibrated on the logit the
# explanation decomposes (a slope keeps the decomposition exact: every part is scaled by it).
CALIBRATION = "calibration"
MIN_CALIBRATION_CLASS = 10  # labelled nodules of each class below which the slope stays 1


def fit_logit_slope(logits, labels, iters: int = 50) -> float:
    """The one-parameter calibration p = sigmoid(slope * logit), by Newton's method.

    Why one parameter: the fusion already has an intercept; what cross-fitting shows is that its
    logit is too steep on nodules it was not fitted on (the fusion's nine coefficients overfit a
    little), and a single slope is what transfers with the fewest assumptions.
    """
    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels, dtype=float)
    keep = np.isfinite(z) & np.isfinite(y)
    z, y = z[keep], y[keep]
    if len(np.unique(y)) < 2:
        raise ValueError("a calibration slope needs both classes")
    slope = 1.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-slope * z))
        grad = float(((p - y) * z).sum())
        hess = float((p * (1 - p) * z * z).sum()) + 1e-12
        step = grad / hess
        slope -= step
        if abs(step) < 1e-10:
            break
    return float(slope)


def malignancy_calibration(head_logit, measured, label, folds) -> dict:
    """The manifest's calibration entry: a logit slope fitted on the fusion's cross-fitted logits
    (each fold scored by a fusion fitted on the other folds), all folds pooled."""
    entry = {"output": MALIGNANCY_PROBABILITY, "type": "logit_slope", "logit_slope": 1.0}
    p = fusion_oof(MALIGNANCY_PROBABILITY, head_logit, measured, label, folds)
    y = np.asarray(label, dtype=float)
    usable = np.isfinite(p) & np.isfinite(y)
    if min((y[usable] == 1).sum(), (y[usable] == 0).sum()) < MIN_CALIBRATION_CLASS:
        return entry | {"fitted_on": "not fitted: too few labelled nodules of one class"}
    return entry | {
        "logit_slope": fit_logit_slope(logit(p[usable]), y[usable]),
        "fitted_on": "cross-fitted fused malignancy logits of the out-of-fold rows, all folds",
    }


def calibration_slope(fusion: dict | None) -> float:
    """The shown malignancy's logit slope (1 without a calibration entry)."""
    return float(((fusion or {}).get(CALIBRATION) or {}).get("logit_slope", 1.0))


def check_fusion(fusion: dict | None) -> None:
    """Raise ValueError for a fusion entry this code cannot apply (e.g. an older format)."""
    if fusion is None:
        return
    if CALIBRATION in fusion:
        cal = fusion[CALIBRATION] or {}
        slope = cal.get("logit_slope")
        if (
            cal.get("type") != "logit_slope"
            or not isinstance(slope, int | float)
            or not np.isfinite(slope)
            or slope <= 0
        ):
            raise ValueError(f"fusion calibration {cal!r} is not a positive finite logit slope")
    if fusion.get("features") != list(FEATURES) or not isinstance(fusion.get("outputs"), dict):
        raise ValueError(
            f"fusion features {fusion.get('features')} are not {list(FEATURES)}: the manifest was "
            "written by another version; re-export the ensemble"
        )
    unknown = set(fusion["outputs"]) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"fusion has unknown outputs {sorted(unknown)}")
    for name, model in fusion["outputs"].items():
        features = features_of(name)
        if model.get("features") != list(features):
            raise ValueError(
                f"fusion output {name!r} reads {model.get('features')}, not {list(features)}: "
                "re-export the ensemble"
            )
        sizes = dict.fromkeys(("coef", "mean", "scale"), len(features))
        if features == FEATURES:
            sizes |= dict.fromkeys(("square_center", "square_scale"), len(MEASURED_FEATURES))
        bad = [k for k, n in sizes.items() if len(np.atleast_1d(model.get(k, []))) != n]
        if bad or not np.isfinite(float(model.get("intercept", np.nan))):
            raise ValueError(f"fusion output {name!r} has malformed {bad or ['intercept']}")


def cross_fit(
    x: np.ndarray,
    y: np.ndarray,
    folds,
    fit: Callable[[np.ndarray, np.ndarray], object],
    predict: Callable[[object, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Out-of-fold predictions: rows of fold k are predicted by a model fitted on the other folds.

    Only labelled rows (finite y, finite x) of the other folds are used for fitting; every row of
    fold k (labelled or not) gets a prediction. A training set with one class predicts its
    prevalence; a ``fit`` that returns None (too few rows) leaves the fold NaN.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    folds = np.asarray(folds)
    out = np.full(len(y), np.nan)
    for k in np.unique(folds):
        test = folds == k
        train = ~test & np.isfinite(y) & np.all(np.isfinite(x.reshape(len(y), -1)), axis=1)
        if not train.any():
            continue
        if len(np.unique(y[train])) < 2:
            out[test] = y[train].mean()
            continue
        model = fit(x[train], y[train])
        if model is not None:
            out[test] = predict(model, x[test])
    return out


def fusion_oof(output: str, head_logit, measured, target, folds) -> np.ndarray:
    """One output's fusion cross-fitted over the folds: each fold scored by a fit on the others.

    The honest estimate of the shipped fusion, which is fitted on all out-of-fold rows.
    """
    return cross_fit(
        np.column_stack(_columns(head_logit, measured)),
        target,
        folds,
        lambda x, y: fit_output(output, x[:, 0], x[:, 1:], y),
        lambda model, x: apply_output(model, x[:, 0], x[:, 1:]),
    )


# Out-of-fold table columns (training writes them, export and evaluation read them).
MEASURED_COLUMNS = tuple(f"seg_{m}" for m in MEASUREMENTS)
_NUMERIC = {
    *MEASURED_COLUMNS,
    "malignancy_logit",
    "label",
    *(f"{a}_{s}" for a in ATTRIBUTES for s in ("prob", "target")),
}


def oof_fusion_inputs(table: dict) -> tuple[dict, np.ndarray, dict] | None:
    """(head logits, measured features, targets) of an out-of-fold table of column arrays.

    None when the table lacks the measured columns (written by an older version).
    """
    if not set(MEASURED_COLUMNS) <= table.keys():
        return None
    col = {k: np.asarray(v, dtype=float) for k, v in table.items() if k in _NUMERIC}
    measured = measured_features({m: col[f"seg_{m}"] for m in MEASUREMENTS})
    heads = {a: logit(col[f"{a}_prob"]) for a in ATTRIBUTES if f"{a}_prob" in col}
    if "malignancy_logit" in col:
        heads["malignancy"] = col["malignancy_logit"]
    targets = {a: col[f"{a}_target"] for a in ATTRIBUTES if f"{a}_target" in col}
    if "label" in col:
        targets[MALIGNANCY_PROBABILITY] = col["label"]
    return heads, measured, targets


def logit(p) -> np.ndarray:
    """Inverse sigmoid, clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))
