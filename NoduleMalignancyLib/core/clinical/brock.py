"""The Brock (PanCan) probability of cancer of a screen-detected nodule: the full model with
spiculation of McWilliams et al., "Probability of cancer in pulmonary nodules detected on first
screening CT", N Engl J Med 369:910-919, 2013 (doi:10.1056/NEJMoa1214726), docs/DESIGN.md §17.

Why beside the model's own probability: it is the risk model the guidelines name (BTS), built
on screening patients with their clinical risk factors, which the image model does not see.
Why every input carries its source: four of the nine come from the image (measured or
estimated), three from the reader (entered); a reader must see which is which before trusting
the number, and a number computed with stated defaults says so. Plain numbers in and out: the
image-derived inputs are worked out in core/clinical/brock_inputs.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = [
    "BrockInput",
    "BrockResult",
    "CLINICAL_INPUTS",
    "COEFFICIENTS",
    "DEFAULTS",
    "ENTERED",
    "ESTIMATED",
    "MEASURED",
    "DEFAULT",
    "NODULE_TYPES",
    "SOURCES",
    "brock_logit",
    "brock_probability",
    "brock_result",
]

MEASURED = "measured"  # on the image by the model (size, type, spiculation, emphysema, count)
ESTIMATED = "estimated"  # suggested from the image by a rule the reader should check (lobe)
ENTERED = "entered"  # typed in by the reader (age, sex, family history; or an override)
DEFAULT = "default"  # not given: the model's reference value, stated (DEFAULTS)
SOURCES = (MEASURED, ESTIMATED, ENTERED, DEFAULT)

SOLID = "solid"
PART_SOLID = "part-solid"
NON_SOLID = "non-solid"
NODULE_TYPES = (SOLID, PART_SOLID, NON_SOLID)

# McWilliams et al. 2013, the full model with spiculation (docs/DESIGN.md §17 says how they
# were checked). Centring: age 62, size 4 mm, 4 nodules.
COEFFICIENTS: dict[str, float] = {
    "intercept": -6.78917,
    "age_per_year_minus_62": 0.0286687,
    "female": 0.6010727,
    "family_history": 0.296109,
    "emphysema": 0.2953112,
    "size_transform": -5.385484,  # x [(size / 10) ** -0.5 - 1.58113883]
    NON_SOLID: -0.1276173,
    PART_SOLID: 0.3769578,
    "upper_lobe": 0.6581383,
    "nodule_count_minus_4": -0.0824156,
    "spiculation": 0.7729335,
}
SIZE_CENTRE = 1.58113883  # (4 / 10) ** -0.5: the transform is 0 at 4 mm
CLINICAL_INPUTS = ("age", "female", "family_history")
# The model's reference values, used for a missing clinical input only when asked, and then
# marked DEFAULT: the centring age and the reference levels (male, no family history).
DEFAULTS: dict[str, object] = {"age": 62, "female": False, "family_history": False}
INPUT_NAMES = (
    "age",
    "female",
    "family_history",
    "emphysema",
    "size_mm",
    "nodule_type",
    "upper_lobe",
    "nodule_count",
    "spiculation",
)


@dataclass(frozen=True)
class BrockInput:
    """One input's value, where it came from and, in words, how it was obtained."""

    value: object
    source: str
    detail: str = ""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; one of {SOURCES}")

    def to_dict(self) -> dict:
        return {"value": self.value, "source": self.source, "detail": self.detail}


@dataclass(frozen=True)
class BrockResult:
    """The probability (``None`` when not computed) and every input with its source."""

    probability: float | None
    inputs: dict[str, BrockInput]
    missing: list[str] = field(default_factory=list)  # clinical inputs not entered
    defaults_used: list[str] = field(default_factory=list)

    @property
    def computed(self) -> bool:
        return self.probability is not None

    @property
    def note(self) -> str:
        if not self.computed:
            return (
                "not computed: the clinical inputs "
                + ", ".join(self.missing)
                + " were not entered (give them, or ask for the model's defaults)"
            )
        if self.defaults_used:
            return "computed with stated defaults for " + ", ".join(
                f"{n} = {DEFAULTS[n]}" for n in self.defaults_used
            )
        return "computed"

    def to_dict(self) -> dict:
        return {
            "probability": self.probability,
            "computed": self.computed,
            "note": self.note,
            "missing": list(self.missing),
            "defaults_used": list(self.defaults_used),
            "inputs": {n: i.to_dict() for n, i in self.inputs.items()},
        }


def brock_logit(
    age: float,
    female: bool,
    family_history: bool,
    emphysema: bool,
    size_mm: float,
    nodule_type: str,
    upper_lobe: bool,
    nodule_count: int,
    spiculation: bool,
) -> float:
    """The model's linear predictor x (P = 1 / (1 + exp(-x))). ``size_mm``: the nodule's
    longest diameter in mm, as PanCan measured it (docs/DESIGN.md §17)."""
    if nodule_type not in NODULE_TYPES:
        raise ValueError(f"unknown nodule type {nodule_type!r}; one of {NODULE_TYPES}")
    if not size_mm > 0:
        raise ValueError(f"the nodule size must be above 0 mm, got {size_mm}")
    if nodule_count < 1:
        raise ValueError(f"the nodule count must be at least 1, got {nodule_count}")
    c = COEFFICIENTS
    return (
        c["intercept"]
        + c["age_per_year_minus_62"] * (float(age) - 62.0)
        + c["female"] * bool(female)
        + c["family_history"] * bool(family_history)
        + c["emphysema"] * bool(emphysema)
        + c["size_transform"] * ((float(size_mm) / 10.0) ** -0.5 - SIZE_CENTRE)
        + c.get(nodule_type, 0.0)
        + c["upper_lobe"] * bool(upper_lobe)
        + c["nodule_count_minus_4"] * (int(nodule_count) - 4)
        + c["spiculation"] * bool(spiculation)
    )


def brock_probability(**inputs) -> float:
    """P = 1 / (1 + exp(-x)) of :func:`brock_logit`'s keyword inputs."""
    return 1.0 / (1.0 + math.exp(-brock_logit(**inputs)))


def brock_result(inputs: dict[str, BrockInput | None], use_defaults: bool = False) -> BrockResult:
    """The probability of the given inputs (every one of :data:`INPUT_NAMES`; a clinical one may
    be ``None``: then it is not computed, or with ``use_defaults`` computed with
    :data:`DEFAULTS` marked as such)."""
    unknown = set(inputs) - set(INPUT_NAMES)
    if unknown:
        raise ValueError(f"unknown Brock inputs {sorted(unknown)}; the inputs are {INPUT_NAMES}")
    image_missing = [n for n in INPUT_NAMES if n not in CLINICAL_INPUTS and inputs.get(n) is None]
    if image_missing:
        raise ValueError(f"the image-derived Brock inputs {image_missing} are missing")
    missing = [n for n in CLINICAL_INPUTS if inputs.get(n) is None]
    given = {n: i for n, i in inputs.items() if i is not None}
    if missing and not use_defaults:
        return BrockResult(None, given, missing=missing)
    for name in missing:
        given[name] = BrockInput(DEFAULTS[name], DEFAULT, "the model's reference value")
    ordered = {n: given[n] for n in INPUT_NAMES}
    probability = brock_probability(**{n: i.value for n, i in ordered.items()})
    return BrockResult(probability, ordered, missing=missing, defaults_used=missing)
