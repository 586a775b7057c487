"""``nodule-malignancy exam``: every nodule of a CT, the exam's Lung-RADS v2022 and each
nodule's Brock risk, written to ``DIR/exam.json`` (docs/DESIGN.md §17).

The points come from a LUNA25 "Multiple points" JSON (batch/luna25.py reads it) or an LIDC
reader XML (one point per nodule the readers outlined, files/lidc_xml.py). A point of the JSON
may carry its prior measurement, typed in, for the Lung-RADS follow-up rules::

    {"name": "n1", "point": [x, y, z], "prior": {"mean_diameter_mm": 6.2, "date": "2025-03-01",
     "solid_mean_diameter_mm": 0, "texture_class": "solid", "volume_mm3": 110}}
    {"name": "n2", "point": [x, y, z], "prior": "new"}

The interval is ``--date`` (or the DICOM study date) less the prior's date; missing either, the
follow-up rules take it as within 12 months and say so.

With ``--prior PRIOR`` the prior CT is registered to the current one and every nodule is looked
for on it (core/prior/exam_prior.py): each nodule's ``prior`` is then measured, with the same keys as a
typed-in one (``source`` tells which), and ``prior_ct`` holds the registration, its residual and
what the comparison flagged or refused. ``--prior-points`` lists the prior's own nodules (same
formats), which are looked for on the current CT. A points file with typed-in priors and
``--prior`` together are refused: one or the other.

Beside ``exam.json`` the report (files/exam_report.py): ``exam.html`` for the referring
physician and, for a DICOM CT, ``exam_sr.dcm`` (TID 1500) with ``exam_seg.dcm``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from ..core.errors import InputError

__all__ = ["read_exam_points", "register", "run_exam"]

PRIOR_KEYS = {
    "mean_diameter_mm",
    "diameter_mm",
    "solid_mean_diameter_mm",
    "texture_class",
    "volume_mm3",
    "date",
}


def _date(text: str, where: str) -> dt.date:
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise InputError(f"{where}: date {text!r} is not YYYY-MM-DD")


def _number(value, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InputError(f"{where} is {value!r}, expected a number")
    if value < 0 or (positive and value == 0):
        raise InputError(f"{where} is {value!r}, expected a number above 0")
    return float(value)


def _prior(entry, where: str, current: dt.date | None):
    """(PriorMeasurement or None, new, volume, date text, longest diameter) of a point's
    ``prior`` value."""
    from ..core.clinical.lung_rads import TEXTURE_CLASSES
    from ..core.clinical.lung_rads_followup import PriorMeasurement

    if entry is None:
        return None, False, None, None, None
    if entry == "new":
        return None, True, None, None, None
    if not isinstance(entry, dict):
        raise InputError(f'{where} is {entry!r}: expected "new" or an object with {PRIOR_KEYS}')
    unknown = set(entry) - PRIOR_KEYS
    if unknown:
        raise InputError(f"{where} has unknown keys {sorted(unknown)}; known: {sorted(PRIOR_KEYS)}")
    if "mean_diameter_mm" not in entry:
        raise InputError(f"{where} lacks mean_diameter_mm (the prior's mean diameter, mm)")
    mean = _number(entry["mean_diameter_mm"], f"{where}.mean_diameter_mm", positive=True)
    solid = entry.get("solid_mean_diameter_mm")
    solid = None if solid is None else _number(solid, f"{where}.solid_mean_diameter_mm")
    texture = entry.get("texture_class")
    if texture is not None and texture not in TEXTURE_CLASSES:
        raise InputError(f"{where}.texture_class is {texture!r}; one of {TEXTURE_CLASSES}")
    volume = entry.get("volume_mm3")
    volume = None if volume is None else _number(volume, f"{where}.volume_mm3", positive=True)
    longest = entry.get("diameter_mm")
    longest = None if longest is None else _number(longest, f"{where}.diameter_mm", positive=True)
    date = entry.get("date")
    interval = None
    if date is not None:
        prior_date = _date(str(date), f"{where}.date")
        if current is not None:
            interval = float((current - prior_date).days)
            if interval <= 0:
                raise InputError(f"{where}.date {date} is not before the exam's date {current}")
    return PriorMeasurement(mean, solid, texture, interval), False, volume, date, longest


def read_exam_points(path: str | Path, geometry, current: dt.date | None) -> list:
    """The exam's points (core/clinical/exam.ExamPoint) from a LUNA25 JSON or an LIDC XML."""
    from ..core.clinical.exam import ExamPoint
    from ..files.lidc_xml import reader_nodule_points_lps
    from .luna25 import read_locations

    path = Path(path)
    if path.suffix.lower() == ".xml":
        if not path.is_file():
            raise InputError(f"no LIDC XML at {path}")
        found = reader_nodule_points_lps(path, geometry)
        if not found:
            raise InputError(f"{path}: no nodule outlined by the readers (>= 3 mm)")
        return [ExamPoint(name, point) for name, point, _ in found]
    document = read_locations(path)
    points = []
    for i, entry in enumerate(document["points"]):
        where = f"{path}: points[{i}].prior"
        prior, new, volume, date, longest = _prior(entry.get("prior"), where, current)
        name = entry.get("name") or f"#{i}"
        point = tuple(float(c) for c in entry["point"])
        points.append(ExamPoint(name, point, prior, new, volume, date, longest))
    if not points:
        raise InputError(f"{path}: no points")
    return points


def _clinical(args):
    from ..core.clinical.exam import ClinicalInputs

    if args.age is not None and not 18 <= args.age <= 110:
        raise InputError(f"--age {args.age} is outside 18-110 years")
    yes_no = {"yes": True, "no": False, None: None}
    return ClinicalInputs(
        age=args.age,
        female={"female": True, "male": False, None: None}[args.sex],
        family_history=yes_no[args.family_history],
    )


def _check_prior_arguments(args) -> None:
    """Bad points files and prior options stop before any CT is read."""
    for option, path in (("--points", args.points), ("--prior-points", args.prior_points)):
        if path is None or Path(path).suffix.lower() == ".xml":
            continue
        points = read_exam_points(path, None, None)
        if args.prior and any(p.prior is not None or p.new for p in points):
            raise InputError(
                f"{option} {path}: points carry typed-in priors and --prior was given: the "
                "prior CT is measured, leave out the typed-in 'prior' entries (or --prior)"
            )
    if not args.prior:
        given = [o for o, v in (("--prior-date", args.prior_date),
                                ("--prior-points", args.prior_points)) if v]  # fmt: skip
        if given:
            raise InputError(f"{', '.join(given)} without --prior")
    elif args.prior_date:
        _date(args.prior_date, "--prior-date")


def _read_prior(args, current: dt.date | None):
    """(core/prior/exam_prior.PriorCT, interval in days or ``None``, its DICOM headers or ``None``)
    of ``--prior``."""
    from ..core.prior.exam_prior import PriorCT
    from ..files import ct_input
    from .predict import read_input

    array, geometry, datasets, identity = read_input(args.prior, args.prior_series, dicom=True)
    text = args.prior_date or identity.get("study_date") or None
    where = "--prior-date" if args.prior_date else "the prior's study date"
    date = _date(text, where) if text else None
    interval = None
    if date is not None and current is not None:
        interval = float((current - date).days)
        if interval <= 0:
            raise InputError(f"{where} {date} is not before the exam's date {current}")
    points = ()
    if args.prior_points:
        points = tuple(read_exam_points(args.prior_points, geometry, None))
    kernel = ct_input.convolution_kernel(datasets)
    description = {"path": str(args.prior), **identity, "points_file": args.prior_points}
    description["convolution_kernel"] = kernel
    iso = date.isoformat() if date else None
    return PriorCT(array, geometry, iso, points, description, kernel), interval, datasets


def _prior_arrays(prior) -> tuple:
    """(voxels, grid, DICOM headers) of what :func:`_read_prior` returned."""
    prior_ct, _, datasets = prior
    return prior_ct.image_zyx, prior_ct.geometry, datasets


def run_exam(args) -> dict:
    """Read, analyze, write ``exam.json``; returns the document written."""
    from ..core.atomic import write_json
    from ..core.clinical.exam import analyze_exam
    from ..core.model.ensemble import Ensemble
    from ..core.prior.exam_prior import analyze_exam_with_prior
    from ..files import ct_input
    from ..files.exam_report import ExamCT, write_exam_report
    from ..files.writable import check_output_folder
    from .predict import read_input

    seconds, start = {}, [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        seconds[stage], start[0] = now - start[0], now

    clinical = _clinical(args)
    _check_prior_arguments(args)
    out = check_output_folder(args.out, "--out")
    array, geometry, datasets, identity = read_input(args.ct, args.series, dicom=True)
    date_text = args.date or identity.get("study_date") or None
    current = _date(date_text, "--date" if args.date else "the study date") if date_text else None
    points = read_exam_points(args.points, geometry, current)
    lap("read")
    prior = _read_prior(args, current) if args.prior else None
    if prior is not None:
        lap("read_prior")
    ensemble = Ensemble.load(args.models, device=args.device)
    lap("weights")
    if prior is None:
        exam = analyze_exam(array, geometry, points, ensemble, clinical, args.brock_defaults)
    else:
        prior_ct, interval, _ = prior
        exam = analyze_exam_with_prior(
            array, geometry, points, ensemble, prior_ct, interval, clinical, args.brock_defaults,
            current_kernel=ct_input.convolution_kernel(datasets),
        )  # fmt: skip
    lap("exam")
    document = {
        "ct": str(args.ct),
        **identity,
        "date": current.isoformat() if current else None,
        "points_file": str(args.points),
        "model_version": ensemble.version,
        **exam.to_dict(),
    }
    current_ct = ExamCT(array, geometry, datasets, document["date"])
    prior_ct = None if prior is None else ExamCT(*_prior_arrays(prior), exam.prior_ct["date"])
    document["files"] = write_exam_report(document, exam, current_ct, prior_ct, out)
    lap("report")
    document["timings_s"] = {"stages": dict(seconds), "exam": exam.timings_s}
    write_json(Path(out) / "exam.json", document)
    lap("writing")
    document["timings_s"]["stages"] = seconds  # the print adds the writing
    return document


def _print(document: dict) -> None:
    from ..core.result_schema import shown
    from ..files.exam_html import prior_text

    print(f"Lung-RADS {document['lung_rads']} ({document['lung_rads_descriptor']})")
    for reason in document["lung_rads_reasons"]:
        print(f"  {reason}")
    for suggestion in document["lung_rads_suggestions"]:
        print(f"  suggestion: {suggestion}")
    print(f"  management: {document['lung_rads_management']}")
    for n in document["nodules"]:
        line = f"{n['name']}: {n['assessment']}"
        if n["lung_rads"]:
            line += (
                f", malignancy {shown('malignancy_probability', n['malignancy_probability'])}, "
                f"{shown('diameter_mm', n['diameter_mm'])}, Lung-RADS {n['lung_rads']}"
            )
            brock = n["brock"]
            if brock is not None and brock["computed"]:
                line += f", Brock {100 * brock['probability']:.1f} % ({brock['note']})"
            elif brock is not None:
                line += f", Brock {brock['note']}"
        line += f"; {prior_text(n['prior'])}" if n["prior"] else ""
        print(line)
    prior_ct = document.get("prior_ct")
    if prior_ct:
        registration = prior_ct["registration"]
        if registration:
            print(f"prior: {registration['verdict_reason']}")
        for finding in prior_ct["findings"]:
            print(f"  prior {finding['level']}: {finding['message']}")
        for entry in prior_ct["not_found_in_current"]:
            print(f"  {entry['name']} (prior): not found in the current CT: {entry['reason']}")
    split = document["timings_s"]
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in split["stages"].items()))
    exam = split["exam"]
    per_nodule = ", ".join(
        f"{name} {v:.1f}" for name, v in exam["analysis_per_nodule"].items() if v is not None
    )
    prior = ""
    if "registration" in exam:
        prior = (
            f"registration {exam['registration']:.1f}, prior matching "
            f"{exam['prior_matching']:.1f}, "
        )
    print(
        f"  exam: {prior}analysis {exam['analysis']:.1f} ({per_nodule}), emphysema "
        f"{exam['emphysema']:.1f}, brock {exam['brock']:.1f}"
    )


def cmd_exam(args: argparse.Namespace) -> int:
    document = run_exam(args)
    _print(document)
    written = ", ".join(document["files"].values())
    print(f"wrote {Path(args.out) / 'exam.json'} and {written}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``exam`` sub-command to the main CLI's sub-parsers."""
    sp = subparsers.add_parser(
        "exam", help="every nodule of a CT: the exam's Lung-RADS v2022 and each nodule's Brock"
    )
    sp.add_argument("--ct", required=True, help="CT file SimpleITK reads, DICOM folder or .tar.gz")
    sp.add_argument("--series", default=None, help="the series UID when --ct holds several")
    sp.add_argument(
        "--points",
        required=True,
        help="LUNA25 'Multiple points' JSON (world LPS; a point may carry its 'prior') or LIDC XML",
    )
    sp.add_argument("--date", default=None, help="the exam's date YYYY-MM-DD (default: DICOM's)")
    sp.add_argument(
        "--prior",
        default=None,
        help="the prior CT (file, DICOM folder or .tar.gz): registered, every nodule looked "
        "for on it",
    )
    sp.add_argument("--prior-series", default=None, help="the prior's series UID when several")
    sp.add_argument("--prior-date", default=None, help="the prior's date (default: DICOM's)")
    sp.add_argument(
        "--prior-points",
        default=None,
        help="the prior's own nodules (LUNA25 JSON or LIDC XML, its frame): looked for on the "
        "current CT",
    )
    sp.add_argument("--age", type=float, default=None, help="years (Brock)")
    sp.add_argument("--sex", choices=("female", "male"), default=None, help="(Brock)")
    sp.add_argument("--family-history", choices=("yes", "no"), default=None,
                    help="of lung cancer (Brock)")  # fmt: skip
    sp.add_argument(
        "--brock-defaults",
        action="store_true",
        help="compute Brock with the model's stated defaults (age 62, male, no family history) "
        "for the clinical inputs not given, marked 'default' (otherwise not computed)",
    )
    sp.add_argument(
        "--out",
        required=True,
        help="output folder: exam.json, exam.html; exam_seg.dcm and exam_sr.dcm for a DICOM CT",
    )
    sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")
    sp.set_defaults(func=cmd_exam)
