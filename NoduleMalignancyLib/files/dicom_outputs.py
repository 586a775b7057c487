"""DICOM outputs for PACS: a Segmentation of the nodules and a TID 1500 measurement report.

Why DICOM and why highdicom: a PACS stores and shows DICOM SEG and SR beside the CT they were
derived from, and highdicom (on pydicom) writes both to the standard, including the references
to the source instances. Both need the CT's own DICOM headers, slice by slice
(``files.samples.read_ct_with_dicom``). Codes: standard (SCT, DCM, UCUM) where one exists, the
private scheme ``99NODMAL`` otherwise (docs/DESIGN.md §16).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import NoduleMalignancyLib  # the package root (floor 0): its version

from ..core.atomic import atomic_path
from ..core.clinical.lung_rads import GROUND_GLASS, PART_SOLID, SOLID
from ..core.config import ORDINAL_ATTRIBUTES
from ..core.extras import require_extra
from ..core.geometry import ImageGeometry
from ..core.nodule.analysis import NoduleResult
from ..core.nodule.attributes import LIDC_WORDING, wording
from ..core.nodule.voi import embed_sub_grid, sub_grid_offset
from ..core.result_schema import LIDC_SCALE, field, score_field, shown
from ..core.scope.assessment import withheld

try:
    import highdicom as hd
    from pydicom.sr.codedict import codes
except ModuleNotFoundError:
    require_extra("dicom", "highdicom", "pydicom")  # names the extra to install
    raise

ALGORITHM_NAME = "NoduleMalignancy"
MANUFACTURER = "NoduleMalignancy (research use only)"
PRIVATE_SCHEME = "99NODMAL"
SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
SEG_SERIES_NUMBER = 9101
SR_SERIES_NUMBER = 9102


def private_code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def field_code(value: str, name: str) -> hd.sr.CodedConcept:
    """A private concept for a result field, meaning the schema's label (core/result_schema)."""
    f = field(name)
    probability = " probability" if name.endswith("_probability") else ""
    return private_code(value, f"{f.label}{probability}")


# Private concepts: no standard code exists for these (docs/DESIGN.md §16 lists them).
MALIGNANCY_SD = field_code("MALSD", "malignancy_sd")
CALCIFICATION_PROBABILITY = field_code("CALCP", "calcification_probability")
INTERNAL_STRUCTURE_PROBABILITY = field_code("INTSTRP", "internal_structure_probability")
SOLID_COMPONENT_DIAMETER = field_code("SOLIDD", "lung_rads_solid_mean_diameter_mm")
LUNG_RADS = private_code("LRSUG", "Suggested Lung-RADS v2022 category (baseline)")
LUNG_RADS_FOLLOWUP = private_code("LRSUGFU", "Suggested Lung-RADS v2022 category (follow-up)")
BASELINE_SCREEN = "baseline screen"  # core/clinical/lung_rads.LungRadsSuggestion.screen
BASELINE = object()  # _evaluations: the result's own baseline suggestion
LUNG_RADS_TEXTURE = private_code("LRTEX", "Lung-RADS texture class")
SUPPORTS_4X = private_code("LR4XFEAT", "Feature that could support Lung-RADS 4X")
# The answer's tier (core/scope/assessment.py) and the scope warnings behind it, per nodule.
ASSESSMENT = field_code("ASSESS", "assessment")
SCOPE_WARNING = private_code("SCOPEW", "Scope warning (core/scope/validation.py)")
TEXTURE_CLASS_CODES = {SOLID: "LRTEX-S", PART_SOLID: "LRTEX-PS", GROUND_GLASS: "LRTEX-GG"}
SCORE_UNIT = hd.sr.CodedConcept(value="{score}", scheme_designator="UCUM", meaning="score")
# The UCUM unit of each stored unit of the schema (values are written in their stored units).
UCUM_UNITS = {
    "mm": codes.UCUM.Millimeter,
    "mm³": codes.UCUM.CubicMillimeter,
    "HU": codes.UCUM.HounsfieldUnit,
    "1": codes.UCUM.NoUnits,
    LIDC_SCALE: SCORE_UNIT,
}


def attribute_score_code(attribute: str) -> hd.sr.CodedConcept:
    return private_code(f"{attribute[:8].upper()}S", field(score_field(attribute)).heading)


def attribute_code(attribute: str) -> hd.sr.CodedConcept:
    return private_code(attribute[:8].upper(), f"{attribute.capitalize()} (LIDC)")


def attribute_value_code(attribute: str, score: float) -> hd.sr.CodedConcept:
    """The LIDC rating the score rounds to, as a code: ``SPICULAT-3`` "Medium spiculation"."""
    rating = LIDC_WORDING[attribute].index(wording(attribute, score)) + 1
    return private_code(f"{attribute[:8].upper()}-{rating}", wording(attribute, score))


def code_initials(code: str) -> str:
    """``not_assessed`` -> ``NA``: a code value fits DICOM's 16 characters (SH)."""
    return "".join(word[0] for word in code.split("_")).upper()


def assessment_code(tier: str) -> hd.sr.CodedConcept:
    """``ASSESS-NA`` "Not assessed": the tier as a code with the schema's words."""
    return private_code(f"ASSESS-{code_initials(tier)}", shown("assessment", tier))


def warning_code(code: str) -> hd.sr.CodedConcept:
    """A scope warning: ``SCOPE-OL`` "outside lung" (the code's initials and words)."""
    return private_code(f"SCOPE-{code_initials(code)}", code.replace("_", " "))


def lung_rads_code(category: str, screen: str = BASELINE_SCREEN) -> hd.sr.CodedConcept:
    return private_code(f"LR-{category}", f"Lung-RADS {category} (suggested, {screen})")


def texture_class_code(texture_class: str) -> hd.sr.CodedConcept:
    return private_code(TEXTURE_CLASS_CODES[texture_class], texture_class)


def mask_on_ct(result: NoduleResult, geometry: ImageGeometry) -> np.ndarray:
    """The result's CT-grid mask placed in the whole CT ``geometry`` (z, y, x, uint8).

    Checks that the analyzed grid is this CT's lattice (spacing, direction, voxel positions,
    extent): a volume analyzed in a scene must be the DICOM series its SEG will reference.
    """
    grid = result.ct_grid
    if grid is None or result.segmentation_mask_ct is None:
        raise ValueError("the result has no mask on the CT grid (analyzed with map_to_ct=False)")
    same = np.allclose(grid.spacing, geometry.spacing, atol=1e-4) and np.allclose(
        grid.direction, geometry.direction, atol=1e-5
    )
    try:
        offset = sub_grid_offset(geometry, grid) if same else None
    except ValueError:  # not on the lattice
        offset = None
    if (
        offset is None
        or (offset < 0).any()
        or (offset + np.asarray(grid.size) > geometry.size).any()
    ):
        raise ValueError(
            "the analyzed volume is not on this DICOM series' grid (spacing, direction or "
            "position differ): choose the series the volume was loaded from"
        )
    return embed_sub_grid(result.segmentation_mask_ct.astype(np.uint8), offset, geometry.shape_zyx)


def check_slices(datasets: Sequence, geometry: ImageGeometry) -> None:
    """The headers must be the CT's slices in order: slice k of the volume is dataset k.

    A mask frame is matched to its source instance by index, so a header out of order would put
    a nodule on the wrong slice; checked on the image position of every slice (0.01 mm).
    """
    nx, ny, nz = geometry.size
    if len(datasets) != nz:
        raise ValueError(f"{len(datasets)} DICOM slices for a CT of {nz} slices")
    for k, ds in enumerate(datasets):
        if (int(ds.Rows), int(ds.Columns)) != (ny, nx):
            raise ValueError(f"DICOM slice {k} is {ds.Rows} x {ds.Columns}, the CT {ny} x {nx}")
        expected = geometry.index_to_lps((0, 0, k))
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        if np.abs(position - expected).max() > 1e-2:
            raise ValueError(
                f"DICOM slice {k} lies at {position.tolist()}, the CT's slice {k} at "
                f"{np.round(expected, 3).tolist()}: not the series the CT was read from"
            )


def build_segmentation(
    datasets: Sequence,
    masks_zyx: Sequence[np.ndarray],
    results: Sequence[NoduleResult],
    labels: Sequence[str],
) -> hd.seg.Segmentation:
    """One BINARY segment per nodule; frames are the source slices that hold a nodule."""
    version = results[0].model_version
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=label[:64],
            anatomic_regions=[codes.SCT.Lung],
        )
        for i, label in enumerate(labels)
    ]
    pixels = np.stack([np.asarray(m, dtype=bool) for m in masks_zyx], axis=-1)
    return hd.seg.Segmentation(
        source_images=list(datasets),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=[NoduleMalignancyLib.__version__, version],
        device_serial_number="0",
        content_label="NODULES",
        content_description="Lung nodule segmentation (suggestion, research use)",
        series_description="NoduleMalignancy nodules",
    )


def _measurements(result: NoduleResult, algorithm) -> list[hd.sr.Measurement]:
    """The result's numbers by schema field, each in its stored unit (UCUM)."""
    values = result.values()
    concepts = [  # (concept, schema field, derivation)
        (codes.SCT.Volume, "volume_mm3", None),
        (codes.SCT.LongAxis, "diameter_mm", None),
        (codes.SCT.ShortAxis, "short_axis_mm", None),
        (codes.SCT.Diameter, "mean_diameter_mm", codes.SCT.Mean),
        (codes.DCM.AttenuationCoefficient, "mean_hu", codes.SCT.Mean),
        (codes.DCM.ProbabilityOfCancer, "malignancy_probability", None),
        (MALIGNANCY_SD, "malignancy_sd", None),
        (CALCIFICATION_PROBABILITY, "calcification_probability", None),
        (INTERNAL_STRUCTURE_PROBABILITY, "internal_structure_probability", None),
        *((attribute_score_code(a), score_field(a), None) for a in ORDINAL_ATTRIBUTES),
    ]
    if values["lung_rads"]:
        concepts.append((SOLID_COMPONENT_DIAMETER, "lung_rads_solid_mean_diameter_mm", None))
    if not result.assessment.answered:
        concepts = [c for c in concepts if not withheld(c[1])]
    return [
        hd.sr.Measurement(
            name=concept,
            value=float(values[name]),
            unit=UCUM_UNITS[field(name).unit],
            derivation=derivation,
            algorithm_id=algorithm,
        )
        for concept, name, derivation in concepts
    ]


def _evaluations(result: NoduleResult, lung_rads=BASELINE) -> list[hd.sr.QualitativeEvaluation]:
    """The assessment and its warnings first, then the ratings and Lung-RADS (for a nodule
    that is not assessed: no malignancy rating, no Lung-RADS). ``lung_rads``: the category to
    report, the result's baseline suggestion unless given (the exam's follow-up category)."""
    answered = result.assessment.answered
    out = [hd.sr.QualitativeEvaluation(ASSESSMENT, assessment_code(result.assessment.tier))]
    out += [
        hd.sr.QualitativeEvaluation(SCOPE_WARNING, warning_code(w.code)) for w in result.warnings
    ]
    out += [
        hd.sr.QualitativeEvaluation(attribute_code(a), attribute_value_code(a, result.scores[a]))
        for a in ORDINAL_ATTRIBUTES
        if answered or a != "malignancy"
    ]
    lr = result.suggested_lung_rads if lung_rads is BASELINE else lung_rads
    if lr is not None:
        baseline = lr.screen == BASELINE_SCREEN
        concept = LUNG_RADS if baseline else LUNG_RADS_FOLLOWUP
        out.append(hd.sr.QualitativeEvaluation(concept, lung_rads_code(lr.category, lr.screen)))
        out.append(
            hd.sr.QualitativeEvaluation(LUNG_RADS_TEXTURE, texture_class_code(lr.texture_class))
        )
        if lr.supports_4x:
            out.append(
                hd.sr.QualitativeEvaluation(SUPPORTS_4X, private_code("SPICULATION", "Spiculation"))
            )
    return out


def _referenced_segment(segmentation, number: int, datasets, mask_zyx) -> hd.sr.ReferencedSegment:
    """The segment and the CT instances it was drawn on (the slices its mask touches).

    Built from the mask rather than with ``ReferencedSegment.from_segmentation``, which fails
    on a one-segment SEG (its segment identification is shared, not per frame).
    """
    slices = np.flatnonzero(np.asarray(mask_zyx).reshape(len(datasets), -1).any(axis=1))
    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=number,
        source_images=[
            hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=datasets[k].SOPClassUID,
                referenced_sop_instance_uid=datasets[k].SOPInstanceUID,
            )
            for k in slices
        ],
    )


@dataclass(frozen=True)
class GroupExtras:
    """What a report adds to a nodule's group beyond its analysis (the exam: the prior's
    measurements, the change, Brock): (concept, value, UCUM unit) measurements, (concept,
    code) evaluations, and the Lung-RADS suggestion to report instead of the baseline one."""

    measurements: tuple = ()
    evaluations: tuple = ()
    lung_rads: object = BASELINE


def build_report(
    datasets: Sequence,
    segmentation: hd.seg.Segmentation,
    results: Sequence[NoduleResult],
    labels: Sequence[str],
    masks_zyx: Sequence[np.ndarray],
    extras: Sequence[GroupExtras] | None = None,
    other_groups: Sequence = (),
    other_evidence: Sequence = (),
    series_description: str = "NoduleMalignancy measurements (suggestion, research use)",
) -> hd.sr.Comprehensive3DSR:
    """TID 1500: one volumetric ROI group per nodule (TID 1411), referencing its segment.

    ``extras`` add to each nodule's group, ``other_groups`` are further measurement groups
    (the exam's own, TID 1501), ``other_evidence`` further referenced instances (a prior
    CT's series)."""
    version = results[0].model_version
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=version)
    extras = list(extras) if extras is not None else [GroupExtras()] * len(results)
    groups = []
    for i, (result, label, extra) in enumerate(zip(results, labels, extras, strict=True)):
        description = segmentation.SegmentSequence[i]
        measurements = _measurements(result, algorithm) + [
            hd.sr.Measurement(name=c, value=float(v), unit=u, algorithm_id=algorithm)
            for c, v, u in extra.measurements
        ]
        evaluations = _evaluations(result, extra.lung_rads) + [
            hd.sr.QualitativeEvaluation(c, v) for c, v in extra.evaluations
        ]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=description.TrackingUID, identifier=label[:64]
                ),
                referenced_segment=_referenced_segment(segmentation, i + 1, datasets, masks_zyx[i]),
                finding_type=codes.SCT.Nodule,
                finding_category=codes.SCT.MorphologicallyAbnormalStructure,
                finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=evaluations,
            )
        )
    groups += list(other_groups)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=ALGORITHM_NAME, model_name=version
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*datasets, segmentation, *other_evidence],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
    )


def write_dicom_outputs(
    datasets: Sequence,
    geometry: ImageGeometry,
    masks_zyx: Sequence[np.ndarray],
    results: Sequence[NoduleResult],
    out_dir: str | Path,
    labels: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write ``seg.dcm`` and ``sr.dcm`` for the nodules of one CT series.

    ``datasets`` are the series' headers in slice order, ``masks_zyx`` each nodule's mask on
    the whole CT grid (``geometry``), ``results`` the analyses. Returns the paths by kind.
    """
    if not results or len(masks_zyx) != len(results):
        raise ValueError("one mask per result, at least one result")
    labels = (
        list(labels) if labels is not None else [f"nodule {i + 1}" for i in range(len(results))]
    )
    check_slices(datasets, geometry)
    for mask in masks_zyx:
        if tuple(mask.shape) != geometry.shape_zyx:
            raise ValueError(f"mask of shape {mask.shape} for a CT of {geometry.shape_zyx}")
    seg = build_segmentation(datasets, masks_zyx, results, labels)
    sr = build_report(datasets, seg, results, labels, masks_zyx)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"seg": out / SEG_FILE, "sr": out / SR_FILE}
    save_dicom(seg, files["seg"])
    save_dicom(sr, files["sr"])
    return files


def save_dicom(dataset, path: Path) -> Path:
    """Write a DICOM file (with its file meta) whole or not at all."""
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path
