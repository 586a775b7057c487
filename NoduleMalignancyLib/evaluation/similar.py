"""``similar-index``: embed the LIDC nodules with an ensemble, write the similar-nodule index
beside it, and measure out of fold what the neighbours' ratings are worth.

Out of fold: a nodule of fold k is embedded by fold k's model (which never saw its patient) and
searched among every other patient's nodules embedded by the same model; it never finds itself
or its patient. The neighbours' mean reader malignancy is scored against the nodule's label and
compared, on the same nodules and patient resamples, with a size lookup: the mean malignancy of
all other patients' nodules of the same reader diameter (within 1 mm; the 6 closest in diameter
where fewer). Neighbours that only repeated the size would score like the lookup.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.atomic import finite_json, write_json
from ..core.config import ATTRIBUTES, ORDINAL_ATTRIBUTES
from ..core.model import metrics
from ..core.model.similar import DEFAULT_K, SimilarIndex, weights_digest

SIZE_LOOKUP_MM = 1.0


def embed_records(records, ensemble, echo=print) -> tuple[list, np.ndarray]:
    """Each record analysed at its listed centre: (kept records, (K, M, F) fold features).

    Records the analysis refuses are left out (they would be refused for a reader too).
    """
    import SimpleITK as sitk

    from ..core.errors import NoduleMalignancyError
    from ..core.geometry import ImageGeometry
    from ..core.nodule.analysis import analyze_point

    kept, feats = [], []
    t0 = time.perf_counter()
    for i, r in enumerate(records):
        image = sitk.ReadImage(str(r.image_path))
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        try:
            res = analyze_point(
                array, ImageGeometry.from_sitk(image), r.center_lps, ensemble, map_to_ct=False
            )
        except NoduleMalignancyError as exc:
            echo(f"  {r.name}: left out ({exc})")
            continue
        kept.append(r)
        feats.append(res.fold_bag_features)
        if (i + 1) % 100 == 0:
            echo(f"  embedded {i + 1}/{len(records)} in {time.perf_counter() - t0:.0f} s")
    return kept, np.stack(feats, axis=1)


def index_of(records, features: np.ndarray, weights_sha256: str) -> SimilarIndex:
    return SimilarIndex(
        features=features,
        patient_id=np.array([r.patient_id for r in records]),
        nodule=np.array([r.name for r in records]),
        diameter_mm=np.array([r.diameter_mean_mm for r in records], dtype=float),
        malignancy_mean=np.array([r.malignancy_mean for r in records], dtype=float),
        targets=np.stack([np.asarray(r.targets, dtype=float) for r in records]),
        weights_sha256=weights_sha256,
    )


def size_lookup(index: SimilarIndex, i: int, k: int = DEFAULT_K) -> np.ndarray:
    """Indices of the size lookup for nodule i: other patients' nodules within
    SIZE_LOOKUP_MM of its diameter, or its k closest in diameter where fewer."""
    other = index.patient_id != index.patient_id[i]
    gap = np.abs(index.diameter_mm - index.diameter_mm[i])
    gap = np.where(other & np.isfinite(gap), gap, np.inf)
    close = np.flatnonzero(gap <= SIZE_LOOKUP_MM)
    if len(close) >= k:
        return close
    return np.argsort(gap, kind="stable")[:k]


def evaluate_out_of_fold(
    index: SimilarIndex,
    fold_of_patient: dict[str, int],
    fold_ids: list[int],
    k: int = DEFAULT_K,
    n_boot: int = metrics.N_BOOT,
    seed: int = metrics.SEED,
) -> dict:
    """Neighbours vs size lookup, out of fold (see the module docstring)."""
    m = len(index.nodule)
    position = {f: j for j, f in enumerate(fold_ids)}
    nn_mal, lookup_mal = np.full(m, np.nan), np.full(m, np.nan)
    nn_rating = np.full((m, len(ATTRIBUTES)), np.nan)
    lookup_rating = np.full((m, len(ATTRIBUTES)), np.nan)
    nn_diameter_gap = np.full(m, np.nan)
    for i in range(m):
        fold = fold_of_patient.get(str(index.patient_id[i]))
        if fold not in position:
            continue
        query = index.features[:, i]
        rows, _ = index.nearest_rows(
            query, k=k, exclude_patient=str(index.patient_id[i]), folds=[position[fold]]
        )
        nn_mal[i] = index.malignancy_mean[rows].mean()
        nn_rating[i] = index.targets[rows].mean(0)
        nn_diameter_gap[i] = np.abs(index.diameter_mm[rows] - index.diameter_mm[i]).mean()
        look = size_lookup(index, i, k)
        lookup_mal[i] = index.malignancy_mean[look].mean()
        lookup_rating[i] = index.targets[look].mean(0)
    y = np.where(index.malignancy_mean > 3, 1.0, np.where(index.malignancy_mean < 3, 0.0, np.nan))
    groups = index.patient_id
    boot = {"n_boot": n_boot, "seed": seed}
    ordinal = [ATTRIBUTES.index(a) for a in ORDINAL_ATTRIBUTES]
    res = {
        "k": k,
        "nodules": int(np.isfinite(nn_mal).sum()),
        "labelled": int((np.isfinite(nn_mal) & np.isfinite(y)).sum()),
        "neighbours_auroc": metrics.auroc_ci(y, nn_mal, groups, **boot),
        "size_lookup_auroc": metrics.auroc_ci(y, lookup_mal, groups, **boot),
        "neighbours_minus_size_lookup": metrics.paired_auroc_difference(
            y, nn_mal, lookup_mal, groups, **boot
        ),
        "size_matched": {
            "neighbours": metrics.size_matched_auroc_ci(
                y, nn_mal, index.diameter_mm, groups, **boot
            ),
            "size_lookup": metrics.size_matched_auroc_ci(
                y, lookup_mal, index.diameter_mm, groups, **boot
            ),
        },
        "attribute_mae": {
            "neighbours": metrics.mae_1to5(nn_rating[:, ordinal], index.targets[:, ordinal]),
            "size_lookup": metrics.mae_1to5(lookup_rating[:, ordinal], index.targets[:, ordinal]),
        },
        "neighbour_diameter_gap_mm_median": float(np.nanmedian(nn_diameter_gap)),
    }
    return res


def markdown(res: dict, command: str, version: str) -> str:
    """SIMILAR.md: the out-of-fold figures of the shipped index."""

    def ci(d: dict) -> str:
        return f"{d['auroc']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"

    d = res["neighbours_minus_size_lookup"]
    a = res["attribute_mae"]
    sm = res["size_matched"]
    return "\n".join(
        [
            "# Similar nodules: out-of-fold evaluation",
            "",
            f"Ensemble `{version}`; {res['nodules']} LIDC nodules ({res['labelled']} labelled), "
            f"k = {res['k']} neighbours. Reproduce: `{command}`.",
            "",
            "Each nodule is embedded by the fold model that never saw its patient and searched "
            "among the other patients' nodules (embedded by the same model). Its neighbours' "
            "mean reader malignancy is scored against its label; the size lookup is the mean "
            f"malignancy of the other patients' nodules within {SIZE_LOOKUP_MM:g} mm of its "
            "reader diameter. Embedding: the gate-pooled MIL features of each fold "
            "(core/model/similar.py).",
            "",
            "| score | AUROC [95 % CI] | size-matched AUROC | attribute MAE (1-5) |",
            "|---|---|---|---|",
            f"| neighbours' mean rating | {ci(res['neighbours_auroc'])} | "
            f"{ci(sm['neighbours'])} | {a['neighbours']:.3f} |",
            f"| size lookup | {ci(res['size_lookup_auroc'])} | {ci(sm['size_lookup'])} | "
            f"{a['size_lookup']:.3f} |",
            "",
            f"Neighbours minus size lookup, same nodules and patient resamples: "
            f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], p = {d['p']:.3f}. The "
            f"neighbours' diameters differ from the query's by "
            f"{res['neighbour_diameter_gap_mm_median']:.1f} mm (median of the per-nodule mean).",
            "",
        ]
    )


def build(models: str | Path | None, data: str | None, out: str | Path | None, echo=print) -> dict:
    """Embed, write the index beside the ensemble (or to ``out``), evaluate, write SIMILAR.md."""
    import torch

    from ..core.model.ensemble import Ensemble
    from ..core.model.folds import load_folds
    from ..core.settings import models_dir
    from ..training.dataset import load_records

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    directory = models_dir(models)
    out_dir = Path(out) if out else directory
    ensemble = Ensemble.load(directory, device="cpu")
    ensemble.similar_index = None  # never embed with an older index attached
    t = time.perf_counter()
    records, features = embed_records(load_records(data), ensemble, echo)
    seconds = time.perf_counter() - t
    index = index_of(records, features, weights_digest(ensemble.manifest.folds))
    fold_ids = [int(f.get("fold", j)) for j, f in enumerate(ensemble.manifest.folds)]
    folds = load_folds(directory / "folds.csv")
    res = evaluate_out_of_fold(index, folds, fold_ids)
    res["embed_seconds"] = round(seconds, 1)
    command = "nodule-malignancy similar-index" + (f" --out {out}" if out else "")
    index.save(out_dir, {"model_version": ensemble.manifest.version})
    write_json(out_dir / "similar_metrics.json", finite_json(res))
    (out_dir / "SIMILAR.md").write_text(markdown(res, command, ensemble.manifest.version))
    echo(
        f"indexed {len(records)} nodules in {seconds:.0f} s; neighbours AUROC "
        f"{res['neighbours_auroc']['auroc']:.3f} vs size lookup "
        f"{res['size_lookup_auroc']['auroc']:.3f} -> {out_dir}"
    )
    return res


def register(subparsers) -> None:
    """Add the ``similar-index`` sub-command to the main CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "similar-index",
        help="similar LIDC nodules: build the index beside the ensemble, evaluated out of fold",
    )
    parser.add_argument("--models", default=None, help="ensemble folder (default: shipped)")
    parser.add_argument("--data", default=None, help="folder containing lidc_vois/")
    parser.add_argument(
        "--out", default=None, help="where to write the index (default: the ensemble folder)"
    )
    parser.set_defaults(func=_run)


def _run(args) -> int:
    build(args.models, args.data, args.out)
    return 0
