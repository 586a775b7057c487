"""``nodule-malignancy``: analyse, predict a manifest, demo, benchmark, train, evaluate."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from .core.config import ORDINAL_ATTRIBUTES
from .core.explanation import PARTS
from .core.geometry import ImageGeometry, ras_to_lps


def _point(text: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z in mm, got {text!r}")
    return np.array(values)


def _load_image(path):
    import SimpleITK as sitk

    from .files.samples import read_ct

    image = read_ct(path)
    return sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)


def _load_dicom_image(path):
    """Voxels, geometry and the series' DICOM headers (``None`` when not DICOM)."""
    import SimpleITK as sitk

    from .files.samples import read_ct_with_dicom

    image, datasets = read_ct_with_dicom(path)
    return sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image), datasets


def _check_dicom_source(path) -> None:
    from .files.samples import is_dicom_source

    if not is_dicom_source(path):
        raise ValueError(
            f"--dicom-out needs a DICOM CT (a series folder, a .dcm file or a .tar.gz of a "
            f"series): {path} is not DICOM, so there are no source instances to reference"
        )


def _ensemble(args):
    from .core.ensemble import Ensemble

    return Ensemble.load(args.models, device=args.device)


def cmd_analyze(args) -> int:
    from .core.analysis import analyze_point
    from .files.outputs import write_analysis

    if args.dicom_out:
        _check_dicom_source(args.ct)
        array, geometry, datasets = _load_dicom_image(args.ct)
    else:
        array, geometry = _load_image(args.ct)
    point = ras_to_lps(args.point) if args.frame == "ras" else args.point
    ensemble = _ensemble(args)
    result = analyze_point(array, geometry, point, ensemble)
    files = write_analysis(result, array, geometry, Path(args.out), ensemble.manifest.voi)
    if args.dicom_out:
        from .files.dicom_outputs import write_dicom_outputs

        dicom = write_dicom_outputs(
            datasets, geometry, [_full_mask(result, geometry)], [result], args.dicom_out
        )
        print(f"wrote DICOM SEG {dicom['seg']} and SR {dicom['sr']}")
    _print_result(result)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


def _print_result(result) -> None:
    print(
        f"malignancy {100 * result.malignancy_probability:.1f} % "
        f"(sd {100 * result.malignancy_sd:.1f}), volume {result.volume_mm3:.0f} mm3, "
        f"diameter {result.diameter_mm:.1f} mm"
    )
    for name, score in result.scores.items():
        print(f"  {name:<12} {score:.2f}  {result.wording[name]}")
    print(
        f"  calcification p={result.calcification_probability:.2f}, "
        f"internal structure (non soft tissue) p={result.internal_structure_probability:.2f}"
    )
    if result.lung_rads is not None:
        print(f"  {result.lung_rads.wording}")
    for warning in result.warnings:
        print(f"  warning {warning.code}: {warning.message}")


def cmd_demo(args) -> int:
    import SimpleITK as sitk

    from .core.analysis import analyze_point
    from .files.outputs import write_analysis
    from .files.samples import nodule_points_lps, sample_path

    path = sample_path(args.sample)
    image = sitk.ReadImage(str(path))
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    ensemble = _ensemble(args)
    for name, point in nodule_points_lps(args.sample):
        result = analyze_point(array, geometry, point, ensemble)
        print(f"{name} at LPS {np.round(point, 1).tolist()}:")
        _print_result(result)
        files = write_analysis(result, array, geometry, Path(args.out), ensemble.manifest.voi, name)
        print(f"  report: {files['report']}")
    return 0


# The batch contract's output columns (README): ordinal attributes on the 1-5 scale, with the
# malignancy rating named malignancy_score beside the ensemble's malignancy_probability.
PREDICT_COLUMNS = (
    "id",
    "malignancy_probability",
    "malignancy_sd",
    *(a for a in ORDINAL_ATTRIBUTES if a != "malignancy"),
    "malignancy_score",
    "calcification_probability",
    "internal_structure_probability",
    "volume_mm3",
    "diameter_mm",
    "mean_hu",
    "calcified_fraction",
    # The shown malignancy explained (docs/DESIGN.md §11): the network's unfused MIL logit, the
    # mean fold logit of the fused model and its parts (they sum to it exactly).
    "malignancy_mil_logit",
    "malignancy_logit",
    *(f"malignancy_logit_{part}" for part in PARTS),
    # Suggested Lung-RADS v2022 baseline category and its solid component (docs/DESIGN.md §16).
    "lung_rads",
    "lung_rads_solid_mean_diameter_mm",
    "warnings",  # scope warning codes, ";"-separated (core/validation.py)
    "error",
)


def _progress(i: int, n: int, start: float) -> None:
    if sys.stderr.isatty():
        done = int(30 * i / max(n, 1))
        sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {i}/{n} {time.time() - start:.0f}s")
        sys.stderr.flush()
        if i == n:
            sys.stderr.write("\n")


def cmd_predict(args) -> int:
    from .core.analysis import analyze_point
    from .core.atomic import write_csv
    from .core.validation import RefusedError
    from .files.writers import write_volume

    with open(args.manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"id", "image", "x", "y", "z"} - set(rows[0] if rows else {})
    if missing:
        print(f"error: manifest {args.manifest} lacks columns {sorted(missing)}", file=sys.stderr)
        return 2
    ensemble = _ensemble(args)
    scored, start = 0, time.time()
    by_image: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_image.setdefault(row["image"], []).append(i)
    results: dict[int, dict] = {}
    done = 0
    for image_path, indices in by_image.items():  # each image read once
        # DICOM headers and (id, result, mask) of the image, for --dicom-out
        datasets, dicom, geometry = None, [], None
        try:
            if args.dicom_out:
                array, geometry, datasets = _load_dicom_image(image_path)
            else:
                array, geometry = _load_image(image_path)
            load_error = None
        except Exception as exc:
            load_error = f"cannot read image: {exc}"
        for i in indices:
            row = rows[i]
            rec = {"id": row["id"], "error": ""}
            try:
                if load_error:
                    raise ValueError(load_error)
                point = np.array([float(row["x"]), float(row["y"]), float(row["z"])])
                map_to_ct = bool(args.masks_dir or datasets)
                r = analyze_point(array, geometry, point, ensemble, map_to_ct=map_to_ct)
                rec.update(
                    malignancy_probability=f"{r.malignancy_probability:.6f}",
                    malignancy_sd=f"{r.malignancy_sd:.6f}",
                    **{k: f"{v:.4f}" for k, v in r.scores.items() if k != "malignancy"},
                    malignancy_score=f"{r.scores['malignancy']:.4f}",
                    calcification_probability=f"{r.calcification_probability:.6f}",
                    internal_structure_probability=f"{r.internal_structure_probability:.6f}",
                    volume_mm3=f"{r.volume_mm3:.2f}",
                    diameter_mm=f"{r.diameter_mm:.2f}",
                    mean_hu=f"{r.mean_hu:.1f}",
                    calcified_fraction=f"{r.calcified_fraction:.4f}",
                    malignancy_mil_logit=f"{r.malignancy_mil_logit:.5f}",
                    malignancy_logit=f"{r.explanation.logit:.5f}",
                    **{
                        f"malignancy_logit_{part}": f"{value:.5f}"
                        for part, value in r.explanation.parts.items()
                    },
                    lung_rads=r.lung_rads.category,
                    lung_rads_solid_mean_diameter_mm=f"{r.lung_rads.solid_mean_diameter_mm:.1f}",
                    warnings=";".join(w.code for w in r.warnings),
                )
                if args.masks_dir:
                    write_volume(
                        _full_mask(r, geometry),
                        geometry,
                        Path(args.masks_dir) / f"{row['id']}.nii.gz",
                    )
                if datasets:
                    dicom.append((row["id"], r, _full_mask(r, geometry)))
                scored += 1
            except RefusedError as exc:
                rec["error"] = f"{exc.code}: {exc}".replace("\n", " ")
            except Exception as exc:
                rec["error"] = str(exc).replace("\n", " ")
            results[i] = rec
            done += 1
            _progress(done, len(rows), start)
        _write_predict_dicom(args.dicom_out, image_path, datasets, geometry, dicom, load_error)
    write_csv(args.out, [results[i] for i in range(len(rows))], PREDICT_COLUMNS)
    print(f"scored {scored}/{len(rows)} rows -> {args.out}")
    return 0 if scored or not rows else 1


def _write_predict_dicom(folder, image_path, datasets, geometry, dicom, load_error) -> None:
    """One SEG + SR per DICOM CT of a manifest, in ``<folder>/<series instance UID>/``."""
    if not folder or load_error:
        return
    if datasets is None:
        print(f"note: {image_path} is not DICOM: no DICOM SEG / SR for it", file=sys.stderr)
        return
    if not dicom:
        return
    from .files.dicom_outputs import write_dicom_outputs

    ids, found, masks = zip(*dicom, strict=True)
    out = Path(folder) / str(datasets[0].SeriesInstanceUID)
    try:  # the rows are scored either way: one CT's DICOM failing does not stop the run
        write_dicom_outputs(datasets, geometry, list(masks), list(found), out, labels=list(ids))
    except Exception as exc:
        print(f"error: DICOM SEG / SR for {image_path}: {exc}", file=sys.stderr)


def _full_mask(result, geometry: ImageGeometry) -> np.ndarray:
    """The segmentation as a binary mask in the whole input image's geometry."""
    from .core.voi import embed_sub_grid, sub_grid_offset

    offset = sub_grid_offset(geometry, result.ct_grid)
    mask = result.segmentation_mask_ct.astype(np.uint8)
    return embed_sub_grid(mask, offset, geometry.shape_zyx)


def cmd_bench(args) -> int:
    from .benchmark import run_benchmark

    run_benchmark(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodule-malignancy", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
        sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")

    sp = sub.add_parser("analyze", help="analyse one nodule of a CT at a world point")
    sp.add_argument("--ct", required=True, help="CT file SimpleITK reads, DICOM folder or .tar.gz")
    sp.add_argument("--point", required=True, type=_point, help="X,Y,Z in mm")
    sp.add_argument("--frame", choices=("lps", "ras"), default="lps", help="frame of --point")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument(
        "--dicom-out", default=None, help="also write DICOM SEG + SR (seg.dcm, sr.dcm) here"
    )
    common(sp)
    sp.set_defaults(func=cmd_analyze)

    sp = sub.add_parser("predict", help="score a manifest CSV (id,image,x,y,z in world LPS)")
    sp.add_argument("--manifest", required=True)
    sp.add_argument("--out", required=True, help="predictions CSV")
    sp.add_argument("--masks-dir", default=None, help="write <id>.nii.gz masks here")
    sp.add_argument(
        "--dicom-out", default=None, help="DICOM SEG + SR per DICOM CT: <dir>/<series UID>/"
    )
    common(sp)
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("demo", help="analyse the nodules of a bundled LIDC sample")
    sp.add_argument("--sample", default="LIDC-IDRI-0001")
    sp.add_argument("--out", default="demo_output")
    common(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("bench", help="latency and memory of the ensemble (prints figures)")
    sp.add_argument("--sample", default="LIDC-IDRI-0001")
    sp.add_argument("--repeats", type=int, default=10)
    sp.add_argument("--threads", type=int, default=2)
    common(sp)
    sp.set_defaults(func=cmd_bench)

    for register in _optional_commands():
        register(sub)
    return p


def _optional_commands():
    """Sub-commands that live in their own modules (training, evaluation, self-test, batch
    paths, reading studies, the browser station)."""
    from .batch.export import register as register_export
    from .batch.luna25 import register as register_luna25
    from .batch.report_cli import register as register_report
    from .evaluation.cli import register as register_evaluation
    from .evaluation.maps import register as register_maps
    from .mrml.selftest import register as register_selftest
    from .station.cli import register as register_station
    from .study.cli import register as register_mrmc
    from .study.store_cli import register as register_study_store
    from .training.cli import register as register_training

    return [
        register_training,
        register_evaluation,
        register_maps,
        register_selftest,
        register_export,
        register_luna25,
        register_report,
        register_mrmc,
        register_study_store,
        register_station,
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        code = getattr(exc, "code", None)  # a refusal of the scope layer names its code
        print(f"refused ({code}): {exc}" if code else f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
