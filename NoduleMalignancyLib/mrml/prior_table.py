"""The comparison with a prior CT in the module's results table (issue 31 item 5).

Why in the results table: the reader reads one row per nodule, and the exam with a prior
(``NoduleMalignancyLogic.exam(priorVolume=...)``, core/prior/exam_prior.py) says for each of them
whether it was found on the prior, both dates' sizes, the change, the volume-doubling time with
its interval (core/prior/growth.py) and the Lung-RADS follow-up category with its behaviour. The
comparison's columns are added to the table the first time a comparison is written (a table
without a prior keeps the schema's columns only) and filled from the exam's ``prior`` entries
by the row's point name (the exam names each nodule after its point).

A nodule analyzed again has its comparison cells emptied (``clear_prior_cells``, called by the
row's writer, mrml/nodes.py): they described the outline it had before, until compared again.
A comparison refused as a whole (registration failed) fills each row's status "not compared"
with the reason.
"""

from __future__ import annotations

import math

from .slicer_api import vtk

__all__ = [
    "PRIOR_COLUMNS",
    "clear_prior_cells",
    "comparison_summary",
    "vdt_interval_text",
    "write_prior_columns",
]

# (name, vtk type, title, unit, decimals): the exam's prior entry as a person reads it.
PRIOR_COLUMNS: tuple[tuple[str, str, str, str, int], ...] = (
    ("prior_status", "string", "Prior CT", "", 0),
    ("prior_date", "string", "Prior date", "", 0),
    ("prior_interval_days", "double", "Interval (days)", "days", 0),
    ("prior_diameter_mm", "double", "Prior longest axial diameter (mm)", "mm", 1),
    ("prior_mean_diameter_mm", "double", "Prior mean diameter (mm)", "mm", 1),
    ("prior_volume_mm3", "double", "Prior volume (mm³)", "mm³", 1),
    ("prior_mean_diameter_change_mm", "double", "Mean diameter change (mm)", "mm", 1),
    ("prior_volume_change_percent", "double", "Volume change (%)", "%", 1),
    ("prior_vdt_days", "double", "Volume-doubling time (days)", "days", 0),
    ("prior_vdt_interval_days", "string", "VDT interval (days)", "days", 0),
    ("followup_lung_rads", "string", "Lung-RADS follow-up", "", 0),
    ("followup_behavior", "string", "Behavior since the prior", "", 0),
    ("prior_note", "string", "Prior CT note", "", 0),
)
# exam.json's prior entry key of each number column
_NUMBERS = {
    "prior_interval_days": "interval_days",
    "prior_diameter_mm": "diameter_mm",
    "prior_mean_diameter_mm": "mean_diameter_mm",
    "prior_volume_mm3": "volume_mm3",
    "prior_mean_diameter_change_mm": "mean_diameter_change_mm",
    "prior_volume_change_percent": "volume_change_percent",
    "prior_vdt_days": "vdt_days",
}


def vdt_interval_text(prior: dict) -> str:
    """The VDT's interval as the table shows it: "3010-5976"; with no interval, why."""
    if prior.get("vdt_days") is None:
        return ""
    bounds = prior.get("vdt_interval_days")
    if not bounds:
        return "none (the folds' volumes were not given)"
    if None in bounds:
        return "none: the ratios hold 1 (stable within the segmentation's noise)"
    return f"{bounds[0]:.0f}-{bounds[1]:.0f}"


def _cells(nodule: dict) -> dict:
    """One row's values from an exam nodule (``exam.json``'s entry with its ``prior``)."""
    prior = nodule.get("prior") or {}
    note = prior.get("reason") or ""
    if prior.get("vdt_note") and prior.get("vdt_days") is not None:
        note = "; ".join(filter(None, [note, prior["vdt_note"]]))
    note = "; ".join(filter(None, [note, *prior.get("warnings", [])]))
    cells = {
        "prior_status": prior.get("status", ""),
        "prior_date": prior.get("date") or "",
        "prior_vdt_interval_days": vdt_interval_text(prior),
        "followup_lung_rads": nodule.get("lung_rads") or "",
        "followup_behavior": nodule.get("lung_rads_behavior") or "",
        "prior_note": note,
    }
    for column, key in _NUMBERS.items():
        cells[column] = prior.get(key)
    return cells


def _ensure_columns(table) -> None:
    vtable = table.GetTable()
    for name, kind, title, unit, _ in PRIOR_COLUMNS:
        if vtable.GetColumnByName(name) is not None:
            continue
        array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfValues(table.GetNumberOfRows())
        for row in range(table.GetNumberOfRows()):
            array.SetValue(row, "" if kind == "string" else math.nan)
        table.AddColumn(array)
        table.SetColumnTitle(name, title)
        if unit:
            table.SetColumnUnitLabel(name, unit)


def _set_row(table, row: int, cells: dict | None) -> None:
    vtable = table.GetTable()
    for name, kind, _, _, decimals in PRIOR_COLUMNS:
        column = vtable.GetColumnByName(name)
        if column is None:
            continue
        value = None if cells is None else cells.get(name)
        if kind == "string":
            column.SetValue(row, "" if value is None else str(value))
        else:
            column.SetValue(row, math.nan if value is None else round(float(value), decimals))
        column.Modified()


def write_prior_columns(table, exam: dict) -> int:
    """Add the comparison's columns to the results ``table`` (once) and fill each row whose
    point names an exam nodule with a ``prior`` entry; the other rows' cells are emptied.
    Returns the number of rows filled."""
    by_name = {n["name"]: n for n in exam.get("nodules", []) if n.get("prior") is not None}
    labels = table.GetTable().GetColumnByName("point")
    was = table.StartModify()
    _ensure_columns(table)
    filled = 0
    for row in range(table.GetNumberOfRows()):
        nodule = by_name.get(str(labels.GetValue(row)))
        _set_row(table, row, None if nodule is None else _cells(nodule))
        filled += nodule is not None
    table.GetTable().Modified()
    table.Modified()
    table.EndModify(was)
    return filled


def clear_prior_cells(table, row: int) -> None:
    """Empty ``row``'s comparison cells (a nodule analyzed again; no-op without the columns)."""
    _set_row(table, row, None)


def comparison_summary(exam: dict) -> str:
    """The panel's status line after a comparison: the prior, how many nodules matched and
    were new, the exam's Lung-RADS follow-up category."""
    prior_ct = exam.get("prior_ct") or {}
    name = prior_ct.get("volume") or "the prior CT"
    date = f" of {prior_ct['date']}" if prior_ct.get("date") else " (no date: no VDT)"
    if not prior_ct.get("compared", False):
        refused = [f["message"] for f in prior_ct.get("findings", []) if f["level"] == "refused"]
        return f"{name}{date} was not compared: {'; '.join(refused) or 'registration failed'}"
    counts = [
        f"{len(prior_ct.get(key) or [])} {words}"
        for key, words in (("matched", "matched"), ("new", "new"))
    ]
    lost = len(prior_ct.get("not_found_in_current") or [])
    if lost:
        counts.append(f"{lost} not found in the current")
    return (
        f"Compared with {name}{date}: {', '.join(counts)}. "
        f"Exam: Lung-RADS {exam.get('lung_rads')} {exam.get('lung_rads_descriptor', '')}".rstrip()
        + "."
    )
