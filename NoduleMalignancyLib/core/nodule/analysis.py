"""One nodule, one click: VOI -> ensemble -> result record with maps on the CT grid.

Plain numpy in and out (no ``slicer``): the MRML logic, the CLI and the batch predictor all call
:func:`analyze_point`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..blas_threads import single_threaded_blas
from ..clinical.lung_rads import (
    LungRadsSuggestion,
    solid_component_mean_diameter_mm,
    suggest_lung_rads,
)
from ..clinical.lung_rads import texture_class as texture_class_of
from ..config import ATTRIBUTES, ORDINAL_ATTRIBUTES
from ..geometry import ImageGeometry
from ..model.ensemble import Ensemble, FoldOutputs
from ..model.fusion import (
    MALIGNANCY_PROBABILITY,
    MEASUREMENTS,
    apply_fusion,
    apply_fusion_logit,
    calibration_slope,
    head_of,
    measured_features,
)
from ..model.gates import gate_health
from ..model.similar import summary_line as similar_summary_line
from ..result_schema import JSON, fields_for, score_field
from ..scope.assessment import NOT_ASSESSED, Assessment, assess
from ..scope.validation import (
    Finding,
    check_image,
    check_point,
    check_result,
    chest_lungs,
    lung_side,
    vessel_figures,
)
from .attributes import score_from_probability, wording
from .evidence import evidence_maps
from .explanation import MalignancyExplanation, explain_malignancy
from .measurements import component_at_center, hu_gradient_magnitude, measure_nodule, nodule_size
from .recentre import nodule_centre, reaches_field_edge, same_nodule
from .voi import VoiSample, context_box_for_nodule, grid_points_lps, sample_voi, voi_map_to_ct

MALIGNANCY = ATTRIBUTES.index("malignancy")
# NoduleResult fields filled from measurements.measure_nodule (same names).
MEASURED_FIELDS = (*MEASUREMENTS, "short_axis_mm", "mean_diameter_mm")
SEGMENTATION_THRESHOLD = 0.5
MAX_CONTEXT_PASSES = 5


@dataclass
class NoduleResult:
    """Everything one analysis produces; maps are (z, y, x) float32 arrays with their grids."""

    point_lps: tuple[float, float, float]
    malignancy_probability: float
    malignancy_sd: float
    fold_malignancy_probabilities: list[float]
    scores: dict[str, float]  # the 7 ordinal attributes on the LIDC 1-5 scale
    calcification_probability: float
    internal_structure_probability: float
    volume_mm3: float
    diameter_mm: float  # longest axial diameter
    short_axis_mm: float
    mean_diameter_mm: float
    mean_hu: float  # inside the segmentation
    calcified_fraction: float  # of the segmented voxels >= 200 HU
    elongation: float  # short axis / longest axial diameter
    compactness: float  # 36 pi V^2 / A^3 of the voxel surface
    boundary_gradient_hu_per_mm: float  # margin sharpness
    boundary_contrast_hu: float  # inside vs a 2-voxel shell outside
    model_version: str
    voi_geometry: ImageGeometry
    segmentation_probability_voi: np.ndarray
    segmentation_mask_voi: np.ndarray
    evidence_voi: dict[str, np.ndarray]  # per scale + "combined", logit per mL
    malignancy_mil_logit: float  # fold-mean MIL bag logit (the network's, unfused)
    # The shown logit in named parts; the evidence maps add up to its image_evidence part.
    explanation: MalignancyExplanation
    # Gate health per fold and scale (core/model/gates.py): is the attention alive?
    gates: dict = field(default_factory=dict)
    # Scope warnings (core/scope/validation.py): the numbers are shown, flagged.
    warnings: list[Finding] = field(default_factory=list)
    scope_figures: dict = field(default_factory=dict)
    ct_grid: ImageGeometry | None = None  # CT sub-grid of the maps below
    segmentation_mask_ct: np.ndarray | None = None
    evidence_ct: dict[str, np.ndarray] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    context_passes: int = 1  # network passes the context policy needed (1 with a given context)
    # Suggested Lung-RADS v2022 baseline category with its inputs (docs/DESIGN.md §16).
    lung_rads: LungRadsSuggestion | None = None
    # Each fold's gate-pooled features (K, F): the query of the similar-nodule index.
    fold_bag_features: np.ndarray | None = None
    # The closest LIDC nodules in that embedding (core/model/similar.py), nearest first.
    similar_nodules: list = field(default_factory=list)
    # Each fold's own outline's volume: the segmentation's uncertainty (a growth's interval,
    # core/prior/growth.py).
    fold_volumes_mm3: list[float] = field(default_factory=list)
    # The VOI centre and context crop of the pass the answer comes from (core/prior/prior_compare.py
    # shows the prior the same crop, mapped).
    voi_center_lps: np.ndarray | None = None
    context_box: ImageGeometry | None = None

    @property
    def wording(self) -> dict[str, str]:
        return {a: wording(a, s) for a, s in self.scores.items()}

    @property
    def assessment(self) -> Assessment:
        """The answer's tier from the scope warnings (core/scope/assessment.py)."""
        return assess(self.warnings)

    @property
    def suggested_lung_rads(self) -> LungRadsSuggestion | None:
        """The Lung-RADS suggestion a surface shows: none when the point is not assessed."""
        return self.lung_rads if self.assessment.tier != NOT_ASSESSED else None

    def values(self) -> dict:
        """The result's fields by their schema names (core/result_schema.py), raw values in
        their stored units: what every surface formats."""
        lr = self.suggested_lung_rads
        words = self.wording
        assessment = self.assessment
        return {
            "point_lps": list(self.point_lps),
            "assessment": assessment.tier,
            "assessment_reason": assessment.reason,
            "malignancy_probability": self.malignancy_probability,
            "malignancy_sd": self.malignancy_sd,
            "fold_malignancy_probabilities": self.fold_malignancy_probabilities,
            **{score_field(a): s for a, s in self.scores.items()},
            **{f"{a}_wording": words[a] for a in self.scores},
            "calcification_probability": self.calcification_probability,
            "internal_structure_probability": self.internal_structure_probability,
            **{f: getattr(self, f) for f in MEASURED_FIELDS},
            "malignancy_mil_logit": self.malignancy_mil_logit,
            "malignancy_logit": self.explanation.logit,
            **{f"malignancy_logit_{p}": v for p, v in self.explanation.parts.items()},
            "lung_rads": lr.category if lr else "",
            "lung_rads_texture_class": lr.texture_class if lr else "",
            "lung_rads_solid_mean_diameter_mm": lr.solid_mean_diameter_mm if lr else None,
            "lung_rads_reasons": list(lr.reasons) if lr else [],
            "lung_rads_supports_4x": list(lr.supports_4x) if lr else [],
            "warnings": [w.code for w in self.warnings],
            "warning_messages": [w.message for w in self.warnings],
            "model_version": self.model_version,
            "similar_nodules_summary": similar_summary_line(self.similar_nodules),
            "context_passes": self.context_passes,
        }

    def summary(self) -> dict:
        """JSON-ready ``result.json``: the schema's JSON fields (no arrays)."""
        details = {
            "explanation": self.explanation.summary(),
            "gates": self.gates,
            "scope_figures": self.scope_figures,
            "timings_s": self.timings_s,
            "similar_nodules": [n.to_dict() for n in self.similar_nodules],
        }
        values = self.values() | details
        return {f.name: values[f.name] for f in fields_for(JSON) if f.name in values}


def nodule_mask(prob_voi: np.ndarray, valid_voi: np.ndarray) -> np.ndarray:
    """The clicked nodule: the thresholded probability's component at the centre, inside the
    context crop only. Outside it the network saw no image (validity 0), so a probability there
    is no evidence; counting it let the second pass's crop, and with it the segmentation, grow.
    """
    return component_at_center((prob_voi >= SEGMENTATION_THRESHOLD) & (valid_voi > 0.5))


@single_threaded_blas()  # numpy's small BLAS calls off torch's cores (its docstring)
def analyze_point(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    point_lps,
    ensemble: Ensemble,
    context: ImageGeometry | None = None,
    map_to_ct: bool = True,
    patient_id: str | None = None,
) -> NoduleResult:
    """Analyze the nodule at a world LPS point of a CT (context policy: :func:`sample_and_run`).

    ``patient_id``: the CT's patient (DICOM PatientID), whose own nodules the similar-nodule
    index never offers (an LIDC CT would otherwise find the clicked nodule itself).
    """
    t0 = time.perf_counter()
    timings = {"voi_sampling": 0.0, "network": 0.0}
    image_warnings = check_image(image_zyx, geometry)
    check_point(image_zyx, geometry, point_lps)
    timings["checks"] = time.perf_counter() - t0
    sample, out, passes = sample_and_run(image_zyx, geometry, point_lps, ensemble, context, timings)
    result = _result(sample, out, ensemble, point_lps, timings, patient_id)
    t = time.perf_counter()
    lungs = chest_lungs(image_zyx, geometry)  # one cache lookup (a hash of the CT) per click
    side, side_figures = lung_side(image_zyx, geometry, point_lps, result.diameter_mm, lungs=lungs)
    if side == "inside":
        side_figures |= vessel_figures(
            image_zyx,
            geometry,
            result.segmentation_mask_voi,
            result.voi_geometry,
            result.diameter_mm,
            lungs=lungs,
        )
    found, result.scope_figures = check_result(
        result.segmentation_mask_voi,
        sample.valid,
        sample.hu,
        ensemble.manifest.voi.spacing_zyx,
        result.diameter_mm,
        result.malignancy_sd,
        side=side,
        vessel_score=side_figures.get("vessel_score"),
        blob_strength=side_figures.get("blob_strength"),
        axis_ends_hu=side_figures.get("axis_ends_hu"),
        point_zyx=sample.geometry.lps_to_index(np.asarray(point_lps, dtype=float))[::-1],
    )
    result.scope_figures |= side_figures
    result.warnings = [*image_warnings, *found]
    if result.assessment.tier == NOT_ASSESSED:  # no Lung-RADS suggestion off a nodule
        result.lung_rads = None
    timings["checks"] += time.perf_counter() - t
    if map_to_ct:
        t = time.perf_counter()
        map_results_to_ct(result, geometry)
        timings["evidence_resampling"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    result.timings_s = timings
    result.context_passes = passes
    return result


def sample_and_run(
    image_zyx: np.ndarray,
    geometry: ImageGeometry,
    point_lps,
    ensemble: Ensemble,
    context: ImageGeometry | None = None,
    timings: dict | None = None,
) -> tuple[VoiSample, FoldOutputs, int]:
    """The VOI the analysis settles on (context policy below), the folds' outputs on it, and
    the number of network passes it took. Evaluation re-runs the network on this very sample.

    Context policy (docs/DESIGN.md §2): the network was trained on tight crops, so it sees the
    same here. Without an explicit ``context`` a first pass uses the minimal crop around the
    point; its segmentation (inside the crop) gives the nodule's in-plane extent and longest
    axial diameter, from which the crop is rebuilt as in the training data (in z: from the
    diameter, since the segmentation's z extent only follows the crop) and the nodule analyzed
    again, the VOI centred on the outline's centroid snapped to the CT grid (core/nodule/recentre.py:
    the input then depends on the nodule, not on the pixel clicked), until neither the crop nor
    the centre changes (at most ``MAX_CONTEXT_PASSES`` passes; unsettled, an outline that grew to
    the field of view's edge is replaced by the last re-centred one inside it). A pass whose
    outline is empty or shares no voxel with the previous one (it left the clicked nodule) is not
    taken.
    """
    cfg = ensemble.manifest.voi
    timings = timings if timings is not None else {"voi_sampling": 0.0, "network": 0.0}

    def run(ctx: ImageGeometry, centre_lps) -> tuple[VoiSample, object]:
        t = time.perf_counter()
        sample = sample_voi(image_zyx, geometry, centre_lps, cfg, context=ctx)
        timings["voi_sampling"] += time.perf_counter() - t
        t = time.perf_counter()
        out = ensemble.run(sample.channels[None])
        timings["network"] += time.perf_counter() - t
        return sample, out

    passes = 1
    fov_z_mm = (cfg.shape_zyx[0] - 1) * cfg.spacing_zyx[0]
    if context is None:
        centre = np.asarray(point_lps, dtype=float)
        box = context_box_for_nodule(geometry, centre)
        sample, out = run(box, centre)
        seen = nodule_mask(out.seg_probability.mean(0)[0], sample.valid)
        taken = [(box, centre, sample, out, seen)]  # the passes taken, in order
        while seen.any():
            extent = grid_points_lps(sample.geometry)[seen]
            diameter = nodule_size(seen, cfg.spacing_zyx).diameter_mm
            moved = nodule_centre(seen, sample.geometry, geometry)
            grown = context_box_for_nodule(
                geometry, moved, extent, axial_diameter_mm=diameter, fov_z_mm=fov_z_mm
            )
            again = [i for i, t in enumerate(taken) if t[0] == grown and np.allclose(t[1], moved)]
            if again:  # settled (the last pass) or a cycle: whichever click led into it, the
                # cycle's pass with the lowest centre (z, y, x) is the answer
                box, centre, sample, out, seen = min(taken[again[0] :], key=_lowest_centre)
                break
            if passes == MAX_CONTEXT_PASSES:  # unsettled: an outline that grew with its crops
                # (the network fills what it is shown) up to the field of view's edge stops at
                # the last re-centred pass that stayed inside it
                inside = [t for t in taken[1:] if not reaches_field_edge(t[4])]
                if reaches_field_edge(seen) and inside:
                    box, centre, sample, out, seen = inside[-1]
                break
            next_sample, next_out = run(grown, moved)
            passes += 1
            next_seen = nodule_mask(next_out.seg_probability.mean(0)[0], next_sample.valid)
            if not same_nodule(next_seen, next_sample.geometry, seen, sample.geometry):
                break
            box, centre, sample, out, seen = grown, moved, next_sample, next_out, next_seen
            taken.append((box, centre, sample, out, seen))
    else:
        sample, out = run(context, point_lps)
    return sample, out, passes


def _lowest_centre(taken_pass: tuple) -> tuple[float, ...]:
    """Order of the passes of a cycle by their VOI centre, z first (LPS)."""
    return tuple(np.round(np.asarray(taken_pass[1])[::-1], 3))


def _result(
    sample: VoiSample,
    out: FoldOutputs,
    ensemble: Ensemble,
    point_lps,
    timings: dict,
    patient_id: str | None = None,
):
    """The result record of one sample's fold outputs (measurements, fusion, maps)."""
    cfg = ensemble.manifest.voi
    t = time.perf_counter()
    vgeom = sample.geometry
    spacing_zyx = cfg.spacing_zyx
    voxel_mm3 = float(np.prod(spacing_zyx))
    prob = out.seg_probability[:, 0].mean(0)
    mask = nodule_mask(prob, sample.valid)
    gradient = hu_gradient_magnitude(sample.hu, spacing_zyx)

    def measure(m: np.ndarray) -> dict[str, float]:
        return measure_nodule(sample.hu, m, spacing_zyx, sample.valid, gradient)

    measured_all = measure(mask)
    # Each fold's heads are fused with what is measured on that fold's own segmentation, as in
    # the out-of-fold rows the fusion was fitted on; the fold probabilities are then averaged.
    per_fold = [measure(nodule_mask(p, sample.valid)) for p in out.seg_probability[:, 0]]
    measured = measured_features(per_fold)
    logits = out.bag_logits[:, 0]  # (K, A)
    fusion = ensemble.manifest.fusion

    def fused(output: str) -> np.ndarray:
        head = logits[:, ATTRIBUTES.index(head_of(output))]
        return apply_fusion(fusion, output, head, measured)

    explanation = explain_malignancy(fusion, logits[:, MALIGNANCY], measured)
    # One malignancy number: the shown probability is the explained one (sigmoid of the
    # calibrated mean fold logit); the folds' own calibrated probabilities give its spread.
    fold_logit = apply_fusion_logit(fusion, MALIGNANCY_PROBABILITY, logits[:, MALIGNANCY], measured)
    fold_mal = 1.0 / (1.0 + np.exp(-calibration_slope(fusion) * fold_logit))
    # Scaled by the image coefficient, the maps add up to the image evidence part of the shown
    # logit (docs/DESIGN.md §11), not to the unfused MIL logit.
    evidence = {
        name: (explanation.image_coefficient * m).astype(np.float32)
        for name, m in evidence_maps(
            [c[:, 0] for c in out.contributions], MALIGNANCY, cfg.shape_zyx, voxel_mm3
        ).items()
    }
    scores = {a: score_from_probability(fused(a).mean()) for a in ORDINAL_ATTRIBUTES}
    calcification = float(fused("calcification").mean())
    lung_rads = suggest_lung_rads(
        mean_diameter_mm=measured_all["mean_diameter_mm"],
        texture_class=texture_class_of(scores["texture"]),
        solid_mean_diameter_mm=solid_component_mean_diameter_mm(
            sample.hu, mask & (sample.valid > 0.5), spacing_zyx
        ),
        calcification_probability=calcification,
        spiculation_score=scores["spiculation"],
        texture_score=scores["texture"],
    )
    result = NoduleResult(
        point_lps=tuple(map(float, point_lps)),
        malignancy_probability=explanation.probability,
        malignancy_sd=float(fold_mal.std()),
        fold_malignancy_probabilities=[float(p) for p in fold_mal],
        scores=scores,
        calcification_probability=calcification,
        internal_structure_probability=float(fused("internal_structure").mean()),
        **{f: measured_all[f] for f in MEASURED_FIELDS},
        model_version=ensemble.version,
        voi_geometry=vgeom,
        segmentation_probability_voi=prob.astype(np.float32),
        segmentation_mask_voi=mask,
        evidence_voi=evidence,
        malignancy_mil_logit=explanation.mil_logit,
        explanation=explanation,
        gates=gate_health([g[:, 0] for g in out.gates], sample.valid),
        lung_rads=lung_rads,
        fold_bag_features=None if out.bag_features is None else out.bag_features[:, 0],
        fold_volumes_mm3=[float(m["volume_mm3"]) for m in per_fold],
        voi_center_lps=np.asarray(sample.center_lps, dtype=float),
        context_box=sample.context,
    )
    if ensemble.similar_index is not None and result.fold_bag_features is not None:
        result.similar_nodules = ensemble.similar_index.nearest(
            result.fold_bag_features, exclude_patient=patient_id or None
        )
    timings["measurements"] = time.perf_counter() - t
    return result


def _measured_probability(result: NoduleResult) -> np.ndarray:
    """The segmentation probability with whatever is not the measured nodule held below the
    threshold, so a map of it onto the CT outlines the measured nodule only."""
    prob = result.segmentation_probability_voi
    held = np.minimum(prob, np.nextafter(np.float32(SEGMENTATION_THRESHOLD), np.float32(0)))
    return np.where(result.segmentation_mask_voi, prob, held)


def map_results_to_ct(result: NoduleResult, ct: ImageGeometry) -> None:
    """Resample segmentation and evidence maps onto a sub-grid of the CT.

    Evidence stays a density (logit per mL) averaged over each CT voxel, so the displayed map
    still integrates to the logit (exactly for axis-aligned CTs, up to trilinear resampling for
    oblique ones); the mask is the resampled probability thresholded at 0.5, of the measured
    nodule only: whatever else the network segmented in the crop (a vessel, a second nodule) is
    held below the threshold, so the outline shown and exported is the one measured.
    """
    prob_ct, grid = voi_map_to_ct(_measured_probability(result), result.voi_geometry, ct)
    result.ct_grid = grid
    result.segmentation_mask_ct = prob_ct >= SEGMENTATION_THRESHOLD
    result.evidence_ct = {
        name: voi_map_to_ct(m, result.voi_geometry, ct, density=True)[0]
        for name, m in result.evidence_voi.items()
    }
