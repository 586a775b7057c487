"""``bench-repeatability``: does a nodule's answer depend on the pixel clicked inside it?

A radiologist clicks somewhere on a nodule, never exactly where the readers' centre is; the
measurements feed the Lung-RADS thresholds (6, 8, 15 mm) and growth (> 1.5 mm), so they must
not move with the click (docs/DESIGN.md §2, "Centred on the nodule").

For each LIDC VOI, out of fold (analysed by the one fold model that never saw its patient):
the listed centre, 4 clicks at min(1 mm, d/6) from it in random directions ("near"), and 4
random voxels of the inner third of the readers' consensus mask ("inner"; voxels at least
two thirds of the mask's largest depth from its boundary). Per nodule and click set (the centre
with the 4 others): is the Lung-RADS category the same for all 5, the malignancy range in
percentage points, and the coefficient of variation (SD / mean) of the diameter and the
volume; at the centre click also the outline's Dice against the readers' mask, as a click shows
it (mapped onto the VOI image's grid, as docs/experiments/full_ct_segmentation.py scores it).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.atomic import write_json

CLICKS = 4
TARGETS = {"lung_rads_identical": 0.95, "malignancy_range_p90": 3.0, "diameter_cv_p90": 0.025}


def near_clicks(center_lps, diameter_mm: float, rng, n: int = CLICKS) -> np.ndarray:
    """n points at min(1 mm, d/6) from the centre, random directions (the worst of 'within')."""
    radius = min(1.0, diameter_mm / 6.0) if np.isfinite(diameter_mm) else 1.0
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.asarray(center_lps, dtype=float) + radius * v


def inner_clicks(mask_zyx: np.ndarray, geometry, rng, n: int = CLICKS) -> np.ndarray:
    """n random voxel centres (world LPS) of the inner third of a mask (by depth)."""
    from scipy import ndimage

    mask = np.asarray(mask_zyx) > 0.5
    if not mask.any():
        return np.empty((0, 3))
    spacing_zyx = np.asarray(geometry.spacing, dtype=float)[::-1]
    depth = ndimage.distance_transform_edt(mask, sampling=spacing_zyx)
    inner = np.argwhere(depth >= (2.0 / 3.0) * depth.max())
    pick = inner[rng.choice(len(inner), size=min(n, len(inner)), replace=False)]
    return np.array([geometry.index_to_lps(p[::-1].astype(float)) for p in pick])


def _answer(image, geometry, point, ensemble, truth=None) -> dict:
    """One click's figures; with the readers' mask (``truth``, the image's grid) also the Dice
    of the outline mapped onto the image, as a click shows it."""
    from ..core.errors import NoduleMalignancyError
    from ..core.model.metrics import dice
    from ..core.nodule.analysis import analyze_point
    from ..core.nodule.voi import embed_sub_grid, sub_grid_offset

    try:
        r = analyze_point(image, geometry, point, ensemble, map_to_ct=truth is not None)
    except NoduleMalignancyError as exc:
        return {"refused": getattr(exc, "code", None) or type(exc).__name__}
    answer = {
        "malignancy": 100.0 * r.malignancy_probability,
        "diameter_mm": r.diameter_mm,
        "mean_diameter_mm": r.mean_diameter_mm,
        "volume_mm3": r.volume_mm3,
        "lung_rads": r.lung_rads.category if r.lung_rads else "",
        "warnings": ";".join(w.code for w in r.warnings),
        "context_passes": r.context_passes,
    }
    if truth is not None:
        outline = embed_sub_grid(
            r.segmentation_mask_ct, sub_grid_offset(geometry, r.ct_grid), geometry.shape_zyx
        )
        answer["dice"] = dice(outline, np.asarray(truth) > 0)
    return answer


def _spread(answers: list[dict]) -> dict:
    ok = [a for a in answers if "refused" not in a]
    if len(ok) < 2:
        return {"n": len(ok)}

    def cv(key: str) -> float:
        v = np.array([a[key] for a in ok], dtype=float)
        return float(v.std() / v.mean()) if v.mean() > 0 else float("nan")

    mal = [a["malignancy"] for a in ok]
    return {
        "n": len(ok),
        "refused": len(answers) - len(ok),
        "lung_rads_identical": len({a["lung_rads"] for a in answers if "refused" not in a}) == 1
        and len(ok) == len(answers),
        "malignancy_range": float(max(mal) - min(mal)),
        "diameter_cv": cv("diameter_mm"),
        "volume_cv": cv("volume_mm3"),
    }


def summarize(rows: list[dict]) -> dict:
    """The figures of the issue per click set: Lung-RADS agreement, p90 range and CVs (over
    the nodules with at least two answered clicks)."""
    out = {}
    for kind in ("near", "inner"):
        s = [r[kind] for r in rows if r.get(kind, {}).get("n", 0) >= 2]
        if not s:
            continue
        out[kind] = {
            "nodules": len(s),
            "lung_rads_identical": float(np.mean([x["lung_rads_identical"] for x in s])),
            "malignancy_range_p90": float(np.percentile([x["malignancy_range"] for x in s], 90)),
            "malignancy_range_median": float(np.median([x["malignancy_range"] for x in s])),
            "diameter_cv_p90": float(np.nanpercentile([x["diameter_cv"] for x in s], 90)),
            "volume_cv_p90": float(np.nanpercentile([x["volume_cv"] for x in s], 90)),
            "with_a_refused_click": int(sum(x["refused"] > 0 for x in s)),
        }
    dice = [r["centre"]["dice"] for r in rows if "dice" in r.get("centre", {})]
    if dice:
        out["centre"] = {"nodules": len(dice), "dice_mean": float(np.mean(dice))}
    return out


def nodule_row(image, geometry, mask, centre_lps, diameter_mm: float, ensemble, rng) -> dict:
    """One nodule's answers at its centre, 4 near clicks and 4 inner clicks, and their spread."""
    centre = _answer(image, geometry, centre_lps, ensemble, truth=mask)
    near = [
        _answer(image, geometry, p, ensemble) for p in near_clicks(centre_lps, diameter_mm, rng)
    ]
    inner = [_answer(image, geometry, p, ensemble) for p in inner_clicks(mask, geometry, rng)]
    return {
        "centre": centre,
        "near": _spread([centre, *near]),
        "inner": _spread([centre, *inner]),
    }


def measure(
    models: str | Path | None = None,
    data: str | None = None,
    limit: int | None = None,
    seed: int = 2026,
    echo=print,
) -> dict:
    """Run the benchmark (``limit`` nodules drawn at random with ``seed``, all by default)."""
    import SimpleITK as sitk
    import torch

    from ..core.geometry import ImageGeometry
    from ..core.model.ensemble import Ensemble
    from ..core.model.folds import load_folds
    from ..core.settings import models_dir
    from ..training.dataset import load_records
    from .maps import fold_ensembles

    torch.set_num_threads(1)  # answers, not speed: one thread wastes no CPU on a busy machine
    directory = models_dir(models)
    ensemble = Ensemble.load(directory, device="cpu")
    ensemble.similar_index = None  # the neighbours are not measured here
    by_fold = fold_ensembles(ensemble)
    fold_of = load_folds(directory / "folds.csv")
    records = [
        r
        for r in load_records(data)
        if r.mask_path is not None and fold_of.get(r.patient_id) in by_fold
    ]
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(records):
        records = [records[i] for i in sorted(rng.choice(len(records), limit, replace=False))]
    rows, t0 = [], time.perf_counter()
    for i, r in enumerate(records):
        fold = fold_of[r.patient_id]
        image = sitk.ReadImage(str(r.image_path))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(r.mask_path)))
        row = nodule_row(
            sitk.GetArrayFromImage(image).astype(np.float32),
            ImageGeometry.from_sitk(image),
            mask,
            r.center_lps,
            r.diameter_mean_mm,
            by_fold[fold],
            rng,
        )
        rows.append(
            {"nodule": r.name, "fold": fold, "reader_diameter_mm": r.diameter_mean_mm, **row}
        )
        if (i + 1) % 10 == 0:
            echo(f"  {i + 1}/{len(records)} nodules in {time.perf_counter() - t0:.0f} s")
    return {
        "model_version": ensemble.manifest.version,
        "nodules": len(rows),
        "seconds": round(time.perf_counter() - t0, 1),
        "seed": seed,
        "limit": limit,
        "summary": summarize(rows),
        "targets": TARGETS,
        "rows": rows,
    }


def format_summary(res: dict) -> str:
    """The summary as lines a reader compares with the targets."""
    lines = [f"{res['nodules']} nodules, seed {res['seed']}, {res['seconds']:.0f} s"]
    for kind in ("near", "inner"):
        if kind not in res["summary"]:
            continue
        s = res["summary"][kind]
        lines.append(
            f"{kind}: Lung-RADS identical {100 * s['lung_rads_identical']:.1f} % "
            f"(target >= {100 * TARGETS['lung_rads_identical']:.0f} %), malignancy range p90 "
            f"{s['malignancy_range_p90']:.2f} points (<= {TARGETS['malignancy_range_p90']:g}), "
            f"diameter CV p90 {100 * s['diameter_cv_p90']:.2f} % "
            f"(<= {100 * TARGETS['diameter_cv_p90']:g} %), volume CV p90 "
            f"{100 * s['volume_cv_p90']:.2f} %, nodules with a refused click "
            f"{s['with_a_refused_click']}"
        )
    if "centre" in res["summary"]:
        c = res["summary"]["centre"]
        lines.append(f"centre click: outline Dice {c['dice_mean']:.4f} ({c['nodules']} nodules)")
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the ``bench-repeatability`` sub-command to the main CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "bench-repeatability",
        help="does the answer move with the pixel clicked? (LIDC VOIs out of fold)",
    )
    parser.add_argument("--models", default=None, help="ensemble folder (default: shipped)")
    parser.add_argument("--data", default=None, help="folder containing lidc_vois/")
    parser.add_argument("--limit", type=int, default=None, help="nodules drawn at random")
    parser.add_argument("--seed", type=int, default=2026, help="of the draw and the clicks")
    parser.add_argument("--out", default=None, help="write every answer and the summary (JSON)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from ..core.errors import InputError

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    res = measure(args.models, args.data, args.limit, args.seed)
    print(format_summary(res))
    if args.out:
        print(f"wrote {write(res, args.out)}")
    return 0


def write(res: dict, out: str | Path) -> Path:
    """The benchmark's JSON (every answer of every click and the summary)."""
    return write_json(Path(out), res)
