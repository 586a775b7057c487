"""The exam report for the referring physician: one self-contained HTML page (``exam.html``)
with the exam's Lung-RADS and management, a table of the nodules with both dates' sizes, the
change and the volume-doubling time, and each nodule's key image at each date.

Why HTML from the exam document: every number is the one ``exam.json`` holds (each cell keeps
the value it shows in ``data-value``), the page opens anywhere without a viewer, and the key
images are embedded so the file travels alone (mail, a PACS attachment).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..core.atomic import atomic_path
from ..core.result_schema import shown
from ..core.scope.assessment import Assessment

HTML_FILE = "exam.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #111 }
h1 { font-size: 1.4em; margin-bottom: .2em } h2 { font-size: 1.15em; margin-top: 1.4em }
.note { color: #555; font-size: .9em }
.category { border: 2px solid #333; padding: .6em 1em; border-radius: 6px; background: #f6f6f6 }
.category .lr { font-size: 1.6em; font-weight: 700 }
table { border-collapse: collapse; font-size: .92em; margin-top: .5em }
th, td { border: 1px solid #bbb; padding: .3em .5em; text-align: right; vertical-align: top }
th { background: #eee } td.text, th.text { text-align: left }
.flag { color: #9a3b00 }
figure { display: inline-block; margin: .3em .6em .3em 0 } figcaption { font-size: .85em }
.nodule { break-inside: avoid; margin-bottom: 1em }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _cell(key: str, value, text: str) -> str:
    """A number's cell: its exam.json key and exact value kept beside what it shows."""
    if value is None:
        return f'<td data-field="{_e(key)}">–</td>'
    return f'<td data-field="{_e(key)}" data-value="{_e(repr(value))}">{_e(text)}</td>'


def _number(value, digits: int = 0, sign: bool = False) -> str:
    return "" if value is None else f"{value:{'+' if sign else ''}.{digits}f}"


def vdt_text(prior: dict) -> str:
    """The doubling time in days with its interval (core/prior/growth.py: from the lowest to the
    highest of the ensemble's ratio and the folds' paired ratios, so it holds the VDT):
    ``3010 [3010, 5976]`` ("" without)."""
    vdt = prior.get("vdt_days")
    if vdt is None:
        return ""
    text = f"{vdt:.0f}"
    bounds = prior.get("vdt_interval_days")
    if bounds and None not in bounds:
        text += f" [{bounds[0]:.0f}, {bounds[1]:.0f}]"
    elif bounds:
        text += " (its ratios hold 1: stable within the segmentation's noise)"
    return text


def prior_text(prior: dict | None) -> str:
    """The nodule's comparison with the prior in a few words ("" without a prior): the
    ``exam`` command's line and the station's nodule list."""
    if prior is None:
        return ""
    status = prior.get("status", "")
    if status != "matched":
        return f"prior: {status}" + (f" ({prior['reason']})" if prior.get("reason") else "")
    text = "prior: matched"
    before, change = prior.get("volume_mm3"), prior.get("volume_change_percent")
    if before is not None and change is not None:
        # Whose volume is which; "now" is the volume the change compares (both dates measured
        # the same way, possibly through overlapping windows: not always the panel's volume).
        ratio = prior.get("volume_ratio")
        now = f" → now {before * ratio:.0f} mm³" if ratio is not None else ""
        text = f"prior {before:.0f} mm³{now} ({change:+.0f} %)"
    if prior.get("vdt_days") is not None:
        text += f", VDT (days) {vdt_text(prior)}"
    return text


def _status(prior: dict | None) -> str:
    if prior is None:
        return "no prior"
    status = prior.get("status", "")
    return status + (f": {prior['reason']}" if prior.get("reason") else "")


def _brock_text(n: dict) -> str:
    if n.get("brock_probability") is not None:
        return shown("brock_probability", n["brock_probability"])
    return "not computed" if n.get("brock") else ""


def _malignancy_cell(n: dict) -> str:
    """The model's malignancy with its similar LIDC nodules' line (core/model/similar.py);
    a not-assessed nodule's is withheld, as on every surface that leads with it (issue 29:
    the point is probably not a nodule; exam.json keeps the number)."""
    if not Assessment(n["assessment"]).answered:
        return _cell("malignancy_probability", None, "")
    similar = n.get("similar_nodules_summary") or ""
    cell = _cell(
        "malignancy_probability",
        n["malignancy_probability"],
        shown("malignancy_probability", n["malignancy_probability"]),
    )
    if not similar:
        return cell
    return (
        cell.removesuffix("</td>")
        + f'<br><span class="note" data-field="similar">{_e(similar)}</span></td>'
    )


def nodule_row(n: dict) -> str:
    """One table row: both dates' sizes (the prior's where measured or typed in)."""
    p = n.get("prior") or {}
    lung_rads = n["lung_rads"] + (
        f" ({n['lung_rads_behavior']})" if n["lung_rads_behavior"] else ""
    )
    reasons = _e("; ".join(n["lung_rads_reasons"]))
    tier = "" if n["assessment"] == "assessed" else shown("assessment", n["assessment"])
    why = f": {n['assessment_reason']}" if tier and n["assessment_reason"] else ""
    cells = [
        f'<td class="text" data-field="name">{_e(n["name"])}'
        + (
            f'<br><span class="flag" data-field="assessment">{_e(tier + why)}</span>'
            if tier
            else ""
        )  # fmt: skip
        + "</td>",
    ]
    for key in ("diameter_mm", "mean_diameter_mm"):
        cells.append(_cell(f"prior.{key}", p.get(key), _number(p.get(key), 1)))
        cells.append(_cell(key, n[key], _number(n[key], 1)))
    change = p.get("volume_change_percent")
    cells += [
        _cell("prior.volume_mm3", p.get("volume_mm3"), _number(p.get("volume_mm3"))),
        _cell("volume_mm3", n["volume_mm3"], _number(n["volume_mm3"])),
        _cell("prior.volume_change_percent", change, _number(change, sign=True) + " %"),
        _cell("prior.vdt_days", p.get("vdt_days"), vdt_text(p) or p.get("vdt_note") or ""),
        f'<td class="text" data-field="prior.status">{_e(_status(n.get("prior")))}</td>',
        f'<td class="text" data-field="lung_rads" title="{reasons}">{_e(lung_rads) or "–"}</td>',
        _malignancy_cell(n),
        f'<td class="text" data-field="brock_probability">{_e(_brock_text(n))}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _followup_reasons(reasons: list[str]) -> list[str]:
    """The follow-up rules' reasons: those after the baseline table's line (the last one
    without it)."""
    lines = [i for i, r in enumerate(reasons) if r.startswith("baseline table")]
    return reasons[lines[-1] + 1 :] if lines and lines[-1] + 1 < len(reasons) else reasons[-1:]


def _notes(document: dict) -> str:
    """What the table's cells leave out, once each: why Brock was not computed, why a nodule
    compared with a prior has its Lung-RADS category and behavior."""
    notes = []
    for n in document["nodules"]:
        brock = n.get("brock") or {}
        if brock and n.get("brock_probability") is None:
            notes.append(f"Brock {brock.get('note', '')}")
        if n["lung_rads_behavior"] and n["lung_rads_reasons"]:
            reasons = "; ".join(_followup_reasons(n["lung_rads_reasons"]))
            notes.append(f"{n['name']}, Lung-RADS {n['lung_rads']}: {reasons}")
    return "".join(f"<li>{_e(t)}</li>" for t in dict.fromkeys(notes))


def _images(name: str, images: list[tuple[str, bytes]]) -> str:
    figures = "".join(
        f'<figure><img alt="{_e(name)} {_e(label)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{_e(label)}</figcaption></figure>'
        for label, png in images
    )
    return f'<div class="nodule"><h3>{_e(name)}</h3>{figures}</div>'


def _prior_section(prior_ct: dict | None) -> str:
    if not prior_ct:
        return "<p>No prior CT was compared.</p>"
    registration = prior_ct.get("registration") or {}
    items = [f"Prior CT of {_e(prior_ct.get('date') or 'unknown date')}"
             + (f", {prior_ct['interval_days']:.0f} days before" if prior_ct.get("interval_days")
                else "")
             + (f", series {_e(prior_ct['series_uid'])}" if prior_ct.get("series_uid")
                else "")]  # fmt: skip
    if registration:
        items.append(f"Registration: {_e(registration.get('verdict_reason', ''))}")
    if not prior_ct.get("compared"):
        items.append('<span class="flag">Not compared.</span>')
    items += [
        f'<span class="flag">{_e(f["level"])}: {_e(f["message"])}</span>'
        for f in prior_ct.get("findings", [])
    ]
    items += [
        f"{_e(e['name'])} (on the prior): not found in the current CT: {_e(e['reason'])}"
        for e in prior_ct.get("not_found_in_current", [])
    ]
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def render_exam_html(document: dict, key_images: dict[str, list[tuple[str, bytes]]]) -> str:
    """The page of an exam document (as in ``exam.json``); ``key_images``: per nodule name,
    (caption, PNG) at each date, prior first."""
    prior_ct = document.get("prior_ct") or {}
    prior_date = prior_ct.get("date") or "prior"
    current_date = document.get("date") or "current"
    who = ", ".join(
        f"{label} {_e(document[key])}"
        for label, key in (("patient", "patient_id"), ("series", "series_uid"))
        if document.get(key)
    )
    reasons = "".join(f"<li>{_e(r)}</li>" for r in document["lung_rads_reasons"])
    suggestions = "".join(f"<li>{_e(s)}</li>" for s in document["lung_rads_suggestions"])
    dates = f"<br>{_e(prior_date)}", f"<br>{_e(current_date)}"
    head = (
        '<tr><th class="text">Nodule</th>'
        f"<th>Long axis mm{dates[0]}</th><th>Long axis mm{dates[1]}</th>"
        f"<th>Mean diameter mm{dates[0]}</th><th>Mean diameter mm{dates[1]}</th>"
        f"<th>Volume mm³{dates[0]}</th><th>Volume mm³{dates[1]}</th>"
        "<th>Volume change</th><th>Doubling time, days</th>"
        '<th class="text">Prior</th><th class="text">Lung-RADS</th>'
        '<th>Malignancy (model)</th><th class="text">Brock</th></tr>'
    )
    rows = "".join(nodule_row(n) for n in document["nodules"])
    images = "".join(
        _images(n["name"], key_images[n["name"]])
        for n in document["nodules"]
        if key_images.get(n["name"])
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Lung nodule exam {_e(current_date)}</title>
<style>{STYLE}</style></head><body>
<h1>Lung nodule exam, CT of {_e(current_date)}</h1>
<p class="note">{who}. Model {_e(document.get("model_version", ""))}. Suggestions of a research
tool, not a diagnosis: the reading radiologist decides.</p>
<div class="category" id="exam-lung-rads"><span class="lr">Lung-RADS
{_e(document["lung_rads"])}</span> {_e(document["lung_rads_descriptor"])}
<p><b>Management:</b> <span id="management">{_e(document["lung_rads_management"])}</span></p>
<ul>{reasons}</ul>{f"<p><b>For the reader:</b></p><ul>{suggestions}</ul>" if suggestions else ""}
</div>
<h2>Prior CT</h2>{_prior_section(document.get("prior_ct"))}
<h2>Nodules</h2>
<table id="nodules">{head}{rows}</table>
<ul class="note">{_notes(document)}</ul>
<p class="note">Long axis: longest axial diameter; mean diameter: Lung-RADS' size. Doubling time from the two volumes; in
brackets its range over the ensemble's and each fold's paired volume ratio, lowest to highest
(the model's spread, not a confidence interval). Brock: PanCan full
model with spiculation (McWilliams et al., N Engl J Med 2013).</p>
<h2>Key images</h2><p class="note">Axial slice where the outline is largest, lung window;
patient's right on the left.</p>{images}
</body></html>
"""


def write_exam_html(
    document: dict, key_images: dict[str, list[tuple[str, bytes]]], path: str | Path
) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_exam_html(document, key_images), encoding="utf-8")
    return path
