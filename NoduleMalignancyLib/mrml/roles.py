"""The MRML vocabulary of the module: node roles, parameter names, attributes, table columns.

Why a module of its own: the logic, the node writers, the widget, the self-test and the tests
all name the same roles; each names them through these constants, never as string literals.
"""

from __future__ import annotations

from ..core.config import ORDINAL_ATTRIBUTES
from ..core.evidence import COMBINED, SCALE_NAMES
from ..core.explanation import PARTS
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
ROLE_SEGMENTATION = "Segmentation"
ROLE_TABLE = "ResultsTable"
ROLE_EVIDENCE = "EvidenceVolume"
ROLE_COLOR = "EvidenceColorTable"
PARAM_SCALE = "EvidenceScale"
PARAM_OPACITY = "EvidenceOpacity"
PARAM_CURRENT_POINT = "CurrentPointID"

# Node references / attributes / segment tags that tie outputs to their inputs.
REF_VOLUME = "noduleMalignancyVolume"
REF_MARKUPS = "noduleMalignancyMarkups"
ATTR_POINT = ATTRIBUTE_PREFIX + "PointID"
ATTR_SCALE = ATTRIBUTE_PREFIX + "EvidenceScale"
ATTR_WINDOW = ATTRIBUTE_PREFIX + "EvidenceWindow"
ATTR_ROLE = ATTRIBUTE_PREFIX + "Role"


def score_column(attribute: str) -> str:
    """Table column of an attribute's 1-5 score: ``malignancy_score`` for malignancy (as in the
    batch CSV), so it is not mistaken for the malignancy probability beside it."""
    return "malignancy_score" if attribute == "malignancy" else attribute


# Table columns: (name, vtk type, title, unit, decimals). Names follow the CLI / JSON fields.
TABLE_COLUMNS: tuple[tuple[str, str, str, str, int], ...] = (
    ("point", "string", "Point", "", 0),
    ("point_id", "string", "Control point ID", "", 0),
    ("r", "double", "R", "mm", 2),
    ("a", "double", "A", "mm", 2),
    ("s", "double", "S", "mm", 2),
    ("malignancy_percent", "double", "Malignancy", "%", 1),
    ("malignancy_sd_percent", "double", "Malignancy spread (SD over folds)", "%", 1),
    *(
        item
        for name in ORDINAL_ATTRIBUTES
        for item in (
            (score_column(name), "double", f"{name.capitalize()} (LIDC 1-5)", "", 2),
            (f"{name}_wording", "string", f"{name.capitalize()} (LIDC)", "", 0),
        )
    ),
    ("calcification_probability", "double", "Calcification probability", "", 3),
    ("internal_structure_probability", "double", "Internal structure (not soft tissue)", "", 3),
    ("volume_mm3", "double", "Volume", "mm3", 1),
    ("diameter_mm", "double", "Diameter (longest axial)", "mm", 1),
    ("short_axis_mm", "double", "Short axis", "mm", 1),
    ("mean_diameter_mm", "double", "Mean diameter", "mm", 1),
    ("mean_hu", "double", "Mean attenuation", "HU", 0),
    ("calcified_fraction", "double", "Calcified fraction (>= 200 HU)", "", 3),
    # The malignancy explained (docs/DESIGN.md §11): the parts sum to the malignancy logit.
    ("malignancy_logit", "double", "Malignancy logit (explained)", "", 3),
    *(
        (f"malignancy_logit_{part}", "double", f"Logit part: {part.replace('_', ' ')}", "", 3)
        for part in PARTS
    ),
    ("malignancy_mil_logit", "double", "MIL logit (network, unfused)", "", 3),
    # A suggestion for the reader, baseline screen only (docs/DESIGN.md §16).
    ("lung_rads", "string", "Lung-RADS (suggested, baseline)", "", 0),
    ("lung_rads_solid_mean_diameter_mm", "double", "Lung-RADS solid component", "mm", 1),
    ("warnings", "string", "Warnings (scope)", "", 0),
    ("model_version", "string", "Model version", "", 0),
)

# Distinct segment colours (Slicer-like palette), used in table-row order.
SEGMENT_COLORS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.85, 0.0),
    (0.0, 0.85, 0.35),
    (0.95, 0.35, 0.95),
    (0.2, 0.8, 1.0),
    (1.0, 0.5, 0.0),
    (0.55, 0.4, 1.0),
    (0.6, 1.0, 0.3),
    (1.0, 0.3, 0.45),
)
