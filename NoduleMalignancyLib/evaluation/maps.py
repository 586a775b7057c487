"""Do the evidence maps hold? Gate health and faithfulness of an ensemble, out of fold.

Every LIDC nodule is analyzed by the one fold model that never saw its patient, exactly as a
click is (context policy, VOI, gates, contributions). Per nodule:

* **gate health** (:mod:`..core.model.gates`): mean gate, mass share and spread per scale;
* **deletion test**: the input of the VOI voxels that carry the top 10 % of positive evidence
  (by contribution density, valid voxels only) is replaced by the VOI's lung background, and the
  MIL logit's drop is compared with the drop after replacing the same number of random valid
  voxels; the nodule passes when the top-evidence deletion drops the logit more;
* **locality**: the share of positive evidence mass within the segmentation dilated by 5 mm;
* **crop-edge band**: the share of positive evidence mass in the valid voxels within 2 mm of
  the crop's edge (an invalid voxel or the VOI face) and away from the nodule, beside the share
  of valid voxels that band holds: evidence piling up there is the network reacting to the
  validity boundary, not to the patient.

``nodule-malignancy maps`` writes ``MAPS.md`` and ``maps.json`` (see docs/DESIGN.md §11).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.atomic import write_json
from ..core.geometry import ImageGeometry
from ..core.model.ensemble import Ensemble
from ..core.model.folds import DEFAULT_FOLDS_FILE, load_folds
from ..core.model.gates import GATE_FIGURES, gate_health
from ..core.nodule.analysis import MALIGNANCY, nodule_mask, sample_and_run
from ..core.nodule.evidence import COMBINED, SCALE_NAMES, evidence_maps
from ..core.nodule.voi import windows_to_channels
from ..core.settings import models_dir

__all__ = ["evaluate_maps", "lung_background_hu", "register"]

DELETION_FRACTION = 0.10
LOCALITY_MM = 5.0
LUNG_HU = -400.0  # valid voxels below this are lung parenchyma (or air)
EDGE_BAND_MM = 2.0


def lung_background_hu(hu: np.ndarray, valid: np.ndarray) -> float:
    """The VOI's lung background: the median HU of its valid voxels below -400 HU."""
    lung = hu[(valid > 0.5) & (hu < LUNG_HU)]
    return float(np.median(lung)) if lung.size else -850.0


def _deleted(sample, voxels: np.ndarray, cfg) -> np.ndarray:
    """The sample's channels with ``voxels`` (boolean, VOI grid) set to the lung background."""
    hu = sample.hu.copy()
    hu[voxels] = lung_background_hu(sample.hu, sample.valid)
    return windows_to_channels(hu, sample.valid, cfg.windows)[None]


def _dilated(mask: np.ndarray, spacing_zyx, mm: float) -> np.ndarray:
    radius = [max(1, int(round(mm / s))) for s in spacing_zyx[::-1]]  # SimpleITK: (x, y, z)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    ball = sitk.BinaryDilate(image, radius, sitk.sitkBall)
    return sitk.GetArrayFromImage(ball) > 0


def edge_band(valid: np.ndarray, spacing_zyx, mm: float = EDGE_BAND_MM) -> np.ndarray:
    """Valid voxels within ``mm`` of an invalid voxel or of the VOI's faces."""
    from scipy.ndimage import distance_transform_edt

    padded = np.pad(valid, 1, constant_values=False)
    distance = distance_transform_edt(padded, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return valid & (distance <= mm)


def nodule_map_figures(image_zyx, geometry, point_lps, ensemble: Ensemble, rng) -> dict:
    """Gate health, deletion drops and locality of one nodule under a one-fold ensemble."""
    cfg = ensemble.manifest.voi
    sample, out, _ = sample_and_run(image_zyx, geometry, point_lps, ensemble)
    logit = float(out.bag_logits[:, 0, MALIGNANCY].mean())
    voxel_mm3 = float(np.prod(cfg.spacing_zyx))
    contributions = [c[:, 0] for c in out.contributions]
    density = evidence_maps(contributions, MALIGNANCY, cfg.shape_zyx, voxel_mm3)[COMBINED]
    valid = sample.valid > 0.5
    positive = np.where(valid & (density > 0), density, 0.0)
    n_delete = max(1, int(round(DELETION_FRACTION * valid.sum())))
    figures = {"mil_logit": logit, "gates": gate_health([g[:, 0] for g in out.gates], sample.valid)}
    if positive.sum() <= 0:
        figures |= {"top_drop": float("nan"), "random_drop": float("nan"), "near_share": 0.0}
        figures |= {"edge_share": 0.0, "edge_fraction": float("nan")}
        return figures
    order = np.argsort(positive, axis=None)[::-1][:n_delete]
    top = np.zeros(density.size, dtype=bool)
    top[order] = True
    top = top.reshape(density.shape) & valid
    random = np.zeros(density.size, dtype=bool)
    random[rng.choice(np.flatnonzero(valid), size=n_delete, replace=False)] = True
    random = random.reshape(density.shape)
    drops = {}
    for name, voxels in (("top_drop", top), ("random_drop", random)):
        outputs = ensemble.run(_deleted(sample, voxels, cfg))
        drops[name] = logit - float(outputs.bag_logits[:, 0, MALIGNANCY].mean())
    mask = nodule_mask(out.seg_probability[:, 0].mean(0), sample.valid)
    near = _dilated(mask, cfg.spacing_zyx, LOCALITY_MM) if mask.any() else mask
    figures |= drops | {"near_share": min(1.0, float(positive[near].sum() / positive.sum()))}
    band = edge_band(valid, cfg.spacing_zyx) & ~near
    figures |= {
        "edge_share": float(positive[band].sum() / positive.sum()),
        "edge_fraction": float(band.sum() / valid.sum()),
    }
    return figures


def fold_ensembles(ensemble: Ensemble) -> dict[int, Ensemble]:
    """One single-model ensemble per cross-validation fold id of the manifest (each nodule is
    scored out of fold by its patient's fold)."""
    out = {}
    for entry, model in zip(ensemble.manifest.folds, ensemble.models, strict=True):
        out[int(entry["fold"])] = Ensemble(ensemble.manifest, [model], device="cpu")
    return out


def evaluate_maps(records, folds: dict[str, int], ensemble: Ensemble, seed: int = 0) -> dict:
    """Every nodule by its own fold's model; per-nodule rows and the summary figures."""
    rng = np.random.default_rng(seed)
    by_fold = fold_ensembles(ensemble)
    rows, skipped = [], []
    for record in records:
        fold = folds.get(record.patient_id)
        if fold is None or fold not in by_fold:
            continue
        image = sitk.ReadImage(str(record.image_path))
        try:
            figures = nodule_map_figures(
                sitk.GetArrayFromImage(image).astype(np.float32),
                ImageGeometry.from_sitk(image),
                record.center_lps,
                by_fold[fold],
                rng,
            )
        except ValueError as exc:  # e.g. a listed centre outside its own VOI: say so, go on
            skipped.append({"name": record.name, "reason": str(exc)})
            continue
        rows.append({"name": record.name, "fold": fold, "label": record.label, **figures})
    return {"rows": rows, "skipped": skipped, "summary": summarise(rows) | {"skipped": skipped}}


def summarise(rows: list[dict]) -> dict:
    """Per fold and scale gate figures; deletion pass rates; locality."""
    folds = sorted({r["fold"] for r in rows})
    gates = {
        fold: {
            scale: {
                f: float(
                    np.nanmean([r["gates"]["mean"][scale][f] for r in rows if r["fold"] == fold])
                )
                for f in GATE_FIGURES
            }
            for scale in SCALE_NAMES
        }
        for fold in folds
    }
    tested = [r for r in rows if np.isfinite(r["top_drop"])]
    malignant = [r for r in tested if r["label"] == 1]

    def passed(subset) -> float:
        return float(np.mean([r["top_drop"] > r["random_drop"] for r in subset])) if subset else 0.0

    return {
        "nodules": len(rows),
        "gates": gates,
        "deletion_pass_all": passed(tested),
        "deletion_pass_malignant": passed(malignant),
        "n_malignant": len(malignant),
        "median_top_drop": float(np.median([r["top_drop"] for r in tested])) if tested else 0.0,
        "median_random_drop": float(np.median([r["random_drop"] for r in tested]))
        if tested
        else 0.0,
        "near_share_mean": float(np.mean([r["near_share"] for r in rows])) if rows else 0.0,
        "edge_share_mean": _mean(rows, "edge_share"),
        "edge_fraction_mean": _mean(rows, "edge_fraction"),
    }


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
    return float(np.mean(values)) if values else float("nan")


def report_markdown(summary: dict, version: str, command: str) -> str:
    """MAPS.md: the gate table per fold and scale and the faithfulness figures."""
    lines = [
        f"# Evidence maps of `{version}`: gate health and faithfulness (out of fold)",
        "",
        f"{summary['nodules']} LIDC nodules, each by the fold model that never saw its patient.",
        f"Reproduce: `{command}`",
        "",
        "## Gate health (mean over the fold's nodules)",
        "",
        "| fold | scale | mean gate | mass share | spread (of valid cells) |",
        "|---|---|---|---|---|",
    ]
    for fold, scales in summary["gates"].items():
        for scale, f in scales.items():
            lines.append(
                f"| {fold} | {scale} | {f['mean_gate']:.3f} | {f['mass_share']:.3f} | "
                f"{f['spread']:.3f} |"
            )
    lines += [
        "",
        "## Faithfulness",
        "",
        f"* Deletion test (top {100 * DELETION_FRACTION:.0f} % positive evidence vs as many random "
        "valid voxels, replaced by the VOI's lung background): the top-evidence deletion drops "
        f"the MIL logit more for {100 * summary['deletion_pass_malignant']:.1f} % of the "
        f"{summary['n_malignant']} malignant nodules ({100 * summary['deletion_pass_all']:.1f} % "
        f"of all); median drop {summary['median_top_drop']:+.3f} (top) vs "
        f"{summary['median_random_drop']:+.3f} (random).",
        f"* Share of positive evidence within the segmentation dilated by {LOCALITY_MM:.0f} mm: "
        f"{100 * summary['near_share_mean']:.1f} % (mean over nodules).",
        f"* Crop-edge band (valid voxels within {EDGE_BAND_MM:.0f} mm of the crop's edge, more "
        f"than {LOCALITY_MM:.0f} mm from the segmentation): "
        f"{100 * summary.get('edge_share_mean', float('nan')):.1f} % of the positive evidence "
        f"on {100 * summary.get('edge_fraction_mean', float('nan')):.1f} % of the valid voxels "
        "(mean over nodules; evidence spread evenly would give equal shares).",
        "",
    ]
    for skip in summary.get("skipped", []):
        lines.append(f"Skipped {skip['name']}: {skip['reason']}")
    return "\n".join(lines)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "maps", help="gate health and faithfulness of the evidence maps, out of fold (MAPS.md)"
    )
    parser.add_argument("--models", default=None, help="ensemble folder (default: shipped)")
    parser.add_argument("--data", default=None, help="folder containing lidc_vois/")
    parser.add_argument("--folds-file", default=str(DEFAULT_FOLDS_FILE))
    parser.add_argument("--out", default="models", help="folder for MAPS.md and maps.json")
    parser.add_argument("--limit", type=int, default=0, help="only the first N nodules (pilots)")
    parser.add_argument("--threads", type=int, default=2)
    parser.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from ..training.dataset import load_records

    torch.set_num_threads(args.threads)
    ensemble = Ensemble.load(models_dir(args.models), device="cpu")
    records = load_records(args.data)
    if args.limit:
        records = records[: args.limit]
    t = time.perf_counter()
    result = evaluate_maps(records, load_folds(args.folds_file), ensemble)
    out = Path(args.out)
    command = "nodule-malignancy maps" + (f" --limit {args.limit}" if args.limit else "")
    write_json(out / "maps.json", result["summary"] | {"version": ensemble.version})
    (out / "MAPS.md").write_text(report_markdown(result["summary"], ensemble.version, command))
    s = result["summary"]
    print(
        f"{s['nodules']} nodules in {time.perf_counter() - t:.0f} s: deletion pass (malignant) "
        f"{100 * s['deletion_pass_malignant']:.1f} %, near share {100 * s['near_share_mean']:.1f} %"
        f" -> {out / 'MAPS.md'}"
    )
    return 0
