"""ACR Lung-RADS v2022 (American College of Radiology, released November 2022): the categories,
their descriptors, the findings that define them and their management, as data.

Why as data: the exam report prints the category's management beside the category, and the
rules in core/clinical/lung_rads.py (baseline) and core/clinical/lung_rads_followup.py (new, growing, stable)
cite the rows they apply; one table keeps the words the same everywhere (docs/DESIGN.md §16).
Sizes are mean diameters (the mean of the long and short axes, to 0.1 mm); the volumes are the
table's equivalents, which this product does not use for the category. Growth: an increase of
the mean diameter by more than 1.5 mm within 12 months.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATEGORY_ORDER", "LUNG_RADS_VERSION", "TABLE", "CategoryRow", "more_suspicious", "row"]

LUNG_RADS_VERSION = "ACR Lung-RADS v2022"
# From the least to the most suspicious; the exam takes its most suspicious nodule's category.
CATEGORY_ORDER = ("0", "1", "2", "3", "4A", "4B", "4X")


@dataclass(frozen=True)
class CategoryRow:
    category: str
    descriptor: str
    findings: tuple[str, ...]
    management: str


TABLE: dict[str, CategoryRow] = {
    r.category: r
    for r in (
        CategoryRow(
            "0",
            "Incomplete",
            (
                "Prior chest CT examination(s) being located for comparison",
                "Part or all of the lungs cannot be evaluated",
                "Findings suggestive of an inflammatory or infectious process",
            ),
            "Comparison to prior chest CT; additional lung cancer screening CT imaging needed; "
            "1-3 month LDCT for findings suggestive of an inflammatory or infectious process",
        ),
        CategoryRow(
            "1",
            "Negative",
            (
                "No lung nodules",
                "Nodule(s) with benign features: complete, central, popcorn or concentric ring "
                "calcifications, or fat-containing nodules",
            ),
            "12-month screening LDCT",
        ),
        CategoryRow(
            "2",
            "Benign: based on imaging features or indolent behavior",
            (
                "Juxtapleural nodule: < 10 mm (524 mm³) mean diameter at baseline or new, and "
                "solid, smooth margins, oval, lentiform or triangular shape",
                "Solid nodule: < 6 mm (< 113 mm³) at baseline, or new < 4 mm (< 34 mm³)",
                "Part solid nodule: < 6 mm total mean diameter (< 113 mm³) at baseline",
                "Non solid nodule (GGN): < 30 mm (< 14137 mm³) at baseline, new or growing; or "
                ">= 30 mm stable or slowly growing",
                "Airway nodule: subsegmental, at baseline, new or stable",
                "Category 3 lesion that is stable or decreased in size at 6-month follow-up CT, "
                "or category 4B lesion proven benign after appropriate diagnostic workup",
            ),
            "12-month screening LDCT",
        ),
        CategoryRow(
            "3",
            "Probably benign: based on imaging features or behavior",
            (
                "Solid nodule: >= 6 to < 8 mm (>= 113 to < 268 mm³) at baseline, or new 4 mm to "
                "< 6 mm (34 to < 113 mm³)",
                "Part solid nodule: >= 6 mm total mean diameter (>= 113 mm³) with solid "
                "component < 6 mm (< 113 mm³) at baseline, or new < 6 mm total mean diameter "
                "(< 113 mm³)",
                "Non solid nodule (GGN): >= 30 mm (>= 14137 mm³) at baseline or new",
                "Atypical pulmonary cyst: growing cystic component (mean diameter) of a "
                "thick-walled cyst",
                "Category 4A lesion that is stable or decreased in size at 3-month follow-up CT "
                "(excluding airway nodules)",
            ),
            "6-month LDCT",
        ),
        CategoryRow(
            "4A",
            "Suspicious",
            (
                "Solid nodule: >= 8 to < 15 mm (>= 268 to < 1767 mm³) at baseline, or growing "
                "< 8 mm (< 268 mm³), or new 6 to < 8 mm (113 to < 268 mm³)",
                "Part solid nodule: >= 6 mm total mean diameter (>= 113 mm³) with solid "
                "component >= 6 mm to < 8 mm (>= 113 to < 268 mm³) at baseline, or new or "
                "growing < 4 mm (< 34 mm³) solid component",
                "Airway nodule: segmental or more proximal, at baseline or new",
                "Atypical pulmonary cyst: thick-walled cyst at baseline, or multilocular cyst at "
                "baseline, or a thin- or thick-walled cyst that becomes multilocular",
            ),
            "3-month LDCT; PET/CT may be considered if there is a >= 8 mm (>= 268 mm³) solid "
            "nodule or solid component",
        ),
        CategoryRow(
            "4B",
            "Very suspicious",
            (
                "Solid nodule: >= 15 mm (>= 1767 mm³) at baseline, or new or growing >= 8 mm "
                "(>= 268 mm³)",
                "Part solid nodule: solid component >= 8 mm (>= 268 mm³) at baseline, or new or "
                "growing >= 4 mm (>= 34 mm³) solid component",
                "Airway nodule: segmental or more proximal, stable or growing",
                "Atypical pulmonary cyst: thick-walled cyst with growing wall thickness or "
                "nodularity, or growing multilocular cyst (mean diameter), or multilocular cyst "
                "with increased loculation or new or increased opacity",
                "Slow growing solid or part solid nodule that shows growth over multiple "
                "screening exams",
            ),
            "Diagnostic chest CT with or without contrast; PET/CT may be considered if there is "
            "a >= 8 mm (>= 268 mm³) solid nodule or solid component; tissue sampling; and/or "
            "referral for further clinical evaluation. Management depends on clinical "
            "evaluation, patient preference and the probability of malignancy",
        ),
        CategoryRow(
            "4X",
            "Very suspicious",
            (
                "Category 3 or 4 nodules with additional features or imaging findings that "
                "increase the suspicion for lung cancer",
            ),
            "As for 4B: diagnostic chest CT with or without contrast; PET/CT may be considered "
            "if there is a >= 8 mm (>= 268 mm³) solid nodule or solid component; tissue "
            "sampling; and/or referral for further clinical evaluation",
        ),
        CategoryRow(
            "S",
            "Significant or potentially significant (a modifier added to categories 0-4)",
            (
                "Clinically significant or potentially significant findings unrelated to lung cancer",
            ),
            "As appropriate to the specific finding",
        ),
    )
}


def row(category: str) -> CategoryRow:
    """The table's row of a category; a ``KeyError`` naming it when the table has none."""
    try:
        return TABLE[category]
    except KeyError:
        raise KeyError(f"{category!r} is not a {LUNG_RADS_VERSION} category") from None


def more_suspicious(a: str, b: str) -> bool:
    """Whether category ``a`` is more suspicious than ``b`` (:data:`CATEGORY_ORDER`)."""
    return CATEGORY_ORDER.index(a) > CATEGORY_ORDER.index(b)
