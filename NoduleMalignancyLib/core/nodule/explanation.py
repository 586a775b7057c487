"""The shown malignancy, explained exactly: its logit as a sum of named parts.

The fused malignancy model of every fold is a logistic model on the malignancy head's logit
(the network's MIL bag logit) and the measurements of that fold's segmentation
(:mod:`.fusion`). It is linear in its inputs, so the mean of the fold logits is a sum:

    mean fold logit = baseline + size + density + shape + margin + image evidence

* ``image evidence`` = a * z, with z the fold-mean MIL logit and a the image coefficient (the
  fold models share one fusion model, so a is one number). Its reference is z = 0, where the
  network's evidence is neutral; the evidence maps scaled by a add up to exactly this part.
* each measurement group = sum over its features of coef * (x - mean) / scale: its reference is
  the average nodule of the fitting data (the standardisation mean), as in a linear SHAP.
* ``baseline`` = the rest (intercept and the image term's centring): the logit of an average
  nodule with neutral image evidence.

The shown ``malignancy_probability`` is ``sigmoid(logit)`` of this explanation, on every
surface: one number, and the one explained. The logit is calibrated by a slope fitted out of
fold (:func:`.fusion.calibration_slope`); a slope keeps the sum exact, since every part (and the
image coefficient, so the evidence maps) is scaled by it (docs/DESIGN.md §11).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.fusion import LINEAR_FEATURES, MALIGNANCY_PROBABILITY, calibration_slope

__all__ = ["FEATURE_GROUPS", "PARTS", "MalignancyExplanation", "explain_malignancy"]

# What a radiologist calls each measurement feature.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "size": ("log_volume_mm3", "log_diameter_mm"),
    "density": ("mean_hu", "calcified_fraction"),
    "shape": ("elongation", "log_compactness"),
    "margin": ("boundary_gradient_hu_per_mm", "boundary_contrast_hu"),
}
PARTS = ("baseline", *FEATURE_GROUPS, "image_evidence")


@dataclass(frozen=True)
class MalignancyExplanation:
    """The parts of the mean fold logit (they sum to ``logit`` exactly)."""

    parts: dict[str, float]  # PARTS -> logit units
    logit: float  # mean of the fold logits of the fused malignancy model
    mil_logit: float  # fold-mean MIL bag logit (what the raw evidence maps add up to)
    image_coefficient: float  # a: image evidence part = a * mil_logit; evidence maps x a

    @property
    def probability(self) -> float:
        """sigmoid(logit): the shown malignancy probability, the one this explanation explains."""
        return float(1.0 / (1.0 + np.exp(-self.logit)))

    def summary(self) -> dict:
        return {
            "explains": "calibrated mean fold logit of the fused malignancy model",
            "logit": self.logit,
            "probability": self.probability,
            "parts": dict(self.parts),
            "mil_logit": self.mil_logit,
            "image_coefficient": self.image_coefficient,
        }


def explain_malignancy(
    fusion: dict | None, head_logits: np.ndarray, measured: np.ndarray
) -> MalignancyExplanation:
    """Decompose the mean fold logit of the fused malignancy probability.

    :param fusion: the manifest's fusion entry (``None``: the raw head, all image evidence).
    :param head_logits: (K,) each fold's malignancy head (MIL bag) logit.
    :param measured: (K, n_measured) each fold's measurement features (``measured_features``).
    """
    z = np.atleast_1d(np.asarray(head_logits, dtype=float))
    m = np.asarray(measured, dtype=float).reshape(len(z), -1)
    mil = float(z.mean())
    model = (fusion or {}).get("outputs", {}).get(MALIGNANCY_PROBABILITY)
    slope = calibration_slope(fusion)
    if not model:
        parts = dict.fromkeys(PARTS, 0.0) | {"image_evidence": slope * mil}
        return MalignancyExplanation(parts, slope * mil, mil, slope)
    if model.get("square_center") is not None:
        raise ValueError("the malignancy fusion model is not linear; it cannot be decomposed")
    coef = np.asarray(model["coef"], dtype=float)
    mean = np.asarray(model["mean"], dtype=float)
    scale = np.asarray(model["scale"], dtype=float)
    x = np.column_stack([z, m]).mean(0)  # linear: the mean of the fold logits is the logit at
    weight = slope * coef / scale  # the fold-mean inputs; calibrated by the slope
    index = {name: i for i, name in enumerate(LINEAR_FEATURES)}
    head = index["head_logit"]
    parts = {"image_evidence": float(weight[head] * x[head])}
    for group, features in FEATURE_GROUPS.items():
        cols = [index[f] for f in features]
        parts[group] = float((weight[cols] * (x[cols] - mean[cols])).sum())
    intercept = slope * float(model["intercept"])
    parts["baseline"] = float(intercept - weight[head] * mean[head])
    logit = float(intercept + (weight * (x - mean)).sum())
    return MalignancyExplanation({p: parts[p] for p in PARTS}, logit, mil, float(weight[head]))
