"""``nodule-malignancy luna25``: the LUNA25 grand-challenge algorithm's input and output.

The container reads ``/input/images/chest-ct/<one>.mha`` and ``/input/nodule-locations.json``
(a "Multiple points" document, world LPS mm, docs/DESIGN.md §5) and writes
``/output/lung-nodule-malginancy-likelihoods.json`` (the challenge's own spelling): the same
document with a malignancy ``probability`` added to every point. Each point goes through the
scope layer (docs/DESIGN.md §12) like a click would; a point that cannot be scored still gets an
entry, with :data:`DEFAULT_PROBABILITY`, and a line on stderr (docs/DESIGN.md §13).

Why no extra keys (scope warnings, refusal codes) in the output: grand-challenge validates a
"Multiple points" value against its JSON schema, which allows only ``name``, ``type``,
``point`` and ``probability`` per point (``additionalProperties: false``); an extra key would
fail the submission. Warnings and refusals go to stderr, which the platform keeps as the log.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.atomic import write_json
from ..core.errors import InputError
from ..files.row_errors import TRACEBACK_KEY, failure_log_path, failure_traceback, write_failure_log
from .row_timeout import DEFAULT_ROW_TIMEOUT_S, RowTimeoutError, row_deadline

__all__ = [
    "CLINICAL_FILE",
    "CT_FOLDER",
    "DEFAULT_PROBABILITY",
    "LOCATIONS_FILE",
    "OUTPUT_FILE",
    "InputError",
    "Luna25Inputs",
    "PointScore",
    "build_output",
    "find_ct",
    "read_clinical",
    "read_inputs",
    "read_locations",
    "register",
    "run",
    "score_points",
    "write_output",
]

CT_FOLDER = Path("images") / "chest-ct"
LOCATIONS_FILE = "nodule-locations.json"
CLINICAL_FILE = "clinical-information-lung-ct.json"
OUTPUT_FILE = "lung-nodule-malginancy-likelihoods.json"  # sic: the challenge's interface name
POINTS_TYPE = "Multiple points"
VERSION = {"major": 1, "minor": 0}

# The probability of a point the model cannot score (refused by the scope layer, outside the
# image, an error): the malignancy prevalence of the labelled training nodules, 326 of 673
# (models/EVALUATION.md). Why the prior: the challenge ranks by AUROC, where a constant counts
# only by where it falls among the scored points; the base rate is what a calibrated model says
# when it knows nothing about the nodule, and it lands between the confident benign and the
# confident malignant scores, so an unscorable point costs about half a pair, never a
# systematic error. (0.5 would rank almost the same; 0 or 1 would bet on the refusal's cause.)
DEFAULT_PROBABILITY = round(326 / 673, 4)

Log = Callable[[str], None]


@dataclass
class Luna25Inputs:
    """What one case's input folder holds, validated."""

    ct_path: Path
    locations: dict
    clinical: dict | None = None


@dataclass
class PointScore:
    """One point's probability; ``status`` is scored, not_assessed (probably not a nodule,
    core/scope/assessment.py: the default probability), refused (a scope code) or failed."""

    name: str
    probability: float
    status: str = "scored"
    # a refusal code of core/scope/validation.py, outside_image, or the error's class
    code: str = ""
    message: str = ""
    warnings: list[tuple[str, str]] = field(default_factory=list)
    traceback: str | None = None  # of an unexpected error (a bug), for the errors log

    @property
    def scored(self) -> bool:
        return self.status == "scored"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def find_ct(input_dir: str | Path) -> Path:
    """The one ``.mha`` under ``images/chest-ct/``; an :class:`InputError` naming what is there."""
    folder = Path(input_dir) / CT_FOLDER
    if not folder.is_dir():
        raise InputError(f"no CT folder {folder} (expected one .mha in it)")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".mha" and p.is_file())
    if len(found) != 1:
        others = sorted(p.name for p in folder.iterdir())
        raise InputError(
            f"expected exactly one .mha in {folder}, found {len(found)}"
            + (f": {', '.join(others)}" if others else " (the folder is empty)")
        )
    return found[0]


def _is_number(value) -> bool:
    """A finite JSON number (not a boolean; NaN and Infinity parse, huge integers overflow)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_point(index: int, entry, source: Path) -> None:
    where = f"{source}: points[{index}]"
    if not isinstance(entry, dict):
        raise InputError(f"{where} is {type(entry).__name__}, expected an object")
    if "name" in entry and not isinstance(entry["name"], str):
        raise InputError(f"{where}: name is {entry['name']!r}, expected a string")
    point = entry.get("point")
    if not isinstance(point, list) or len(point) != 3 or not all(map(_is_number, point)):
        raise InputError(f"{where}: point is {point!r}, expected [x, y, z] (3 finite numbers, mm)")


def read_locations(path: str | Path) -> dict:
    """``nodule-locations.json`` parsed and checked against the "Multiple points" layout."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no {path.name} at {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path} holds a {type(document).__name__}, expected an object")
    if document.get("type") != POINTS_TYPE:
        raise InputError(f"{path}: type is {document.get('type')!r}, expected {POINTS_TYPE!r}")
    points = document.get("points")
    if not isinstance(points, list):
        raise InputError(f"{path}: points is {points!r}, expected a list")
    for i, entry in enumerate(points):
        _check_point(i, entry, path)
    if "version" in document and not isinstance(document["version"], dict):
        raise InputError(f"{path}: version is {document['version']!r}, expected an object")
    return document


def read_clinical(input_dir: str | Path, log: Log = _stderr) -> dict | None:
    """The clinical information when present, never an error: the model does not use it."""
    path = Path(input_dir) / CLINICAL_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log(f"note: {CLINICAL_FILE} could not be read ({exc}); ignored, the model does not use it")
        return None
    keys = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
    log(f"note: read {CLINICAL_FILE} ({keys}); not used, the model reads the image only")
    return data if isinstance(data, dict) else None


def read_inputs(input_dir: str | Path, log: Log = _stderr) -> Luna25Inputs:
    """Find the CT and read the points (and the clinical file) before any heavy work."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"input folder {input_dir} does not exist")
    ct_path = find_ct(input_dir)
    locations = read_locations(input_dir / LOCATIONS_FILE)
    return Luna25Inputs(ct_path, locations, read_clinical(input_dir, log))


def _point_name(index: int, entry: dict) -> str:
    return entry.get("name") or f"#{index}"


def _score_one(name: str, array, geometry, point_lps, ensemble) -> PointScore:
    """One point through ``analyze_point``; a refusal or an error becomes the default."""
    from ..core.nodule.analysis import analyze_point
    from ..core.nodule.voi import PointOutsideVolumeError
    from ..core.scope.assessment import NOT_ASSESSED_CODES
    from ..core.scope.validation import RefusedError

    try:
        result = analyze_point(array, geometry, point_lps, ensemble, map_to_ct=False)
    except RefusedError as exc:
        return PointScore(name, DEFAULT_PROBABILITY, "refused", exc.code, str(exc))
    except PointOutsideVolumeError as exc:
        return PointScore(name, DEFAULT_PROBABILITY, "refused", "outside_image", str(exc))
    except RowTimeoutError:  # not a bug: score_points gives the default with the reason
        raise
    except Exception as exc:  # one bad point never stops the case (docs/DESIGN.md §13)
        trace = failure_traceback(exc)
        return PointScore(
            name, DEFAULT_PROBABILITY, "failed", type(exc).__name__, str(exc), [], trace
        )
    probability = float(result.malignancy_probability)
    if not 0.0 <= probability <= 1.0:  # NaN included: the schema wants a number in [0, 1]
        message = f"the ensemble gave {probability}"
        return PointScore(name, DEFAULT_PROBABILITY, "failed", "not_a_probability", message)
    warnings = [(w.code, w.message) for w in result.warnings]
    assessment = result.assessment
    if not assessment.answered:  # the challenge needs a number: the default, the reason logged
        codes = ";".join(c for c, _ in warnings if c in NOT_ASSESSED_CODES)
        return PointScore(name, DEFAULT_PROBABILITY, assessment.tier, codes, assessment.reason)
    return PointScore(name, probability, warnings=warnings)


def _report(score: PointScore, log: Log) -> None:
    """Scored points on stdout; warnings, refusals and failures on stderr (the run's log)."""
    if score.scored:
        from ..core.result_schema import labelled

        print(f"point {score.name}: {labelled('malignancy_probability', score.probability)}")
        for code, message in score.warnings:
            log(f"point {score.name}: warning ({code}): {message}")
        return
    message = " ".join(score.message.split())
    log(
        f"point {score.name}: {score.status} ({score.code}): {message} "
        f"-> default probability {score.probability}"
    )


def score_points(
    array: np.ndarray,
    geometry,
    points: list[dict],
    ensemble,
    log: Log = _stderr,
    row_timeout: float | None = None,
) -> list[PointScore]:
    """A :class:`PointScore` per point, in order; refusals and warnings logged per point. A
    point over ``row_timeout`` seconds gets the default probability, its reason logged
    (batch/row_timeout.py), and the next point runs."""
    scores = []
    for i, entry in enumerate(points):
        point_lps = np.array(entry["point"], dtype=float)
        name = _point_name(i, entry)
        try:
            with row_deadline(row_timeout, f"point {name}"):
                score = _score_one(name, array, geometry, point_lps, ensemble)
        except RowTimeoutError as exc:
            score = PointScore(name, DEFAULT_PROBABILITY, "failed", "row_timeout", str(exc))
        _report(score, log)
        scores.append(score)
    return scores


def build_output(locations: dict, scores: list[PointScore]) -> dict:
    """The input document with each point's ``probability`` added; every given value kept."""
    if len(scores) != len(locations["points"]):
        raise ValueError(f"{len(scores)} scores for {len(locations['points'])} points")
    points = [
        {**entry, "probability": score.probability}
        for entry, score in zip(locations["points"], scores, strict=True)
    ]
    document = {key: points if key == "points" else value for key, value in locations.items()}
    document.setdefault("version", dict(VERSION))  # the schema requires it
    return document


def write_output(output_dir: str | Path, document: dict) -> Path:
    """The likelihoods file, atomically: the platform never reads half a file."""
    return write_json(Path(output_dir) / OUTPUT_FILE, document)


def run(
    input_dir: str | Path,
    output_dir: str | Path,
    models: str | Path | None = None,
    device: str = "auto",
    log: Log = _stderr,
    row_timeout: float | None = DEFAULT_ROW_TIMEOUT_S,
) -> tuple[Path, list[PointScore]]:
    """One LUNA25 case: read and check the inputs, score every point, write the output.
    ``row_timeout``: seconds the CT's reading (else an input error) and each point may take."""
    import SimpleITK as sitk

    from ..core.geometry import ImageGeometry
    from ..core.model.ensemble import Ensemble
    from ..files.samples import read_ct
    from ..files.writable import check_output_folder

    inputs = read_inputs(input_dir, log)
    check_output_folder(output_dir, "--output")  # before the CT is read (files/writable.py)
    try:
        with row_deadline(row_timeout, f"reading {inputs.ct_path}"):
            image = read_ct(inputs.ct_path)
    except (ValueError, RowTimeoutError) as exc:
        raise InputError(str(exc)) from None
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    ensemble = Ensemble.load(models, device=device)
    points = inputs.locations["points"]
    scores = score_points(array, geometry, points, ensemble, log, row_timeout)
    path = write_output(output_dir, build_output(inputs.locations, scores))
    rows = [{"id": s.name, TRACEBACK_KEY: s.traceback} for s in scores]
    failures = write_failure_log(failure_log_path(output_dir), rows)
    if failures:
        log(f"tracebacks of unexpected errors (bugs): {failures}")
    return path, scores


def cmd_luna25(args: argparse.Namespace) -> int:
    """Exit 0 once the output is written (unscorable points included); input errors raise."""
    path, scores = run(
        args.input, args.output, args.models, args.device, row_timeout=args.row_timeout
    )
    unscored = sum(not s.scored for s in scores)
    print(
        f"scored {len(scores) - unscored}/{len(scores)} points"
        + (f" ({unscored} given the default {DEFAULT_PROBABILITY})" if unscored else "")
        + f" -> {path}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``luna25`` sub-command to the main CLI's sub-parsers."""
    sp = subparsers.add_parser(
        "luna25", help="LUNA25 grand-challenge I/O: score nodule-locations.json on one CT"
    )
    sp.add_argument("--input", required=True, help=f"folder with {CT_FOLDER}/ and the points")
    sp.add_argument("--output", required=True, help=f"folder for {OUTPUT_FILE}")
    sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")
    sp.add_argument(
        "--row-timeout",
        type=float,
        default=DEFAULT_ROW_TIMEOUT_S,
        help=f"seconds reading the CT or scoring one point may take (default "
        f"{DEFAULT_ROW_TIMEOUT_S:g}; 0: no limit); a point over it gets the default probability",
    )
    sp.set_defaults(func=cmd_luna25)
