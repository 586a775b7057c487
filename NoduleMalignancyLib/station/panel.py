"""A nodule's result as the station's results panel: the answer first, then sections of rows.

Why from the schema: every row is a field of ``core/result_schema.py`` with the schema's label,
unit and precision, read from :meth:`NoduleResult.summary` (the same dict ``result.json``
holds), so the panel says what the CSV, the table and the reports say, in the same words and
to the same 0.1 mm (docs/DESIGN.md §10, §15). A new result field is one line in the schema;
the panel shows it in its group's section. No ``slicer``, no trame: tests read the panel as a
dict.

The answer's tier (``core/scope/assessment.py``) decides what leads: *not assessed*, the reason and
no headline malignancy nor Lung-RADS (their sections are marked ``withheld``: the page shows
them only after an explicit "show anyway"); *flagged*, the warnings in words above the
numbers; *assessed*, the malignancy with its spread. Then the compact part (Lung-RADS with its
reasons, the size in mm), then the details (collapsed on the page).

With a prior CT open, a nodule compared with it shows the Lung-RADS of a follow-up screen
(:func:`with_followup`: the category, its reasons and the behaviour since the prior, as the
exam gives them) instead of the baseline one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..core.model.similar import SUSPICIOUS_ABOVE
from ..core.nodule.explanation import PARTS
from ..core.result_schema import GROUP_TITLES, PANEL, fields_for, round_half_up, shown
from ..core.scope.assessment import ASSESSED, LABELS, NOT_ASSESSED, WITHHELD_GROUPS

__all__ = [
    "COMPACT_GROUPS",
    "ensemble_range",
    "input_panel",
    "result_panel",
    "similar_panel",
    "with_followup",
]

# Groups shown above the sections (the answer and its warnings), not as rows.
_HEADLINE_GROUPS = ("assessment", "malignancy", "scope")
# Sections always open on the page; the others are details, collapsed.
COMPACT_GROUPS = ("lung_rads", "size")
# Notes that keep two different questions apart (issue 29 item 2).
_NOTES = {
    "lung_rads": "a suggestion: the reader decides",
    "malignancy_score": "what LIDC readers would rate (1-5): not the probability above",
}


# A series UID is shown by its last characters (its tail tells series apart; the head is the
# issuer's root, the same for a whole archive); the page shows the full one on hover.
UID_SHOWN = 12


def input_panel(identity: Mapping[str, str]) -> dict:
    """Whose CT is shown: ``{"patient_id", "study_date", "series_uid", "series_uid_short",
    "known"}``; the study date as YYYY-MM-DD, "" where the file does not say (``known``:
    whether anything is). Why: a reader must see which patient and series they read before
    they read it (issue 28: a folder holding two patients' series gave the other's answer)."""
    uid = str(identity.get("series_uid") or "")
    date = str(identity.get("study_date") or "")
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    patient = str(identity.get("patient_id") or "")
    return {
        "patient_id": patient,
        "study_date": date,
        "series_uid": uid,
        "series_uid_short": uid if len(uid) <= UID_SHOWN + 1 else f"…{uid[-UID_SHOWN:]}",
        "known": bool(uid or date or patient),
    }


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
        if f.name == "lung_rads_solid_mean_diameter_mm" and summary.get(
            "lung_rads_texture_class"
        ) not in (None, "part-solid"):  # Lung-RADS uses it for part-solid only: beside a
            continue  # solid nodule's mean diameter it read as a second, different size
        value = summary[f.name]
        if f.kind == "list":  # one row, one item a line
            if value:
                rows.append(
                    _row(f.name, f.label, list(value), "\n".join(map(str, value)), items=True)
                )
        elif value not in (None, ""):
            wording = summary.get(f"{f.name.removesuffix('_score')}_wording", "")
            note = _NOTES.get(f.name, str(wording))
            if wording and f.name in _NOTES:
                note = f"{wording}; {note}"
            if f.name == "lung_rads" and summary.get("lung_rads_behavior"):  # a follow-up
                note = f"{summary['lung_rads_screen']}: {summary['lung_rads_behavior']}; {note}"
            rows.append(_row(f.name, f.label, value, shown(f.name, value), note))
    return rows


def with_followup(summary: Mapping, followup) -> dict:
    """``summary`` with the Lung-RADS of a follow-up screen (``followup``: the nodule's
    core/clinical/lung_rads.LungRadsSuggestion after core/clinical/lung_rads_followup.py; ``None``: unchanged)
    instead of the baseline's: the category, its reasons (the change since the prior among
    them), the 4X features, the screen and the behaviour (new, growing, slow growth, stable,
    decreased), which the Lung-RADS row's note says."""
    if followup is None:
        return dict(summary)
    return {
        **summary,
        "lung_rads": followup.category,
        "lung_rads_reasons": list(followup.reasons),
        "lung_rads_supports_4x": list(followup.supports_4x),
        "lung_rads_screen": followup.screen,
        "lung_rads_behavior": followup.behavior,
    }


# What the panel shows of a not-assessed point only on "show anyway": every number (issue 29),
# the surfaces' withheld groups and the outline's size, attributes and composition too (a
# volume of the aorta beside the reason would read as a nodule's).
PANEL_WITHHELD_GROUPS = (*WITHHELD_GROUPS, "size", "attributes", "composition")


def _sections(summary: Mapping, not_assessed: bool) -> list[dict]:
    sections = []
    for group, title in GROUP_TITLES.items():
        if group in _HEADLINE_GROUPS or group == "similar":  # its own block: similar_panel
            continue
        rows = _field_rows(summary, group)
        if group == "explanation":  # the parts first, then their sum, then the network's own
            order = [f"malignancy_logit_{p}" for p in PARTS] + ["malignancy_logit"]
            rows.sort(key=lambda r: order.index(r["key"]) if r["key"] in order else len(order))
        if group == "attributes":  # the LIDC malignancy rating, apart from the probability
            rows.sort(key=lambda r: r["key"] != "malignancy_score")
        withheld = not_assessed and (
            group in PANEL_WITHHELD_GROUPS or any(r["key"] == "malignancy_score" for r in rows)
        )
        if group == "lung_rads" and summary.get("lung_rads_screen"):  # with_followup
            title = "Lung-RADS (suggested, " + str(summary["lung_rads_screen"]) + ")"
        sections.append(
            {
                "title": title,
                "group": group,
                "rows": rows,
                "compact": group in COMPACT_GROUPS,
                "withheld": withheld,
            }
        )
    compact = [s for s in sections if s["compact"]]
    details = [s for s in sections if not s["compact"]]
    return [s for s in compact + details if s["rows"]]


def similar_panel(
    summary: Mapping, not_assessed: bool, thumbnail: Callable[[str], str] | None = None
) -> dict | None:
    """The similar LIDC nodules (core/model/similar.py) of a result, or None when it has none:
    ``{"title", "summary", "withheld", "neighbours": [{"nodule", "diameter_text",
    "rating", "rating_text", "suspicious", "distance", "thumbnail"}]}``.

    ``summary`` is the schema's ``similar_nodules_summary`` ("6 similar LIDC nodules: 4 rated
    suspicious"); each neighbour its LIDC name, mean reader diameter and mean reader malignancy
    rating (1-5: what the LIDC readers said of that nodule, not our probability). ``thumbnail``
    maps a name to an image address ("" none; files/lidc_thumbnails.py): without it the rows
    are text only. Withheld (behind "show anyway") when the point is not assessed, as the
    malignancy is."""
    neighbours = summary.get("similar_nodules") or []
    line = str(summary.get("similar_nodules_summary") or "")
    if not neighbours or not line:
        return None
    rows = []
    for n in neighbours:
        rating = float(n["malignancy_mean"])
        rows.append(
            {
                "nodule": str(n["nodule"]),
                "diameter_text": f"{round_half_up(float(n['diameter_mm']), 1)} mm",
                "rating": rating,
                "rating_text": str(round_half_up(rating, 1)),
                "suspicious": rating > SUSPICIOUS_ABOVE,
                "distance": float(n["distance"]),
                "thumbnail": thumbnail(str(n["nodule"])) if thumbnail else "",
            }
        )
    return {
        "title": GROUP_TITLES["similar"],
        "summary": line,
        "withheld": not_assessed,
        "neighbours": rows,
    }


def ensemble_range(folds: list[float]) -> str:
    """The spread of the ensemble as the range of its models' probabilities: "the 5 models of
    the ensemble: 12.3 % to 18.0 %", "all 5 models: > 99 %". Why a range, not "± SD": the
    review of issue 29 read "99.9 % ± 0.0 %" as certainty; a range says how far the models
    agree without a second statistic to learn."""
    low, high = (shown("malignancy_probability", v) for v in (min(folds), max(folds)))
    if low == high:
        return f"all {len(folds)} models of the ensemble: {low}"
    return f"the {len(folds)} models of the ensemble: {low} to {high}"


def result_panel(
    summary: Mapping, label: str = "", thumbnail: Callable[[str], str] | None = None
) -> dict:
    """The panel of one nodule: ``{"label", "assessment", "assessment_label", "reason",
    "answered", "malignancy_probability", "malignancy_sd", "headline", "spread", "warnings",
    "sections": [{"title", "group", "rows", "compact", "withheld"}]}``.

    ``headline`` is the malignancy when answered, the tier's words when not assessed (the
    malignancy then only in ``withheld_headline``). Each row is ``{"key", "label", "value",
    "text", "note", "items"}``: ``key`` the schema field, ``text`` what to show (with its
    unit), ``items`` whether it is a list (one item a line). Sections without rows are left
    out; the compact ones (Lung-RADS, size) come first. ``similar`` is :func:`similar_panel`
    (``thumbnail``: a neighbour's image address, e.g. ``files.lidc_thumbnails``).
    """
    p = float(summary["malignancy_probability"])
    sd = float(summary.get("malignancy_sd", 0.0))
    folds = summary.get("fold_malignancy_probabilities") or []
    codes = summary.get("warnings") or []
    messages = summary.get("warning_messages") or [""] * len(codes)
    tier = str(summary.get("assessment") or ASSESSED)
    not_assessed = tier == NOT_ASSESSED
    malignancy = f"Malignancy {shown('malignancy_probability', p)}"
    spread = ensemble_range(folds) if folds else f"± {shown('malignancy_sd', sd)}"
    return {
        "label": label,
        "assessment": tier,
        "assessment_label": LABELS.get(tier, tier),
        "reason": str(summary.get("assessment_reason") or ""),
        "answered": not not_assessed,
        "malignancy_probability": p,
        "malignancy_sd": sd,
        "headline": LABELS[NOT_ASSESSED] if not_assessed else malignancy,
        "withheld_headline": malignancy if not_assessed else "",
        "spread": spread,
        "warnings": [  # the code for scripts; the page shows the message
            {"code": str(c), "message": str(m) or str(c)}
            for c, m in zip(codes, messages, strict=True)
        ],
        "sections": _sections(summary, not_assessed),
        "similar": similar_panel(summary, not_assessed, thumbnail),
    }
