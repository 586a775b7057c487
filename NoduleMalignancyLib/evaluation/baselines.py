"""Reference points the model has to beat, all fitted out of fold on the model's own folds.

* size only: on LIDC the readers' malignancy score follows nodule size closely, so a logistic
  regression on log(mean reader diameter) is the baseline any image model must clear;
* constant predictor: the training folds' mean of each attribute, the floor for attribute MAE;
* human agreement: how far one reader is from the mean of the other readers of the same nodule;
* Platt scaling, cross-fitted so that no nodule's prediction is calibrated on itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.config import ORDINAL_ATTRIBUTES
from ..core.model.fusion import cross_fit, fit_logistic, logit
from ..core.model.metrics import mae_1to5
from ..core.nodule.attributes import reader_ratings
from ..files.csv_cells import read_csv


def _logistic_fit(x, y):
    return fit_logistic(np.asarray(x).reshape(len(y), -1), y)


def _logistic_predict(model, x):
    coef, intercept, mean, scale = model
    x = np.asarray(x).reshape(len(x), -1)
    return 1.0 / (1.0 + np.exp(-(((x - mean) / scale) @ coef + intercept)))


def logistic_oof(x, label, folds) -> np.ndarray:
    """Out-of-fold probabilities of a logistic regression on the features ``x`` (N or N x F)."""
    return cross_fit(x, label, folds, _logistic_fit, _logistic_predict)


def size_baseline_oof(diameter_mm, label, folds) -> np.ndarray:
    """Out-of-fold P(malignant) from log(mean reader diameter) alone (1-parameter logistic)."""
    return logistic_oof(np.log(np.maximum(np.asarray(diameter_mm, dtype=float), 0.1)), label, folds)


def platt_oof(prob, label, folds) -> np.ndarray:
    """Platt scaling (logistic on the logit) of a probability, cross-fitted over the folds."""
    return logistic_oof(logit(prob), label, folds)


def constant_predictor_mae(target, folds) -> float:
    """MAE (1-5 scale) of predicting the other folds' mean target for every nodule of a fold."""
    t = np.asarray(target, dtype=float)
    folds = np.asarray(folds)
    pred = np.full(len(t), np.nan)
    for k in np.unique(folds):
        test = folds == k
        train = ~test & np.isfinite(t)
        if train.any():
            pred[test] = t[train].mean()
    return mae_1to5(pred, t)


def nodule_key(patient_id, nodule_id) -> tuple[str, str]:
    """(patient, nodule) key that matches across tables ('3.0' and '3' are the same nodule)."""
    try:
        nodule = str(int(float(nodule_id)))
    except (TypeError, ValueError):
        nodule = str(nodule_id).strip()
    return str(patient_id).strip(), nodule


def read_reader_table(path) -> list[dict]:
    """Rows of reader_labels.csv as dicts of strings."""
    return read_csv(Path(path))


def human_agreement(
    rows: list[dict], attributes: tuple[str, ...] = ORDINAL_ATTRIBUTES, keys: set | None = None
) -> dict:
    """Per attribute: MAE of one reader against the mean of the other readers (1-5 scale).

    Nodules with >= 2 readers; the leave-one-out errors are averaged over the readers of a
    nodule, then over nodules, so every nodule counts once as in the model's MAE. ``keys``
    restricts to ``nodule_key`` pairs, e.g. the nodules that were evaluated.
    """
    out = {}
    for attr in attributes:
        per_nodule, n_pairs = [], 0
        for row in rows:
            if keys is not None and nodule_key(row["patient_id"], row["nodule_id"]) not in keys:
                continue
            r = reader_ratings(row, attr)
            if len(r) < 2:
                continue
            others = (r.sum() - r) / (len(r) - 1)
            per_nodule.append(np.abs(r - others).mean())
            n_pairs += len(r)
        out[attr] = {
            "mae": float(np.mean(per_nodule)) if per_nodule else float("nan"),
            "n_nodules": len(per_nodule),
            "n_reader_ratings": n_pairs,
        }
    return out
