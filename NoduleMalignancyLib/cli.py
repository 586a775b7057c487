"""``nodule-malignancy``: analyze, predict a manifest, demo, benchmark, train, evaluate.

Exit codes: 0 done, 2 bad input (argparse's errors and the project's expected errors,
core/errors.py: the message only), 1 anything else (a bug: its traceback). ``--debug`` or
``NODULE_MALIGNANCY_DEBUG=1`` print the traceback of every error.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import csv
import ctypes
import importlib
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from .batch.predict import PREDICT_COLUMNS, full_mask, read_input
from .batch.row_timeout import DEFAULT_ROW_TIMEOUT_S
from .core.geometry import ImageGeometry, ras_to_lps

__all__ = ["PREDICT_COLUMNS", "build_parser", "main", "run"]


def _point(text: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z in mm, got {text!r}")
    return np.array(values)


def _check_dicom_source(path) -> None:
    from .core.errors import InputError
    from .files.samples import is_dicom_source

    if not is_dicom_source(path):
        raise InputError(
            f"--dicom-out needs a DICOM CT (a series folder, a .dcm file or a .tar.gz of a "
            f"series): {path} is not DICOM, so there are no source instances to reference"
        )


def _ensemble(args):
    from .core.model.ensemble import Ensemble

    return Ensemble.load(args.models, device=args.device)


# What `analyze` imports in a thread while it reads the CT (background_imports.py), in the
# order needed: the checks' modules (the CT's lung mask is built while torch loads), the
# analysis (torch), then the files' (matplotlib, loading while the network runs).
ANALYZE_IMPORTS = (".core.scope.validation", ".core.nodule.analysis", ".files.outputs")


def _reuse_freed_memory() -> None:
    """glibc's malloc takes large blocks from its heap and keeps what is freed for reuse,
    instead of mapping fresh pages for each and unmapping them when freed.

    Why: a cold ``analyze`` allocates its largest arrays once each (the archive's 70 MB, the CT
    as int32, 140 MB, the lung mask's); with glibc's defaults each is pages the kernel faults in
    and zeroes, beside the import thread mapping torch's libraries (0.3-0.5 s of a cold
    ``analyze``, docs/benchmarks.md). For one-shot commands: the memory stays at its peak until
    the process ends. Nothing where the C library has no ``mallopt`` (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB from the heap
    mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: freed heap kept, not returned
    mallopt(-2, 1 << 28)  # M_TOP_PAD: the heap grows 256 MiB (of address space) at a time


def cmd_analyze(args) -> int:
    seconds, start = {}, [time.perf_counter()]
    _reuse_freed_memory()

    def lap(stage: str) -> None:  # the cold start's split (bench --cold reads --timings)
        now = time.perf_counter()
        seconds[stage], start[0] = seconds.get(stage, 0.0) + now - start[0], now

    from .background_imports import BackgroundImports
    from .files import ct_input, samples  # noqa: F401 (the read's modules, imported here)

    _check_analysis_outputs(args)
    if args.dicom_out:
        _check_dicom_source(args.ct)
    imports = BackgroundImports(ANALYZE_IMPORTS, __package__)
    try:
        array, geometry, datasets, identity = read_input(args.ct, args.series, bool(args.dicom_out))
        point = ras_to_lps(args.point) if args.frame == "ras" else args.point
        lap("read")
        validation = imports.module(".core.scope.validation")
        lap("imports")  # "imports": the waits for the thread
        validation.chest_lungs(array, geometry)  # the checks' lung mask (cached by content)
        lap("lung_mask")
        analyze_point = imports.module(".core.nodule.analysis").analyze_point
        lap("imports")
        ensemble = _ensemble(args)
        lap("weights")
        result = analyze_point(
            array, geometry, point, ensemble, patient_id=identity.get("patient_id")
        )
        lap("analysis")
        write_analysis = imports.module(".files.outputs").write_analysis
        lap("imports")
    finally:
        imports.close()
    files = write_analysis(
        result, array, geometry, Path(args.out), ensemble.manifest.voi, identity=identity
    )
    if args.dicom_out:
        from .files.dicom_outputs import write_dicom_outputs

        dicom = write_dicom_outputs(
            datasets, geometry, [full_mask(result, geometry)], [result], args.dicom_out
        )
        print(f"wrote DICOM SEG {dicom['seg']} and SR {dicom['sr']}")
    lap("writing")
    _print_result(result)
    print(f"wrote {len(files)} files to {args.out}")
    if args.timings:
        from .core.atomic import write_json

        write_json(args.timings, {"stages": seconds, "analysis": result.timings_s})
    return 0


def _check_analysis_outputs(args) -> None:
    """Every output of ``analyze`` is writable before the CT is read (files/writable.py)."""
    from .files.writable import check_output_file, check_output_folder

    check_output_folder(args.out, "--out")
    if args.dicom_out:
        check_output_folder(args.dicom_out, "--dicom-out")
    if args.timings:
        check_output_file(args.timings, "--timings")


def _check_predict_outputs(args) -> None:
    """Every output of ``predict`` is writable before the first row (files/writable.py)."""
    from .files.writable import check_output_file, check_output_folder

    check_output_file(args.out, "--out")
    for flag, folder in (("--masks-dir", args.masks_dir), ("--dicom-out", args.dicom_out)):
        if folder:
            check_output_folder(folder, flag)


def _write_predictions(path, results, columns) -> None:
    """The predictions CSV; if it cannot be written after all (a full disk), the rows go to a
    fallback file named in the error: computed rows are never thrown away."""
    from .core.errors import InputError
    from .files import csv_cells
    from .files.writable import fallback_path

    try:
        csv_cells.write_csv(path, results, columns)
    except OSError as exc:
        fallback = csv_cells.write_csv(fallback_path(path), results, columns)
        raise InputError(
            f"--out {path} could not be written ({exc.strerror or exc}); the {len(results)} "
            f"rows were saved to {fallback}"
        ) from None


def _print_result(result) -> None:
    """The result's main fields as the schema labels and formats them (core/result_schema.py),
    after its assessment (core/scope/assessment.py): not assessed, the reason and the outline's size
    only (no malignancy, no Lung-RADS); flagged, the warnings before the numbers."""
    from .core.result_schema import labelled, score_field, shown

    v = result.values()
    size = ", ".join(labelled(n, v[n]) for n in ("volume_mm3", "diameter_mm", "mean_diameter_mm"))
    if v["assessment"] != "assessed":
        print(f"{shown('assessment', v['assessment'])}: {v['assessment_reason']}")
    if not result.assessment.answered:
        print(f"  outline: {size} (no malignancy or Lung-RADS off a nodule; see result.json)")
        return
    print(
        f"{labelled('malignancy_probability', v['malignancy_probability'])} "
        f"(spread ± {shown('malignancy_sd', v['malignancy_sd'])}), {size}"
    )
    for name in result.scores:
        score = score_field(name)
        print(f"  {name:<12} {shown(score, v[score])}  {v[f'{name}_wording']}")
    print(
        f"  {labelled('calcification_probability', v['calcification_probability'])}, "
        f"{labelled('internal_structure_probability', v['internal_structure_probability'])}"
    )
    if result.suggested_lung_rads is not None:
        print(f"  {result.suggested_lung_rads.wording}")
    if v.get("similar_nodules_summary"):  # core/model/similar.py: the LIDC readers' ratings
        print(f"  {v['similar_nodules_summary']} (their LIDC readers' ratings)")
    for code, message in zip(v["warnings"], v["warning_messages"], strict=True):
        print(f"  warning {code}: {message}")


def cmd_demo(args) -> int:
    import SimpleITK as sitk

    from .core.nodule.analysis import analyze_point
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


def cmd_predict(args) -> int:
    from .batch.cluster import dask_client
    from .batch.predict import (
        MANIFEST_COLUMNS,
        PREDICT_COLUMNS,
        cached_ensemble,
        check_mask_names,
        predict_rows,
    )
    from .files.row_errors import failure_log_path, write_failure_log

    with open(args.manifest, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = set(reader.fieldnames or ())
    missing = set(MANIFEST_COLUMNS) - columns
    if missing:
        print(f"error: manifest {args.manifest} lacks columns {sorted(missing)}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: manifest {args.manifest} has no rows to score", file=sys.stderr)
        return 2
    if args.masks_dir:
        try:
            check_mask_names([row["id"] for row in rows])
        except ValueError as exc:
            print(f"error: manifest {args.manifest}: {exc}", file=sys.stderr)
            return 2
    _check_predict_outputs(args)
    if not (args.scheduler or args.workers):
        cached_ensemble(args.models, args.device)  # a bad ensemble stops the run here (exit 2)
    with dask_client(args.scheduler, args.workers) as client:
        results = predict_rows(
            rows,
            args.models,
            args.device,
            args.masks_dir,
            client,
            dicom_out=args.dicom_out,
            row_timeout=args.row_timeout,
        )
    _write_predictions(args.out, results, PREDICT_COLUMNS)
    failures = write_failure_log(failure_log_path(args.out), results)
    scored = sum(not r["error"] for r in results)
    print(
        f"scored {scored}/{len(rows)} rows -> {args.out}"
        + (f" (tracebacks of unexpected errors: {failures})" if failures else "")
    )
    return 0 if scored or not rows else 1


def cmd_bench(args) -> int:
    from .benchmark import run_benchmark, run_cold_benchmark

    (run_cold_benchmark if args.cold else run_benchmark)(args)
    return 0


# Sub-commands that live in their own modules (training, evaluation, self-test, batch paths,
# reading studies): name -> (the modules whose ``register`` adds it, one-line help). A module
# is imported only when its command runs (or shows its own --help): building the parser
# imports none of them. (``study serve`` comes from the station's module.)
LAZY_COMMANDS = {
    "train": ((".training.cli",), "train the K-fold ensemble (resumable)"),
    "evaluate": ((".evaluation.cli",), "out-of-fold evaluation report from oof.csv"),
    "maps": (
        (".evaluation.maps",),
        "gate health and faithfulness of the evidence maps, out of fold (MAPS.md)",
    ),
    "similar-index": (
        (".evaluation.similar",),
        "similar LIDC nodules: build the index beside the ensemble, evaluated out of fold",
    ),
    "selftest": (
        (".mrml.selftest",),
        "run the Slicer module self-test headless on slicer-core (exit code = result)",
    ),
    "export": (
        (".batch.export",),
        "training patches from CTs + a points table, or LIDC-IDRI through pylidc",
    ),
    "luna25": (
        (".batch.luna25",),
        "LUNA25 grand-challenge I/O: score nodule-locations.json on one CT",
    ),
    "report": (
        (".batch.report_cli",),
        "self-contained HTML review page of a predict run (thumbnails, warnings)",
    ),
    "bench-repeatability": (
        (".evaluation.repeatability",),
        "does the answer move with the pixel clicked? (LIDC VOIs out of fold)",
    ),
    "bench-cohort": (
        (".batch.cohort_bench",),
        "speed-up of predict over LIDC VOIs in-process vs a local Dask cluster",
    ),
    "mrmc": (
        (".study.cli",),
        "Obuchowski-Rockette MRMC ROC analysis of a reading study's scores",
    ),
    "study": (
        (".study.store_cli", ".station.cli"),
        "reading studies: create, readers, export, analyze",
    ),
    "app": ((".station.cli",), "browser reading station: Slicer views, point placement, results"),
    "exam": (
        (".batch.exam_cli",),
        "every nodule of a CT: the exam's Lung-RADS v2022 and each nodule's Brock",
    ),
}
DEBUG_ENV = "NODULE_MALIGNANCY_DEBUG"


class _LazySubParsers(argparse._SubParsersAction):
    """Sub-parsers whose :data:`LAZY_COMMANDS` are placeholders until one is chosen: then the
    placeholders go and the command's modules ``register`` the real parsers."""

    placeholders: set[str]

    def __call__(self, parser, namespace, values, option_string=None):
        name = values[0] if values else None
        if name in self.placeholders:
            for placeholder in self.placeholders:  # a module may register several commands
                del self._name_parser_map[placeholder]
            self.placeholders = set()
            for module in LAZY_COMMANDS[name][0]:
                importlib.import_module(module, __package__).register(self)
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    from .batch.cluster import add_cluster_arguments

    p = argparse.ArgumentParser(
        prog="nodule-malignancy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help=f"print the traceback of every error (also: {DEBUG_ENV}=1)",
    )
    p.register("action", "lazy_parsers", _LazySubParsers)
    sub = p.add_subparsers(dest="command", required=True, action="lazy_parsers")
    sub.placeholders = set(LAZY_COMMANDS)

    def common(sp):
        sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
        sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")

    sp = sub.add_parser("analyze", help="analyze one nodule of a CT at a world point")
    sp.add_argument("--ct", required=True, help="CT file SimpleITK reads, DICOM folder or .tar.gz")
    sp.add_argument(
        "--series", default=None, help="the series UID to read when --ct holds several series"
    )
    sp.add_argument("--point", required=True, type=_point, help="X,Y,Z in mm")
    sp.add_argument("--frame", choices=("lps", "ras"), default="lps", help="frame of --point")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument(
        "--dicom-out", default=None, help="also write DICOM SEG + SR (seg.dcm, sr.dcm) here"
    )
    sp.add_argument(
        "--timings", default=None, help="write the seconds of each stage here (JSON; bench --cold)"
    )
    common(sp)
    sp.set_defaults(func=cmd_analyze)

    sp = sub.add_parser("predict", help="score a manifest CSV (id,image,x,y,z in world LPS)")
    sp.add_argument("--manifest", required=True)
    sp.add_argument("--out", required=True, help="predictions CSV")
    sp.add_argument(
        "--masks-dir", default=None, help="write <id>.nii.gz masks here (id made file-name safe)"
    )
    sp.add_argument(
        "--dicom-out", default=None, help="DICOM SEG + SR per DICOM CT: <dir>/<series UID>/"
    )
    sp.add_argument(
        "--row-timeout",
        type=float,
        default=DEFAULT_ROW_TIMEOUT_S,
        help=f"seconds a CT read or a row may take before it fails (default {DEFAULT_ROW_TIMEOUT_S:g}"
        "; 0: no limit; in Dask workers checked between Python instructions)",
    )
    common(sp)
    add_cluster_arguments(sp)
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("demo", help="analyze the nodules of a bundled LIDC sample")
    sp.add_argument("--sample", default="LIDC-IDRI-0001")
    sp.add_argument("--out", default="demo_output")
    common(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("bench", help="latency and memory of the ensemble (prints figures)")
    sp.add_argument("--sample", default="LIDC-IDRI-0001")
    sp.add_argument("--repeats", type=int, default=10)
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument(
        "--cold",
        action="store_true",
        help="time `analyze` of the sample's DICOM archive in fresh processes instead (median of "
        "--repeats; the split: start-up, imports, read, checks, network, writing)",
    )
    common(sp)
    sp.set_defaults(func=cmd_bench)

    for name, (_, text) in LAZY_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        from .core.errors import is_expected

        if debug or not is_expected(exc):
            traceback.print_exc()
        if not is_expected(exc):
            print(
                f"error: unexpected {type(exc).__name__}: a bug (traceback above)", file=sys.stderr
            )
            return 1
        code = getattr(exc, "code", None)  # a refusal of the scope layer names its code
        print(f"refused ({code}): {exc}" if code else f"error: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    """The program (console script and ``python -m``): :func:`main`, then the process ends
    without the interpreter's teardown when nothing else runs.

    Why: with torch loaded, finalizing the interpreter (its modules, libtorch's static
    destructors) takes 0.2-1 s after the last output is written, a fifth of a cold
    ``analyze``. The exit handlers still run and the streams are flushed; a command that left
    a non-daemon thread running gets the ordinary exit, which waits for it.
    """
    code = main()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(t.is_alive() and not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the ordinary exit runs first (logging, tempfile, ...)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
