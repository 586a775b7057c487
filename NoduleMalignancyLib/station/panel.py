"""A nodule's result as the station's results panel: plain sections of labelled rows.

Why from the schema: every row is a field of ``core/result_schema.py`` with the schema's label,
unit and precision, read from :meth:`NoduleResult.summary` (the same dict ``result.json``
holds), so the panel says what the CSV, the table and the reports say, in the same words and
to the same 0.1 mm (docs/DESIGN.md §10, §15). A new result field is one line in the schema;
the panel shows it in its group's section. No ``slicer``, no trame: tests read the panel as a
dict.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..core.explanation import PARTS
from ..core.result_schema import GROUP_TITLES, PANEL, fields_for, shown

__all__ = ["result_panel"]

# Groups shown above the sections (headline and warning boxes), not as rows.
_HEADLINE_GROUPS = ("malignancy", "scope")


def _row(
    key: str, label: str, value: object, text: str, note: str = "", items: bool = False
) -> dict:
    return {"key": key, "label": label, "value": value, "text": text, "note": note, "items": items}


def _field_rows(summary: Mapping, group: str) -> list[dict]:
    """The group's panel fields that the summary holds, one row each (lists: one per item)."""
    rows = []
    for f in fields_for(PANEL):
        if f.group != group or f.name not in summary or f.name.endswith("_wording"):
            continue
        value = summary[f.name]
        if f.kind == "list":  # one row, one item a line
            if value:
                rows.append(
                    _row(f.name, f.label, list(value), "\n".join(map(str, value)), items=True)
                )
        elif value not in (None, ""):
            wording = summary.get(f"{f.name.removesuffix('_score')}_wording", "")
            rows.append(_row(f.name, f.label, value, shown(f.name, value), str(wording)))
    return rows


def result_panel(summary: Mapping, label: str = "") -> dict:
    """The panel of one nodule: ``{"label", "malignancy_probability", "malignancy_sd",
    "headline", "spread", "warnings", "sections": [{"title", "rows": [...]}]}``.

    Each row is ``{"key", "label", "value", "text", "note", "items"}``: ``key`` the schema
    field, ``text`` what to show (with its unit), ``value`` the stored value, ``items`` whether
    it is a list (one item a line). Sections without rows are left out.
    """
    p = float(summary["malignancy_probability"])
    sd = float(summary.get("malignancy_sd", 0.0))
    folds = summary.get("fold_malignancy_probabilities") or []
    codes = summary.get("warnings") or []
    messages = summary.get("warning_messages") or [""] * len(codes)
    sections = []
    for group, title in GROUP_TITLES.items():
        if group in _HEADLINE_GROUPS:
            continue
        rows = _field_rows(summary, group)
        if group == "explanation":  # the parts first, then their sum, then the network's own
            order = [f"malignancy_logit_{p}" for p in PARTS] + ["malignancy_logit"]
            rows.sort(key=lambda r: order.index(r["key"]) if r["key"] in order else len(order))
            explanation = summary.get("explanation") or {}
            for row in rows:
                if row["key"] == "malignancy_logit" and "probability" in explanation:
                    sigmoid = shown("malignancy_probability", explanation["probability"])
                    row["note"] = f"sigmoid = {sigmoid}"
        if group == "lung_rads":
            for row in rows:
                if row["key"] == "lung_rads":
                    row["note"] = "a suggestion: the reader decides"
        sections.append({"title": title, "rows": rows})
    return {
        "label": label,
        "malignancy_probability": p,
        "malignancy_sd": sd,
        "headline": f"Malignancy {shown('malignancy_probability', p)}",
        "spread": (
            f"spread ± {shown('malignancy_sd', sd)} (SD over {len(folds) or '?'} folds"
            + (f": {', '.join(shown('malignancy_probability', f) for f in folds)}" if folds else "")
            + ")"
        ),
        "warnings": [
            {"code": str(c), "message": str(m)} for c, m in zip(codes, messages, strict=True)
        ],
        "sections": [s for s in sections if s["rows"]],
    }
