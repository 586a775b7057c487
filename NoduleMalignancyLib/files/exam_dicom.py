"""The exam as DICOM: a SEG of its nodules and a TID 1500 SR with every nodule's measurements,
its measurements on the prior CT, the change, the volume-doubling time, its Lung-RADS and Brock,
and the exam's Lung-RADS (docs/DESIGN.md §17).

Why a second file set beside the nodule SR: a PACS shows the exam's report with the study; the
SR builder is the nodule SR's (files/dicom_outputs.py), given what the exam adds per nodule.
The values are taken from the exam document as written to ``exam.json``, so the two agree.
Refused nodules have no outline, so no segment: they are in ``exam.json`` and ``exam.html``
only. The prior CT's instances are referenced when it was read from DICOM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
from pydicom.sr.codedict import codes

from ..core.clinical.exam import Exam
from ..core.geometry import ImageGeometry
from ..core.nodule.analysis import map_results_to_ct
from .dicom_outputs import (
    GroupExtras,
    build_report,
    build_segmentation,
    check_slices,
    code_initials,
    lung_rads_code,
    mask_on_ct,
    private_code,
    save_dicom,
)

SEG_FILE = "exam_seg.dcm"
SR_FILE = "exam_sr.dcm"
PERCENT = hd.sr.CodedConcept(value="%", scheme_designator="UCUM", meaning="Percent")
DAYS = hd.sr.CodedConcept(value="d", scheme_designator="UCUM", meaning="Day")

# Private concepts (no standard code for these; docs/DESIGN.md §17 lists them).
BROCK = private_code("BROCKP", "Brock (PanCan) full model probability of cancer")
EXAM_LUNG_RADS = private_code("LREXAM", "Suggested Lung-RADS v2022 category of the exam")
LUNG_RADS_BEHAVIOR = private_code("LRBEH", "Lung-RADS behavior since the prior")
LUNG_RADS_SUGGESTION = private_code("LRSUGG", "Lung-RADS modifier the reader may apply")
PRIOR_STATUS = private_code("PRIORST", "Comparison with the prior CT")
# (concept, key of the nodule's ``prior`` entry, unit)
PRIOR_MEASUREMENTS = (
    (private_code("PRIORVOL", "Volume on the prior CT"), "volume_mm3", codes.UCUM.CubicMillimeter),
    (private_code("PRIORLAX", "Long axis on the prior CT"), "diameter_mm", codes.UCUM.Millimeter),
    (
        private_code("PRIORMD", "Mean diameter on the prior CT"),
        "mean_diameter_mm",
        codes.UCUM.Millimeter,
    ),
    (private_code("LAXCHG", "Long axis change"), "diameter_change_mm", codes.UCUM.Millimeter),
    (
        private_code("MDCHG", "Mean diameter change"),
        "mean_diameter_change_mm",
        codes.UCUM.Millimeter,
    ),
    (private_code("VOLCHG", "Volume change"), "volume_change_percent", PERCENT),
    (private_code("VDT", "Volume doubling time"), "vdt_days", DAYS),
    (private_code("INTERVAL", "Interval since the prior CT"), "interval_days", DAYS),
)
# The VDT's interval (core/prior/growth.py): the doubling times of the lowest and highest of the
# ensemble's volume ratio and each fold's paired ratio, so it holds the VDT; none when those
# ratios hold 1 (stable within the segmentation's noise).
VDT_INTERVAL = (
    private_code("VDTLO", "VDT, lowest over the ensemble's and folds' ratios"),
    private_code("VDTHI", "VDT, highest over the ensemble's and folds' ratios"),
)


def _code(prefix: str, words: str) -> hd.sr.CodedConcept:
    """``PRIOR-NC`` "not compared": a status as a code of its words' initials."""
    return private_code(f"{prefix}-{code_initials(words.replace(' ', '_'))}"[:16], words)


def nodule_extras(entry: dict, lung_rads) -> GroupExtras:
    """What the exam adds to a nodule's group, from its ``exam.json`` entry."""
    measurements = []
    if entry.get("brock_probability") is not None:
        measurements.append((BROCK, entry["brock_probability"], codes.UCUM.NoUnits))
    evaluations = []
    prior = entry.get("prior")
    if prior:
        evaluations.append((PRIOR_STATUS, _code("PRIOR", prior["status"])))
        measurements += [
            (concept, prior[key], unit)
            for concept, key, unit in PRIOR_MEASUREMENTS
            if prior.get(key) is not None
        ]
        bounds = prior.get("vdt_interval_days")
        if bounds and None not in bounds:
            measurements += [(c, v, DAYS) for c, v in zip(VDT_INTERVAL, bounds, strict=True)]
    if entry.get("lung_rads_behavior"):
        evaluations.append((LUNG_RADS_BEHAVIOR, _code("LRBEH", entry["lung_rads_behavior"])))
    return GroupExtras(tuple(measurements), tuple(evaluations), lung_rads)


def exam_group(document: dict) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The exam's own group (TID 1501): its category and the modifiers suggested (S, 4X)."""
    evaluations = [
        hd.sr.QualitativeEvaluation(EXAM_LUNG_RADS, lung_rads_code(document["lung_rads"], "exam"))
    ]
    for modifier in ("4X", "S"):
        if any(s.startswith(f"{modifier} ") for s in document["lung_rads_suggestions"]):
            code = private_code(f"LRMOD-{modifier}", f"{modifier} could apply")
            evaluations.append(hd.sr.QualitativeEvaluation(LUNG_RADS_SUGGESTION, code))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="exam"),
        qualitative_evaluations=evaluations,
    )


def write_exam_dicom(
    document: dict,
    exam: Exam,
    datasets: Sequence,
    geometry: ImageGeometry,
    out_dir: str | Path,
    prior_datasets: Sequence | None = None,
) -> dict[str, Path]:
    """Write ``exam_seg.dcm`` and ``exam_sr.dcm``; ``{}`` when no nodule has an outline.

    ``document`` is the exam as written to ``exam.json`` (its nodules in ``exam``'s order),
    ``datasets`` the current CT's headers in slice order, ``prior_datasets`` the prior's."""
    check_slices(datasets, geometry)
    rows = [
        (entry, nodule)
        for entry, nodule in zip(document["nodules"], exam.nodules, strict=True)
        if nodule.result is not None
    ]
    if not rows:
        return {}
    results, masks = [], []
    for _, nodule in rows:
        if nodule.result.segmentation_mask_ct is None:
            map_results_to_ct(nodule.result, geometry)
        results.append(nodule.result)
        masks.append(mask_on_ct(nodule.result, geometry))
    labels = [entry["name"] for entry, _ in rows]
    extras = [nodule_extras(entry, nodule.lung_rads) for entry, nodule in rows]
    seg = build_segmentation(datasets, masks, results, labels)
    sr = build_report(
        datasets,
        seg,
        results,
        labels,
        masks,
        extras=extras,
        other_groups=[exam_group(document)],
        other_evidence=list(prior_datasets or ()),
        series_description="NoduleMalignancy exam report (suggestion, research use)",
    )
    out = Path(out_dir)
    return {"seg": save_dicom(seg, out / SEG_FILE), "sr": save_dicom(sr, out / SR_FILE)}
