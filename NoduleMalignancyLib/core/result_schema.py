"""Every result field named once: its name, unit, meaning and how a person reads it.

Why one table: the same number used to travel under several names and formats (the MRML table
said ``malignancy_percent`` where the CSV said ``malignancy_probability``; ``warnings`` held
words in one and codes in the other; the station showed one diameter as 5.70 and 5.75 mm).
Every surface now takes its names, labels, units and precision from :data:`FIELDS`: the
``predict`` CSV, ``result.json``, the MRML results table, the station panel, the batch report,
the report image, the CLI print, the DICOM SR's private concepts and the LUNA25 log
(docs/DESIGN.md §10). A surface may show fewer fields than it could; it may not show a field the
schema does not name (``Testing/test_result_schema.py``).

Conventions: a field's value is stored (CSV, ``result.json``) in its ``unit``; probabilities and
fractions are stored from 0 to 1 and shown to a person as a percentage (``percent``). Every
shown number is rounded half up at ``shown_decimals`` (as Lung-RADS rounds sizes, so the panel
and the Lung-RADS reasons print the same 0.1 mm). Lists are stored joined by
:data:`CODE_SEPARATOR` (codes) or :data:`TEXT_SEPARATOR` (sentences) in a CSV cell. numpy and
the standard library only: the core, the files floor and the station all read it.

A new field is one :data:`FIELDS` entry (the surfaces that list it, its panel group) plus its
value in ``NoduleResult.values()``; e.g. an answer tier ``assessment`` (text, CSV/JSON/table/
panel) needs no surface code beyond what a surface does with its group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from .config import ORDINAL_ATTRIBUTES
from .nodule.explanation import PARTS

__all__ = [
    "CODE_SEPARATOR",
    "LIDC_SCALE",
    "FIELDS",
    "GROUP_TITLES",
    "RENAMED",
    "SURFACES",
    "TEXT_SEPARATOR",
    "ResultField",
    "csv_cell",
    "csv_row",
    "field",
    "fields_for",
    "labelled",
    "round_half_up",
    "score_field",
    "shown",
    "shown_number",
    "unknown_names",
]

# The surfaces that list fields by name (the others use labels and formats only).
CSV = "csv"  # the predict CSV (batch/predict.py)
JSON = "json"  # result.json (NoduleResult.summary)
TABLE = "table"  # the MRML results table (mrml/nodes.py)
PANEL = "panel"  # the station's results panel (station/panel.py)
REPORT = "report"  # the batch review page (files/batch_report.py), read from the CSV
EXAM = "exam"  # exam.json of the exam command (core/clinical/exam.py): the exam and its nodules
SURFACES = (CSV, JSON, TABLE, PANEL, REPORT, EXAM)

LIDC_SCALE = "LIDC 1-5"  # the unit of the attribute scores: the readers' rating scale
CODE_SEPARATOR = ";"  # warnings: codes, as core/scope/validation.py names them
TEXT_SEPARATOR = " | "  # warning_messages: the sentences (they may hold ';' and ',')

# Panel sections (and their order); a field's ``group`` names one.
GROUP_TITLES: dict[str, str] = {
    "input": "Input",
    "assessment": "Assessment",
    "malignancy": "Malignancy",
    "scope": "Warnings",
    "lung_rads": "Lung-RADS (suggested, baseline screen)",
    "size": "Size and attenuation",
    "attributes": "LIDC attributes (expected reader rating, 1-5)",
    "composition": "Calcification and composition",
    "explanation": "Why: the malignancy in parts (log-odds: + raises it, − lowers it; they add up)",
    "similar": "Similar LIDC nodules (training set, reader ratings)",
    "provenance": "Model and input",
    "status": "Status",
}


@dataclass(frozen=True)
class ResultField:
    """One result field. ``unit`` is the stored value's unit ("" for text, "1" for a fraction
    or probability, stored 0-1); ``percent`` shows it x 100 with "%"."""

    name: str
    label: str
    unit: str
    meaning: str
    group: str
    surfaces: frozenset[str]
    kind: str = "number"  # number, text, list (of codes or sentences), detail (JSON only)
    decimals: int = 4  # in a CSV cell (stored unit)
    shown_decimals: int = 1  # shown to a person (shown unit)
    percent: bool = False
    optional: bool = False  # may be empty on a scored row
    # Shown unit: below the first or above the second the field is shown as "< first" or
    # "> second" (a probability's last digits beyond 1-99 % are not what the calibration
    # measured, and "99.9 %" read as certainty in the review of issue 29).
    shown_bounds: tuple[float | None, float | None] = (None, None)
    # A text field of codes: each code's words, as a person reads it (the CSV stores the code).
    words: tuple[tuple[str, str], ...] = ()

    @property
    def shown_unit(self) -> str:
        """The unit a person reads beside the number ("" for text, plain ratios and a rating
        scale, which its label or section names)."""
        if self.percent:
            return "%"
        if self.unit == "logit":  # the word a reader knows from odds ratios
            return "log-odds"
        return "" if self.unit in ("", "1", LIDC_SCALE) else self.unit

    @property
    def heading(self) -> str:
        """The label with its unit or scale, for a column header: "Volume (mm³)"."""
        unit = self.shown_unit or (self.unit if self.unit == LIDC_SCALE else "")
        return f"{self.label} ({unit})" if unit and f"({unit})" not in self.label else self.label


def round_half_up(value: float, decimals: int) -> Decimal:
    """``value`` to ``decimals`` places, halves up, on its shortest repr (5.75 -> 5.8, 5.85 ->
    5.9), as a reader rounds a shown number and as Lung-RADS rounds sizes (core/clinical/lung_rads.py)."""
    return Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)


def _sep(f: ResultField) -> str:
    return TEXT_SEPARATOR if f.name.endswith("messages") or "reasons" in f.name else CODE_SEPARATOR


def shown(name: str, value: object, with_unit: bool = True) -> str:
    """The field's value as a person reads it: "77.6 %", "5.8 mm", "4A", "" for no value."""
    f = field(name)
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)):
        return _sep(f).join(str(v) for v in value)
    if f.kind == "text" or isinstance(value, str):
        return dict(f.words).get(str(value), str(value))
    number = float(value) * (100.0 if f.percent else 1.0)
    if not math.isfinite(number):
        return "n/a"
    low, high = f.shown_bounds
    unit = f.shown_unit
    for sign, bound in (("<", low), (">", high)):
        if bound is not None and (number < bound if sign == "<" else number > bound):
            text = f"{sign} {bound:g}"
            return f"{text} {unit}" if with_unit and unit else text
    text = str(round_half_up(number, f.shown_decimals))
    if f.unit == "logit" and number >= 0:
        text = "+" + text
    return f"{text} {unit}" if with_unit and unit else text


def labelled(name: str, value: object) -> str:
    """ "Label value unit", as a sentence-like line shows one field: "Volume 123.4 mm³"."""
    return f"{field(name).label} {shown(name, value)}"


def shown_number(name: str, value: float) -> float:
    """The number a person reads, in the shown unit (the MRML table stores it so)."""
    f = field(name)
    return float(round_half_up(float(value) * (100.0 if f.percent else 1.0), f.shown_decimals))


def csv_cell(name: str, value: object) -> str:
    """The field's value as a CSV cell in its stored unit ("" for no value)."""
    f = field(name)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return _sep(f).join(str(v) for v in value)
    if f.kind == "text" or isinstance(value, str):
        return str(value)
    return f"{float(value):.{f.decimals}f}"


def csv_row(values: Mapping[str, object]) -> dict[str, str]:
    """The CSV cells of a result's values (every CSV field the values hold)."""
    return {f.name: csv_cell(f.name, values[f.name]) for f in fields_for(CSV) if f.name in values}


def _f(name, label, unit, meaning, group, surfaces, **kw) -> ResultField:
    return ResultField(name, label, unit, meaning, group, frozenset(surfaces), **kw)


ALL = (CSV, JSON, TABLE, PANEL)
SHOWN = (JSON, TABLE, PANEL)


def score_field(attribute: str) -> str:
    """The field of an attribute's 1-5 score: ``malignancy_score`` for malignancy, so it is not
    mistaken for the malignancy probability; the attribute's own name otherwise."""
    return "malignancy_score" if attribute == "malignancy" else attribute


_ATTRIBUTE_FIELDS = tuple(
    item
    for a in ORDINAL_ATTRIBUTES
    for item in (
        _f(
            score_field(a),
            "Malignancy rating" if a == "malignancy" else a.capitalize(),
            LIDC_SCALE,
            f"the readers' expected {a} rating on the LIDC 1-5 scale (fold mean)"
            + (
                ": a different question from the malignancy probability"
                if a == "malignancy"
                else ""
            ),
            "attributes",
            (*ALL, REPORT),
            shown_decimals=2,
        ),
        _f(
            f"{a}_wording",
            f"{a.capitalize()} (LIDC wording)",
            "",
            f"the LIDC wording of the rating the {a} score rounds to",
            "attributes",
            SHOWN,
            kind="text",
        ),
    )
)
_PART_FIELDS = tuple(
    _f(
        f"malignancy_logit_{part}",
        f"Part: {part.replace('_', ' ')}",
        "logit",
        f"the {part.replace('_', ' ')} part of the malignancy logit (docs/DESIGN.md §11)",
        "explanation",
        ALL,
        decimals=5,
        shown_decimals=2,
    )
    for part in PARTS
)

# In the predict CSV's column order where a field is a CSV column.
FIELDS: tuple[ResultField, ...] = (
    _f("id", "Id", "", "the manifest row's id", "input", (CSV, REPORT), kind="text"),
    _f(
        "point",
        "Point",
        "",
        "the point's label in the markups list",
        "input",
        (TABLE,),
        kind="text",
    ),
    _f(
        "point_id",
        "Control point ID",
        "",
        "the markups control point's ID",
        "input",
        (TABLE,),
        kind="text",
    ),
    *(
        _f(
            c,
            c.upper(),
            "mm",
            f"the point's {c.upper()} coordinate (Slicer RAS)",
            "input",
            (TABLE,),
            shown_decimals=2,
        )
        for c in ("r", "a", "s")
    ),
    # The input read: series, patient, study date (files/ct_input.py; empty when not DICOM);
    # the table's from the volume node (mrml/identity.py), after the point's columns: a row
    # must not start with empty cells (a scene's tab-separated table drops them on reload).
    _f(
        "series_uid",
        "Series instance UID",
        "",
        "the DICOM series analyzed",
        "input",
        (CSV, JSON, TABLE),
        kind="text",
        optional=True,
    ),
    _f(
        "patient_id",
        "Patient ID",
        "",
        "the DICOM patient ID",
        "input",
        (CSV, JSON, TABLE),
        kind="text",
        optional=True,
    ),
    _f(
        "study_date",
        "Study date",
        "",
        "the DICOM study date (YYYYMMDD)",
        "input",
        (CSV, JSON, TABLE),
        kind="text",
        optional=True,
    ),
    _f(
        "point_lps",
        "Point (world LPS)",
        "mm",
        "the analyzed point, world LPS",
        "input",
        (JSON,),
        kind="detail",
    ),
    # The answer's tier (core/scope/assessment.py): whether the numbers below are an answer.
    _f(
        "assessment",
        "Assessment",
        "",
        "refused, not_assessed (probably not a lung nodule: no malignancy, no Lung-RADS), "
        "flagged (numbers with a warning) or assessed (core/scope/assessment.py)",
        "assessment",
        (*ALL, REPORT),
        kind="text",
        words=(
            ("refused", "Refused"),
            ("not_assessed", "Not assessed"),
            ("flagged", "Assessed, with a warning"),
            ("assessed", "Assessed"),
        ),
    ),
    _f(
        "assessment_reason",
        "Why",
        "",
        "the assessment's reason in plain words (empty when assessed)",
        "assessment",
        (*ALL, REPORT),
        kind="text",
    ),
    _f(
        "malignancy_probability",
        "Malignancy",
        "1",
        "probability that the nodule is malignant: sigmoid of the mean fold logit of the fused "
        "model, the number the explanation decomposes (docs/DESIGN.md §11); shown as '< 1 %' or "
        "'> 99 %' beyond those",
        "malignancy",
        (*ALL, REPORT),
        decimals=6,
        percent=True,
        shown_bounds=(1.0, 99.0),
    ),
    _f(
        "malignancy_sd",
        "Malignancy spread (SD over folds)",
        "1",
        "standard deviation of the fold probabilities (shown in percentage points; '< 0.1 %' "
        "when it rounds to nothing)",
        "malignancy",
        (*ALL, REPORT),
        decimals=6,
        percent=True,
        shown_bounds=(0.1, None),
    ),
    _f(
        "fold_malignancy_probabilities",
        "Malignancy per fold",
        "1",
        "each fold model's fused probability",
        "malignancy",
        (JSON,),
        kind="detail",
    ),
    *(f for f in _ATTRIBUTE_FIELDS if f.name != "malignancy_score"),
    *(f for f in _ATTRIBUTE_FIELDS if f.name == "malignancy_score"),
    _f(
        "calcification_probability",
        "Calcification",
        "1",
        "probability that readers would see calcification (fold mean)",
        "composition",
        (*ALL, REPORT),
        decimals=6,
        percent=True,
    ),
    _f(
        "internal_structure_probability",
        "Internal structure other than soft tissue",
        "1",
        "probability of fluid, fat or air inside the nodule (fold mean)",
        "composition",
        (*ALL, REPORT),
        decimals=6,
        percent=True,
    ),
    _f(
        "volume_mm3",
        "Volume",
        "mm³",
        "volume of the segmentation",
        "size",
        (*ALL, REPORT),
        decimals=2,
    ),
    _f(
        "diameter_mm",
        "Longest axial diameter",
        "mm",
        "longest diameter in an axial slice",
        "size",
        (*ALL, REPORT),
        decimals=2,
    ),
    _f(
        "short_axis_mm",
        "Short axis",
        "mm",
        "longest diameter perpendicular to it, same slice",
        "size",
        ALL,
        decimals=2,
    ),
    _f(
        "mean_diameter_mm",
        "Mean diameter",
        "mm",
        "mean of the long and short axial axes (the Lung-RADS size)",
        "size",
        ALL,
        decimals=2,
    ),
    _f(
        "mean_hu",
        "Mean attenuation",
        "HU",
        "mean HU inside the segmentation",
        "size",
        ALL,
        decimals=1,
        shown_decimals=0,
    ),
    _f(
        "calcified_fraction",
        "Calcified voxels (≥ 200 HU)",
        "1",
        "fraction of the segmented voxels at or above 200 HU",
        "composition",
        ALL,
        percent=True,
    ),
    _f(
        "elongation",
        "Elongation (short / long axis)",
        "1",
        "short axis / longest axial diameter",
        "size",
        (JSON, PANEL),
        shown_decimals=2,
    ),
    _f(
        "compactness",
        "Compactness (1 = sphere)",
        "1",
        "36 pi V² / A³ of the voxel surface",
        "size",
        (JSON, PANEL),
        shown_decimals=2,
    ),
    _f(
        "boundary_gradient_hu_per_mm",
        "Margin sharpness",
        "HU/mm",
        "mean HU gradient on the segmentation's boundary",
        "size",
        (JSON, PANEL),
        shown_decimals=0,
    ),
    _f(
        "boundary_contrast_hu",
        "Boundary contrast",
        "HU",
        "mean HU inside minus a 2-voxel shell outside",
        "size",
        (JSON, PANEL),
        shown_decimals=0,
    ),
    _f(
        "malignancy_mil_logit",
        "Image evidence before fusion",
        "logit",
        "the network's fold-mean MIL bag logit (unfused)",
        "explanation",
        ALL,
        decimals=5,
        shown_decimals=2,
    ),
    _f(
        "malignancy_logit",
        "Sum of the parts (the malignancy's log-odds)",
        "logit",
        "mean fold logit of the fused malignancy model (docs/DESIGN.md §11)",
        "explanation",
        ALL,
        decimals=5,
        shown_decimals=2,
    ),
    *_PART_FIELDS,
    _f(
        "explanation",
        "Explanation",
        "",
        "the explanation record (docs/DESIGN.md §11)",
        "explanation",
        (JSON,),
        kind="detail",
    ),
    _f(
        "lung_rads",
        "Lung-RADS category",
        "",
        "suggested Lung-RADS v2022 category: baseline; in exam.json with a prior, follow-up",
        "lung_rads",
        (*ALL, REPORT),
        kind="text",
    ),
    _f(
        "lung_rads_texture_class",
        "Texture class",
        "",
        "solid, part-solid or ground-glass, from the texture score",
        "lung_rads",
        (JSON, PANEL),
        kind="text",
    ),
    _f(
        "lung_rads_solid_mean_diameter_mm",
        "Solid component mean diameter",
        "mm",
        "mean axial diameter of the largest part >= -300 HU (used for part-solid)",
        "lung_rads",
        ALL,
        decimals=1,
    ),
    _f(
        "lung_rads_reasons",
        "Reasons",
        "",
        "how the category was reached",
        "lung_rads",
        (JSON, PANEL),
        kind="list",
    ),
    _f(
        "lung_rads_supports_4x",
        "Could support 4X",
        "",
        "features a reader may weigh for 4X (the reader's call)",
        "lung_rads",
        (JSON, PANEL),
        kind="list",
    ),
    _f(
        "warnings",
        "Warning codes",
        "",
        "scope warning codes (core/scope/validation.py)",
        "scope",
        (*ALL, REPORT),
        kind="list",
    ),
    _f(
        "warning_messages",
        "Warnings",
        "",
        "the scope warnings in words, in the codes' order",
        "scope",
        (*ALL, REPORT),
        kind="list",
    ),
    _f(
        "model_version",
        "Model version",
        "",
        "the ensemble's version",
        "provenance",
        ALL,
        kind="text",
    ),
    _f(
        "context_passes",
        "Network runs (crop re-centred on the outline)",
        "",
        "network passes the context policy needed",
        "provenance",
        (JSON, PANEL),
        shown_decimals=0,
    ),
    _f(
        "similar_nodules_summary",
        "Similar nodules",
        "",
        "how many of the closest LIDC training nodules (core/model/similar.py) the readers rated "
        "suspicious (mean malignancy rating above 3)",
        "similar",
        (JSON, TABLE, PANEL),
        kind="text",
        optional=True,
    ),
    _f(
        "similar_nodules",
        "Similar nodules",
        "",
        "the closest LIDC training nodules in the network's embedding: name, distance, "
        "diameter, mean reader ratings",
        "similar",
        (JSON,),
        kind="detail",
        optional=True,
    ),
    _f(
        "gates",
        "Gate health",
        "",
        "attention gate health per fold and scale",
        "provenance",
        (JSON,),
        kind="detail",
    ),
    _f(
        "scope_figures",
        "Scope figures",
        "",
        "the figures the scope checks decided on",
        "provenance",
        (JSON,),
        kind="detail",
    ),
    _f(
        "timings_s",
        "Timings",
        "s",
        "seconds per analysis step",
        "provenance",
        (JSON,),
        kind="detail",
    ),
    _f(
        "files",
        "Files",
        "",
        "the files written beside result.json",
        "provenance",
        (JSON,),
        kind="detail",
    ),
    _f(
        "error",
        "Error",
        "",
        "why a row was not scored (a refusal code first)",
        "status",
        (CSV, REPORT),
        kind="text",
    ),
    # exam.json (core/clinical/exam.py, docs/DESIGN.md §17): the exam's fields, then its nodules'.
    *(
        _f(name, label, "", meaning, group, (EXAM,), kind=kind)
        for name, label, meaning, group, kind in (
            ("ct", "CT", "the CT the exam read", "input", "text"),
            (
                "points_file",
                "Points file",
                "the nodules' points (LUNA25 JSON or LIDC XML)",
                "input",
                "text",
            ),
            (
                "date",
                "Exam date",
                "the exam's date (YYYY-MM-DD; --date or the DICOM study date)",
                "input",
                "text",
            ),
            (
                "prior_ct",
                "Prior CT",
                "the registered prior CT (core/prior/exam_prior.py): its date and interval, the "
                "registration and its residual, what the comparison refused or flagged, the "
                "prior's nodules not found in the current; null without --prior",
                "input",
                "detail",
            ),
            ("nodules", "Nodules", "the exam's nodules, one entry each", "input", "detail"),
            ("name", "Nodule", "the nodule's name in the points file", "input", "text"),
            ("lung_rads_version", "Lung-RADS version", "ACR Lung-RADS v2022", "lung_rads", "text"),
            (
                "lung_rads_descriptor",
                "Category descriptor",
                "the exam category's descriptor in the Lung-RADS table",
                "lung_rads",
                "text",
            ),
            (
                "lung_rads_management",
                "Management",
                "the category's management (core/clinical/lung_rads_table.py)",
                "lung_rads",
                "text",
            ),
            (
                "lung_rads_suggestions",
                "Could apply (S, 4X)",
                "S and 4X with their reasons: the reader's call",
                "lung_rads",
                "list",
            ),
            (
                "lung_rads_nodule",
                "Deciding nodule",
                "the most suspicious nodule, whose category the exam takes",
                "lung_rads",
                "text",
            ),
            (
                "lung_rads_screen",
                "Screen",
                "baseline screen or follow-up screen (with a prior)",
                "lung_rads",
                "text",
            ),
            (
                "lung_rads_behavior",
                "Change since the prior",
                "new, growing, slow growth, stable or decreased (core/clinical/lung_rads_followup.py)",
                "lung_rads",
                "text",
            ),
            (
                "brock",
                "Brock inputs",
                "the Brock probability, its note and every input with its source (measured, "
                "estimated, entered, default)",
                "malignancy",
                "detail",
            ),
            (
                "emphysema",
                "Emphysema",
                "LAA-950 share of the lung and the verdict (a Brock input, S suggestion)",
                "malignancy",
                "detail",
            ),
            (
                "prior",
                "Prior",
                "the nodule on the prior CT, typed in or measured on the registered prior "
                "(source): matched or new, its sizes, the change and the volume-doubling time "
                "with its interval; null without a prior",
                "size",
                "detail",
            ),
        )
    ),
    _f(
        "brock_probability",
        "Brock (PanCan) probability",
        "1",
        "probability of cancer of the Brock full model with spiculation (core/clinical/brock.py); "
        "null when the clinical inputs are missing",
        "malignancy",
        (EXAM,),
        decimals=6,
        percent=True,
        optional=True,
    ),
)
_BY_NAME = {f.name: f for f in FIELDS}

# Names that changed when the surfaces were derived from this schema (README: Changelog).
RENAMED: dict[str, dict[str, str]] = {
    TABLE: {
        "malignancy_percent": "malignancy_probability",
        "malignancy_sd_percent": "malignancy_sd",
        "warnings": "warning_messages",
    },
    JSON: {
        "scores": "subtlety … texture, malignancy_score",
        "wording": "<attribute>_wording",
        "lung_rads": "lung_rads (the category) and lung_rads_<texture_class, ...>",
        "warnings": "warnings (codes) and warning_messages",
    },
}


def field(name: str) -> ResultField:
    """The field called ``name``; a ``KeyError`` naming it when the schema has none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a result field (core/result_schema.py)") from None


def fields_for(surface: str) -> tuple[ResultField, ...]:
    """The fields a surface lists, in the schema's order."""
    if surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}; one of {SURFACES}")
    return tuple(f for f in FIELDS if surface in f.surfaces)


def unknown_names(names: Iterable[str]) -> list[str]:
    """The names the schema does not know (a surface test asserts this is empty)."""
    return [n for n in names if n not in _BY_NAME]
