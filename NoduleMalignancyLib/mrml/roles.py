"""The MRML vocabulary of the module: node roles, parameter names, attributes, table columns.

Why a module of its own: the logic, the node writers, the widget, the self-test and the tests
all name the same roles; each names them through these constants, never as string literals.
"""

from __future__ import annotations

from ..core.nodule.evidence import COMBINED, SCALE_NAMES
from ..core.result_schema import TABLE, fields_for
from ..core.settings import RESOURCES_DIR

MODULE_NAME = "NoduleMalignancy"
ATTRIBUTE_PREFIX = "NoduleMalignancy."
EVIDENCE_SCALES: tuple[str, ...] = (COMBINED, *SCALE_NAMES)
EVIDENCE_COLOR_TABLE_FILE = RESOURCES_DIR / "NoduleMalignancyEvidence.ctbl"
EVIDENCE_COLOR_NODE_NAME = "NoduleMalignancyEvidence"
DEFAULT_EVIDENCE_OPACITY = 0.7

# Output roles: one word per kind of node, used both as the parameter node's reference role and
# as the node's own ATTR_ROLE attribute (docs/DESIGN.md §10).
ROLE_VOLUME = "InputVolume"
ROLE_MARKUPS = "InputMarkups"
ROLE_PRIOR_VOLUME = "PriorVolume"  # the prior CT the exam compares with (mrml/prior_table.py)
ROLE_SEGMENTATION = "Segmentation"
ROLE_TABLE = "ResultsTable"
ROLE_EVIDENCE = "EvidenceVolume"
ROLE_COLOR = "EvidenceColorTable"
ROLE_LUNG_SURFACE = "LungSurface"  # the station's 3D context: the CT's lungs, translucent
PARAM_SCALE = "EvidenceScale"
PARAM_OPACITY = "EvidenceOpacity"
PARAM_CURRENT_POINT = "CurrentPointID"
PARAM_DEVICE = "Device"
PARAM_AUTO_ANALYZE = "AutoAnalyze"
PARAM_PRIOR_DATE = "PriorDate"  # YYYY-MM-DD, "" for the prior's own study date
PARAM_EXAM_DATE = "ExamDate"  # YYYY-MM-DD, "" for the CT's own study date
DEVICES: tuple[str, ...] = ("auto", "CPU", "GPU")  # the panel's choices (core/device.py reads them)

# Node references / attributes / segment tags that tie outputs to their inputs.
REF_VOLUME = "noduleMalignancyVolume"
REF_MARKUPS = "noduleMalignancyMarkups"
ATTR_POINT = ATTRIBUTE_PREFIX + "PointID"
ATTR_SCALE = ATTRIBUTE_PREFIX + "EvidenceScale"
ATTR_WINDOW = ATTRIBUTE_PREFIX + "EvidenceWindow"
ATTR_ROLE = ATTRIBUTE_PREFIX + "Role"


# Table columns: (name, vtk type, title, unit, decimals), one per result field the schema puts
# on the table (core/result_schema.py): the CSV's names, the values as a person reads them
# (probabilities in %; the unit in the title and the column's unit label).
TABLE_COLUMNS: tuple[tuple[str, str, str, str, int], ...] = tuple(
    (
        f.name,
        "string" if f.kind in ("text", "list") else "double",
        f.heading,
        f.shown_unit,
        f.shown_decimals,
    )
    for f in fields_for(TABLE)
)

# One outline colour for every nodule (yellow): apart from the point markers (green, see
# MARKER_COLOR), the evidence's red and blue and the CT's greys, so an outline reads as an
# outline whichever nodule it is (issue 29 item 5).
SEGMENT_COLOR: tuple[float, float, float] = (1.0, 0.85, 0.0)
# Point markers by the point's state (the station, issue 29): green while it is analysed or
# answered (assessed, flagged); orange when its answer is "not assessed" (a warning, as the
# banner); grey when no answer came (refused, cancelled, failed). The point under the mouse is
# drawn white (Slicer's "active" highlight, a state of the mouse, not of the point).
MARKER_COLOR: tuple[float, float, float] = (0.2, 1.0, 0.3)
MARKER_WARNING_COLOR: tuple[float, float, float] = (1.0, 0.5, 0.05)
MARKER_INACTIVE_COLOR: tuple[float, float, float] = (0.55, 0.55, 0.55)
MARKER_ACTIVE_COLOR: tuple[float, float, float] = (1.0, 1.0, 1.0)
# The lungs in the station's 3D view: a pale translucent surface the nodules are seen through.
LUNG_SURFACE_COLOR: tuple[float, float, float] = (0.85, 0.72, 0.68)
LUNG_SURFACE_OPACITY = 0.2
