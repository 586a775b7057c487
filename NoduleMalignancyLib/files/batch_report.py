"""The batch review report: one self-contained HTML page for a predictions CSV.

One line per manifest row: an axial thumbnail through the point (lung window, the segmentation
outline from the mask ``predict --masks-dir`` wrote), the malignancy with its fold spread, the
attributes on the LIDC scale with their wording, size, the scope warnings and, for a row that
was not scored, its refusal or error and no numbers (docs/DESIGN.md §12). Everything is inline
(PNG as ``data:`` URIs, CSS, a small sort script), so the page opens from disk with no network;
every text from the CSV is escaped. Names are the CSV's (docs/DESIGN.md §10).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import numpy as np
import SimpleITK as sitk

from ..core.nodule.attributes import wording
from ..core.result_schema import (
    CODE_SEPARATOR,
    LIDC_SCALE,
    REPORT,
    TEXT_SEPARATOR,
    fields_for,
    shown,
)
from ..core.result_schema import field as result_field
from ..core.scope.assessment import FLAGGED, NOT_ASSESSED, REFUSED, assess_codes, withheld
from ..core.scope.validation import DESCRIPTIONS, REFUSALS

__all__ = [
    "LUNG_WINDOW",
    "OUTLINE_RGB",
    "POINT_RGB",
    "ReportHeader",
    "ReportRow",
    "batch_counts",
    "png_bytes",
    "point_inside",
    "render_report",
    "thumbnail",
]

LUNG_WINDOW = (-1350.0, 150.0)  # HU: width 1500, level -600
OUTLINE_RGB = (255, 176, 0)  # the segmentation outline (the report image's orange)
POINT_RGB = (0, 200, 255)  # ticks on the thumbnail's edges that point at the point
THUMBNAIL_MM = 40.0
THUMBNAIL_PIXELS = 128
_TICK = 8  # pixels


@dataclass
class ReportRow:
    """One manifest row: its id and image, the predictions CSV row, its thumbnail PNG."""

    id: str
    image: str
    prediction: dict[str, str]
    thumbnail_png: bytes | None = None
    thumbnail_note: str = ""  # why there is no thumbnail


@dataclass
class ReportHeader:
    title: str = "Nodule malignancy: batch review"
    generated: str = ""
    models_version: str = "unknown"
    sources: dict[str, str] = field(default_factory=dict)  # e.g. predictions / manifest paths


# --- thumbnails -------------------------------------------------------------------------------


def _axial_plane(image: sitk.Image, point_lps, interpolator, default: float) -> np.ndarray:
    """The image resampled on a square axial LPS plane through the point (rows: anterior to
    posterior, columns: patient right to left, the radiological view); honours the direction."""
    step = THUMBNAIL_MM / THUMBNAIL_PIXELS
    x, y, z = (float(v) for v in point_lps)
    half = THUMBNAIL_MM / 2 - step / 2
    reference = sitk.Image([THUMBNAIL_PIXELS, THUMBNAIL_PIXELS, 1], sitk.sitkFloat32)
    reference.SetSpacing((step, step, 1.0))
    reference.SetOrigin((x - half, y - half, z))
    plane = sitk.Resample(image, reference, sitk.Transform(), interpolator, default)
    return sitk.GetArrayFromImage(plane)[0].astype(np.float32)


def point_inside(image: sitk.Image, point_lps) -> bool:
    """Whether the world point lies in the image's voxel extent (half a voxel beyond centres)."""
    index = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(map(float, point_lps))))
    return bool(np.all(index >= -0.5) and np.all(index <= np.asarray(image.GetSize()) - 0.5))


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (in the mask, with a 4-neighbour outside it)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def thumbnail(image: sitk.Image, point_lps, mask: sitk.Image | None = None) -> np.ndarray:
    """The RGB thumbnail (uint8, 128 x 128, 40 mm): lung window, outline, point ticks.

    Why an axial slice in LPS rather than the image's own slice: obliques and flipped files
    then look as a radiologist expects, and the mask lands on the same pixels whatever its grid.
    """
    hu = _axial_plane(image, point_lps, sitk.sitkLinear, -2000.0)
    lo, hi = LUNG_WINDOW
    gray = (255 * np.clip((hu - lo) / (hi - lo), 0, 1)).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if mask is not None:
        inside = _axial_plane(mask, point_lps, sitk.sitkNearestNeighbor, 0.0) > 0.5
        rgb[_outline(inside)] = OUTLINE_RGB
    c = THUMBNAIL_PIXELS // 2
    for rows, cols in (
        (slice(0, _TICK), c),
        (slice(-_TICK, None), c),
        (c, slice(0, _TICK)),
        (c, slice(-_TICK, None)),
    ):
        rgb[rows, cols] = POINT_RGB
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB array as PNG bytes (matplotlib, no figure: pixel for pixel)."""
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, rgb, format="png")
    return buffer.getvalue()


# --- the page ---------------------------------------------------------------------------------


def _number(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _error_code(error: str) -> str | None:
    """The scope refusal code at the start of a ``predict`` error (``"no_tissue: ..."``)."""
    head = error.split(":", 1)[0].strip()
    return head if head in REFUSALS else None


def _codes(warnings: str) -> list[str]:
    return [c for c in (warnings or "").split(CODE_SEPARATOR) if c.strip()]


def row_assessment(p: dict[str, str]) -> str:
    """A scored row's tier (core/scope/assessment.py): the CSV's ``assessment``, or (a CSV written
    before that column) the tier its warning codes make."""
    return p.get("assessment") or assess_codes(_codes(p.get("warnings", ""))).tier


def batch_counts(rows: Sequence[ReportRow]) -> dict[str, int]:
    """Rows scored (of them flagged with a warning, or not assessed: probably no nodule),
    refused by the scope layer, failed otherwise."""
    counts = {
        "rows": len(rows),
        "scored": 0,
        "warned": 0,
        "not_assessed": 0,
        "refused": 0,
        "failed": 0,
    }
    for row in rows:
        error = row.prediction.get("error", "")
        if not error:
            counts["scored"] += 1
            tier = row_assessment(row.prediction)
            counts["warned"] += tier == FLAGGED
            counts["not_assessed"] += tier == NOT_ASSESSED
        elif _error_code(error):
            counts["refused"] += 1
        else:
            counts["failed"] += 1
    return counts


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _cell(content: str, sort_value="", css: str = "") -> str:
    """A table cell; ``data-v`` is what the sort script compares ("" sorts last)."""
    klass = f' class="{css}"' if css else ""
    return f'<td data-v="{_e(sort_value)}"{klass}>{content}</td>'


def _score_cell(name: str, text: str | None) -> str:
    value = _number(text)
    if value is None:
        return _cell("")
    words = _e(wording(name.removesuffix("_score"), value))
    return _cell(
        f"{_e(shown(name, value, with_unit=False))}<br><small>{words}</small>", f"{value:.4f}"
    )


def _thumbnail_cell(row: ReportRow) -> str:
    if row.thumbnail_png is None:
        return _cell(f"<small>{_e(row.thumbnail_note)}</small>")
    data = base64.b64encode(row.thumbnail_png).decode("ascii")
    alt = _e(f"axial slice through the point of {row.id}")
    size = f'width="{THUMBNAIL_PIXELS}" height="{THUMBNAIL_PIXELS}"'
    return _cell(f'<img src="data:image/png;base64,{data}" {size} alt="{alt}">')


def _malignancy_cell(p: dict[str, str]) -> str:
    prob, sd = _number(p.get("malignancy_probability")), _number(p.get("malignancy_sd"))
    if prob is None:
        return _cell("")
    spread = f" ± {shown('malignancy_sd', sd)}" if sd is not None else ""
    bar = f'<div class="bar"><div style="width:{100 * prob:.0f}%"></div></div>'
    return _cell(f"<b>{shown('malignancy_probability', prob)}{spread}</b>{bar}", f"{prob:.6f}")


def _plain_cell(name: str, text: str | None) -> str:
    """A number with the schema's unit and precision, or a text cell as it is."""
    if result_field(name).kind == "text":
        return _cell(_e(text or ""), text or "")
    value = _number(text)
    if value is None:
        return _cell("")
    return _cell(_e(shown(name, value)), f"{value:.6f}")


def _warnings_cell(warnings: str, messages: str = "") -> str:
    """The codes with their sentences: the CSV's ``warning_messages``, or (a CSV written
    before that column) the code's description."""
    codes = _codes(warnings)
    words = [m for m in (messages or "").split(TEXT_SEPARATOR) if m.strip()]
    if len(words) != len(codes):
        words = [DESCRIPTIONS.get(c, "") for c in codes]
    items = "".join(
        f"<li><code>{_e(c)}</code> <small>{_e(m)}</small></li>"
        for c, m in zip(codes, words, strict=True)
    )
    return _cell(f"<ul>{items}</ul>" if codes else "", " ".join(codes), "warn" if codes else "")


def _error_cell(error: str) -> str:
    if not error:
        return _cell("")
    code = _error_code(error)
    message = error.split(":", 1)[1].strip() if code else error
    label = f"<code>{_e(code)}</code> refused" if code else "<code>error</code>"
    return _cell(f"{label}<br><small>{_e(message)}</small>", code or "error", "err")


def _assessment_cell(p: dict[str, str], error: str) -> str:
    """The tier in words, its reason below: it leads the row's numbers."""
    tier = REFUSED if error else row_assessment(p)
    reason = "" if error else p.get("assessment_reason", "")
    css = {NOT_ASSESSED: "err", FLAGGED: "warn"}.get(tier, "")
    return _cell(
        f"<b>{_e(shown('assessment', tier))}</b><br><small>{_e(reason)}</small>", tier, css
    )


# Shown inside another field's cell: the spread beside the malignancy, the words beside the
# codes, the reason below the assessment.
_FOLDED = ("malignancy_sd", "warning_messages", "assessment_reason")

# (CSV column or None, header, sort kind): the schema's report fields with their units.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("row", "#", "number"),
    ("id", result_field("id").label, "text"),
    ("thumbnail", "Axial slice, lung window", ""),
    *(
        (
            f.name,
            {
                "malignancy_probability": f"{f.heading} ± spread",
                "warnings": result_field("warning_messages").label,  # codes and their words
            }.get(f.name, f.heading),
            "number" if f.kind == "number" else "text",
        )
        for f in fields_for(REPORT)
        if f.name not in ("id", *_FOLDED)
    ),
)


def _field_cell(name: str, p: dict[str, str], shown_row: dict[str, str]) -> str:
    if name == "assessment":
        return _assessment_cell(p, p.get("error", ""))
    if withheld(name) and shown_row and row_assessment(p) == NOT_ASSESSED:
        return _cell("")
    if name == "malignancy_probability":
        return _malignancy_cell(shown_row)
    if result_field(name).unit == LIDC_SCALE:
        return _score_cell(name, shown_row.get(name))
    if name == "warnings":
        return _warnings_cell(shown_row.get("warnings", ""), shown_row.get("warning_messages", ""))
    if name == "error":
        return _error_cell(p.get("error", ""))
    return _plain_cell(name, shown_row.get(name))


def _row_html(number: int, row: ReportRow) -> str:
    p = row.prediction
    error = p.get("error", "")
    shown_row = {} if error else p  # a row that was not scored shows no numbers
    id_cell = f"{_e(row.id)}<br><small>{_e(Path(row.image).name)}</small>"
    cells = [
        _cell(str(number), number),
        _cell(id_cell, row.id),
        _thumbnail_cell(row),
        *(_field_cell(name, p, shown_row) for name, _, _ in COLUMNS[3:]),
    ]
    tier = None if error else row_assessment(p)
    klass = {None: "refused", NOT_ASSESSED: "not-assessed", FLAGGED: "warned"}.get(tier, "scored")
    return f'<tr class="{klass}">{"".join(cells)}</tr>'


def _header_html(header: ReportHeader, counts: dict[str, int]) -> str:
    sources = "".join(
        f"<div>{_e(name)}: <code>{_e(path)}</code></div>" for name, path in header.sources.items()
    )
    summary = (
        f"{counts['rows']} rows: <b>{counts['scored']} scored</b> "
        f"({counts['warned']} with warnings, <b>{counts['not_assessed']} not assessed</b>: "
        "probably not a lung nodule, no malignancy shown), "
        f"<b>{counts['refused']} refused</b> by the scope "
        f"checks, <b>{counts['failed']} failed</b> (unreadable image, point outside it, ...)"
    )
    return (
        f"<h1>{_e(header.title)}</h1>"
        f'<p class="summary">{summary}</p>'
        f'<div class="meta"><div>generated {_e(header.generated)}</div>'
        f"<div>models <code>{_e(header.models_version)}</code></div>{sources}</div>"
        "<p><small>Thumbnails: the axial slice through the point, lung window (W 1500, L -600), "
        f"{THUMBNAIL_MM:.0f} mm square, patient right on the left; orange: the segmentation "
        "outline; cyan ticks on the edges: the point. Attributes: fold mean on the LIDC 1-5 scale with the "
        "nearest rating's LIDC wording. Click a column header to sort.</small></p>"
    )


_STYLE = """
body{font:13px system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 6px}
.meta{color:#555;margin:4px 0}
table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:3px 5px;vertical-align:top;text-align:left}
th{background:#eee;position:sticky;top:0}
th[data-sort]{cursor:pointer}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
tr.refused,tr.not-assessed{background:#f6f6f6;color:#666}
td.warn{background:#fff4d6}
td.err{background:#fde4e4}
ul{margin:0;padding-left:14px}
small{color:#555}
.bar{height:4px;background:#ddd;margin-top:3px;width:80px}
.bar div{height:4px;background:#c44e52}
footer{margin-top:10px;color:#777}
"""

# Sorts the rows by the clicked column's data-v (numbers numerically), toggling the direction;
# empty cells (rows that were not scored) always go last.
_SCRIPT = """
(function () {
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.getAttribute("aria-sort") !== "ascending", numeric = th.dataset.sort === "number";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("th[data-sort]").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
})();
"""

# Nothing may load from outside the page: images are data: URIs, style and script inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def render_report(rows: Sequence[ReportRow], header: ReportHeader) -> str:
    """The whole page as one HTML string, rows in the manifest's order."""
    heads = "".join(
        f'<th data-column="{_e(key)}"'
        + (f' data-sort="{kind}" title="click to sort"' if kind else "")
        + f">{_e(label)}</th>"
        for key, label, kind in COLUMNS
    )
    body = "\n".join(_row_html(i + 1, row) for i, row in enumerate(rows))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{_e(header.title)}</title><style>{_STYLE}</style></head><body>"
        f"{_header_html(header, batch_counts(rows))}"
        f'<table id="nodules"><thead><tr>{heads}</tr></thead><tbody>\n{body}\n</tbody></table>'
        "<footer>Research use only, not a diagnostic device.</footer>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
