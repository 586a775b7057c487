"""A nodule's result as the station's results panel: plain sections of labelled rows.

Why generic: the panel is built from :meth:`NoduleResult.summary` (the same dict ``result.json``
holds), not from a fixed list of fields. The fields the panel knows get their own section and
wording (malignancy with its spread, the LIDC attributes, warnings, the explanation's logit
parts, docs/DESIGN.md §11 and §12); every other number the result carries lands in a generic
section under its own name, so a new result field shows up without touching the UI
(docs/DESIGN.md §15). No ``slicer``, no trame: tests read the panel as a dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..core.explanation import PARTS

__all__ = ["FIELD_TITLES", "format_value", "result_panel"]

# Titles and units of the fields the panel knows (the MRML table's wording, mrml/roles.py).
FIELD_TITLES: dict[str, tuple[str, str]] = {
    "volume_mm3": ("Volume", "mm³"),
    "diameter_mm": ("Diameter (longest axial)", "mm"),
    "short_axis_mm": ("Short axis", "mm"),
    "mean_diameter_mm": ("Mean diameter", "mm"),
    "mean_hu": ("Mean attenuation", "HU"),
    "calcified_fraction": ("Calcified fraction (≥ 200 HU)", ""),
    "elongation": ("Elongation (short / long axis)", ""),
    "compactness": ("Compactness", ""),
    "boundary_gradient_hu_per_mm": ("Margin sharpness", "HU/mm"),
    "boundary_contrast_hu": ("Boundary contrast", "HU"),
    "calcification_probability": ("Calcification probability", ""),
    "internal_structure_probability": ("Internal structure (not soft tissue)", ""),
    "malignancy_mil_logit": ("MIL logit (network, unfused)", ""),
    "context_passes": ("Network passes (context policy)", ""),
    "model_version": ("Model version", ""),
}
# Summary keys the panel shows in their own sections, or leaves out on purpose (technical).
_HEADLINE = ("malignancy_probability", "malignancy_sd", "fold_malignancy_probabilities")
_OWN_SECTIONS = ("scores", "wording", "warnings", "explanation", "point_lps")
_TECHNICAL = ("gates", "scope_figures", "timings_s")
_MEASURED = (
    "volume_mm3",
    "diameter_mm",
    "short_axis_mm",
    "mean_diameter_mm",
    "mean_hu",
    "calcified_fraction",
    "elongation",
    "compactness",
    "boundary_gradient_hu_per_mm",
    "boundary_contrast_hu",
)


def format_value(value: object, unit: str = "") -> str:
    """A number as the panel shows it: 3 significant figures (integers as they are)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            text = str(value)
        elif value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
            text = f"{value:.3g}"
        else:
            text = f"{value:.{max(0, 2 - int(math.floor(math.log10(abs(value) or 1))))}f}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(format_value(v) for v in value)
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def _title(key: str) -> tuple[str, str]:
    return FIELD_TITLES.get(key, (key.replace("_", " ").capitalize(), ""))


def _row(label: str, value: object, unit: str = "", note: str = "", key: str = "") -> dict:
    return {
        "key": key or label,
        "label": label,
        "value": value if isinstance(value, (int, float, str)) else format_value(value),
        "text": format_value(value, unit),
        "note": note,
    }


def _scalar(value: object) -> bool:
    return isinstance(value, (int, float, str, bool)) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
    )


def result_panel(summary: Mapping, label: str = "") -> dict:
    """The panel of one nodule: ``{"label", "malignancy_percent", "malignancy_sd_percent",
    "headline", "warnings", "sections": [{"title", "rows": [...]}]}``.

    Each row is ``{"key", "label", "value", "text", "note"}``: ``text`` is what to show,
    ``value`` the raw number. Sections without rows are left out.
    """
    p = float(summary["malignancy_probability"])
    sd = float(summary.get("malignancy_sd", 0.0))
    warnings = [
        {"code": str(w.get("code", "")), "message": str(w.get("message", ""))}
        for w in summary.get("warnings", [])
    ]
    sections = []

    scores, words = summary.get("scores", {}), summary.get("wording", {})
    sections.append(
        {
            "title": "Attributes (LIDC 1-5 scale)",
            "rows": [
                _row(name.capitalize(), score, note=str(words.get(name, "")), key=name)
                for name, score in scores.items()
            ],
        }
    )
    measured = [k for k in _MEASURED if k in summary]
    sections.append(
        {
            "title": "Measurements",
            "rows": [_row(_title(k)[0], summary[k], _title(k)[1], key=k) for k in measured],
        }
    )

    explanation = summary.get("explanation") or {}
    parts = dict(explanation.get("parts", {}))
    ordered = [p_ for p_ in PARTS if p_ in parts] + [p_ for p_ in parts if p_ not in PARTS]
    rows = [
        _row(part.replace("_", " ").capitalize(), float(parts[part]), key=f"logit_{part}")
        for part in ordered
    ]
    if "logit" in explanation:
        rows.append(
            _row(
                "Sum: malignancy logit",
                float(explanation["logit"]),
                note=f"sigmoid = {100 * float(explanation.get('probability', 0.0)):.1f} %",
                key="logit",
            )
        )
    sections.append({"title": "Explanation (logit parts, sum = logit)", "rows": rows})

    known = set(_HEADLINE) | set(_OWN_SECTIONS) | set(_TECHNICAL) | set(measured)
    other = [
        _row(_title(k)[0], v, _title(k)[1], key=k)
        for k, v in summary.items()
        if k not in known and _scalar(v)
    ]
    sections.append({"title": "Other outputs", "rows": other})
    for key, value in summary.items():  # any other group of numbers, one section each
        if key in known or _scalar(value) or not isinstance(value, Mapping):
            continue
        rows = [_row(_title(k)[0], v, key=f"{key}.{k}") for k, v in value.items() if _scalar(v)]
        sections.append({"title": _title(key)[0], "rows": rows})

    folds = summary.get("fold_malignancy_probabilities") or []
    return {
        "label": label,
        "malignancy_percent": round(100 * p, 1),
        "malignancy_sd_percent": round(100 * sd, 1),
        "headline": f"{100 * p:.1f} % (spread ± {100 * sd:.1f} % over {len(folds) or '?'} folds)",
        "folds_percent": [round(100 * float(f), 1) for f in folds],
        "warnings": warnings,
        "sections": [s for s in sections if s["rows"]],
    }
