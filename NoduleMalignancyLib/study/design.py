"""The study file: cases, design and seed of a reading study, loaded and checked (docs/DESIGN.md §14).

A study file is JSON::

    {
      "version": 1,                        # optional, the only version so far
      "name": "LIDC pilot",                # optional, shown to the owner
      "design": "sequential",              # or "independent"
      "seed": 20240601,                    # integer >= 0: every reader's case order derives from it
      "hide_model_until_commit": true,     # optional, default true
      "washout_days": 0,                   # optional, independent design only: days between
                                           # the end of a reader's session 1 and their session 2
      "required": ["malignancy", "confidence"],  # optional, default: the 9 LIDC attributes and
                                           # confidence (malignancy and confidence always are)
      "cases": [
        {"id": "LIDC-IDRI-0001_n1",        # letters, digits and . _ : - (no commas or spaces)
         "ct": "ct/LIDC-IDRI-0001.nrrd",   # relative to the study file's folder, or absolute
         "points": [{"name": "n1", "point": [-128.7, -175.3, -252.3]}],  # optional, world LPS mm
         "truth": 1,                       # optional: 1 malignant, 0 benign, null unknown
         "reference": {"malignancy_mean": 3.75, "n_readers": 4},  # optional: the LIDC readers'
                                           # means (<characteristic>_mean, LIDC scales)
         "model": {"malignancy_probability": 0.62, "malignancy_score": 3.9}}  # optional
      ]
    }

One case is one rated unit: a nodule-level study gives each nodule its own case with one point;
several points in a case are landmarks and the reader rates the case as a whole.

*sequential*: one session; per case the reader rates unaided, that rating is locked, then the
model's output is shown and the reader rates again (aided). *independent*: two sessions, one
unaided and one aided; readers of even index (0, 2, ...) read unaided first, odd ones aided first.
A reader's session 2 opens when their session 1 is finished and, with ``washout_days``
(a number >= 0, default 0), that many days after it finished, so the unaided reading of a case
is not remembered at its aided reading; until then the store says when it opens
(``study/store/workflow.py``, ``WashoutError``). A sequential study has one session: a washout there is
refused. The case order is shuffled per reader and session from ``seed``, the reader's id and the session.
Unknown keys are refused (a typo must not silently change the design).

``reference`` and ``model`` feed the analysis only (agreement with the LIDC readers and with the
model, ``study/summary.py``); readers never see them through the store. ``model`` is the
ensemble's output for the case's nodule: ``malignancy_probability`` (0-1) and
``malignancy_score`` (the expected 1-5 malignancy rating).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import InputError, MissingFileError
from .ratings import CHARACTERISTICS, RATING_FIELDS, SCALES, validate_required

DESIGNS = ("sequential", "independent")
# Session numbers per design: the sequential design reads both modalities in one session.
SESSIONS = {"sequential": (1,), "independent": (1, 2)}
MODALITIES = ("unaided", "aided")
STUDY_VERSION = 1
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_TOP_KEYS = {
    "version",
    "name",
    "design",
    "seed",
    "hide_model_until_commit",
    "washout_days",
    "required",
    "cases",
}
_CASE_KEYS = {"id", "ct", "points", "truth", "reference", "model"}
REFERENCE_MEANS = tuple(f"{name}_mean" for name in CHARACTERISTICS)
_REFERENCE_KEYS = {*REFERENCE_MEANS, "n_readers"}
MODEL_RANGES = {"malignancy_probability": (0.0, 1.0), "malignancy_score": (1.0, 5.0)}


class StudyFileError(InputError):
    """A study file that cannot be used; the message names the file and the offending field."""


@dataclass(frozen=True)
class Point:
    """A named nodule location in world LPS millimetres."""

    name: str
    lps: tuple[float, float, float]


@dataclass(frozen=True)
class Reference:
    """The LIDC readers' ratings of a case: their mean per characteristic and their number."""

    means: tuple[tuple[str, float], ...] = ()  # ("malignancy_mean", 3.75), ...
    n_readers: int | None = None

    def mean(self, characteristic: str) -> float | None:
        """The readers' mean of ``characteristic`` (e.g. "malignancy"), or None if not given."""
        return dict(self.means).get(f"{characteristic}_mean")

    @property
    def malignancy_mean(self) -> float | None:
        return self.mean("malignancy")


@dataclass(frozen=True)
class ModelOutput:
    """The model's output for a case, as the study file gives it (None where not given)."""

    malignancy_probability: float | None = None
    malignancy_score: float | None = None  # the expected 1-5 malignancy rating


@dataclass(frozen=True)
class Case:
    """One rated unit: a CT, its nodule points, and the truth where known (0/1 or None)."""

    id: str
    ct: str  # as written in the study file
    ct_path: Path  # resolved against the study file's folder
    points: tuple[Point, ...] = ()
    truth: int | None = None
    reference: Reference | None = None
    model: ModelOutput | None = None


@dataclass(frozen=True)
class Study:
    """A validated study file."""

    design: str
    seed: int
    cases: tuple[Case, ...]
    hide_model_until_commit: bool = True
    required: tuple[str, ...] = RATING_FIELDS
    name: str = ""
    path: Path | None = None
    washout_days: float = 0.0  # independent design: days from session 1's end to session 2

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)


def load_study(path: str | Path, check_files: bool = False) -> Study:
    """Read and validate a study file; with ``check_files`` every CT must exist."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(f"study file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StudyFileError(f"study file {path}: not valid JSON ({exc})") from None
    study = parse_study(data, path.resolve().parent, source=str(path))
    study = replace(study, path=path.resolve())
    if check_files:
        check_ct_files(study)
    return study


def parse_study(data: object, base_dir: str | Path, source: str = "study file") -> Study:
    """Validate the decoded JSON of a study file; relative CT paths resolve against ``base_dir``."""

    def fail(field: str, message: str) -> StudyFileError:
        return StudyFileError(f"{source}: {field}: {message}")

    if not isinstance(data, dict):
        raise fail("(top level)", "expected a JSON object")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    version = data.get("version", STUDY_VERSION)
    if version != STUDY_VERSION:
        raise fail("version", f"{version!r} is not supported (expected {STUDY_VERSION})")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise fail("name", "expected a string")
    design = data.get("design")
    if design not in DESIGNS:
        raise fail("design", f"expected one of {', '.join(DESIGNS)}, got {design!r}")
    seed = data.get("seed")
    if not _is_int(seed) or seed < 0:
        raise fail(
            "seed", f"expected an integer >= 0 (the case orders derive from it), got {seed!r}"
        )
    hide = data.get("hide_model_until_commit", True)
    if not isinstance(hide, bool):
        raise fail("hide_model_until_commit", f"expected true or false, got {hide!r}")
    washout = data.get("washout_days", 0)
    if not _is_number(washout) or not 0 <= washout < float("inf"):
        raise fail("washout_days", f"expected a number of days >= 0, got {washout!r}")
    if washout and design != "independent":
        raise fail(
            "washout_days",
            "only the independent design has a second session to wait for (this study is "
            f"{design}); remove the key or set it to 0",
        )
    required = data.get("required", list(RATING_FIELDS))
    try:
        required = validate_required(required)
    except ValueError as exc:
        raise fail("required", str(exc)) from None
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        raise fail("cases", "expected a non-empty list of cases")
    parsed, seen = [], set()
    for i, raw in enumerate(cases):
        case = _parse_case(raw, f"cases[{i}]", Path(base_dir), fail)
        if case.id in seen:
            raise fail(f"cases[{i}].id", f"{case.id!r} appears twice")
        seen.add(case.id)
        parsed.append(case)
    return Study(
        design, int(seed), tuple(parsed), hide, required, name, washout_days=float(washout)
    )


def _parse_case(raw: object, where: str, base_dir: Path, fail) -> Case:
    if not isinstance(raw, dict):
        raise fail(where, "expected an object with id and ct")
    unknown = sorted(set(raw) - _CASE_KEYS)
    if unknown:
        raise fail(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(_CASE_KEYS))})")
    case_id = raw.get("id")
    if not isinstance(case_id, str) or not CASE_ID.match(case_id):
        raise fail(
            f"{where}.id", f"expected letters, digits and . _ : - (no spaces), got {case_id!r}"
        )
    ct = raw.get("ct")
    if not isinstance(ct, str) or not ct.strip():
        raise fail(f"{where}.ct", "expected the CT's path (relative to the study file or absolute)")
    ct_path = Path(ct).expanduser()
    ct_path = ct_path if ct_path.is_absolute() else (base_dir / ct_path)
    points = raw.get("points", [])
    if not isinstance(points, list):
        raise fail(f"{where}.points", "expected a list of {name, point: [x, y, z]}")
    parsed_points = tuple(
        _parse_point(p, f"{where}.points[{j}]", fail) for j, p in enumerate(points)
    )
    truth = raw.get("truth")
    if truth is not None and (not _is_int(truth) or truth not in (0, 1)):
        raise fail(f"{where}.truth", f"expected 0, 1 or null, got {truth!r}")
    reference = _parse_reference(raw.get("reference"), f"{where}.reference", fail)
    model = _parse_model(raw.get("model"), f"{where}.model", fail)
    return Case(case_id, ct, ct_path, parsed_points, truth, reference, model)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _known_object(raw: object, where: str, keys: set[str], fail) -> dict | None:
    """``raw`` as a non-empty object of known keys, or None where it is absent (null)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise fail(where, f"expected an object of {', '.join(sorted(keys))} (or null)")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise fail(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(keys))})")
    return raw


def _in_range(raw: dict, key: str, low: float, high: float, where: str, fail) -> float:
    value = raw[key]
    if not _is_number(value) or not low <= value <= high:
        raise fail(f"{where}.{key}", f"expected a number {low:g}-{high:g}, got {value!r}")
    return float(value)


def _parse_reference(raw: object, where: str, fail) -> Reference | None:
    """The LIDC readers' means, each on its characteristic's LIDC scale."""
    raw = _known_object(raw, where, _REFERENCE_KEYS, fail)
    if raw is None:
        return None
    means = tuple(
        (key, _in_range(raw, key, *SCALES[key.removesuffix("_mean")], where, fail))
        for key in REFERENCE_MEANS
        if key in raw and raw[key] is not None
    )
    n_readers = raw.get("n_readers")
    if n_readers is not None and (not _is_int(n_readers) or n_readers < 1):
        raise fail(f"{where}.n_readers", f"expected an integer >= 1, got {n_readers!r}")
    return Reference(means, n_readers)


def _parse_model(raw: object, where: str, fail) -> ModelOutput | None:
    """The model's probability (0-1) and 1-5 malignancy score; null values mean not given."""
    raw = _known_object(raw, where, set(MODEL_RANGES), fail)
    if raw is None:
        return None
    values = {
        key: _in_range(raw, key, *bounds, where, fail)
        for key, bounds in MODEL_RANGES.items()
        if raw.get(key) is not None
    }
    return ModelOutput(**values)


def _parse_point(raw: object, where: str, fail) -> Point:
    if not isinstance(raw, dict) or set(raw) - {"name", "point"} or "point" not in raw:
        raise fail(where, 'expected {"name": ..., "point": [x, y, z]} in world LPS mm')
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise fail(f"{where}.name", "expected a string")
    xyz = raw["point"]
    if (
        not isinstance(xyz, list)
        or len(xyz) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xyz)
    ):
        raise fail(f"{where}.point", f"expected [x, y, z] numbers in world LPS mm, got {xyz!r}")
    return Point(name, tuple(float(v) for v in xyz))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ct_files(study: Study) -> None:
    """Raise FileNotFoundError naming every case whose CT is missing (before readers start)."""
    missing = [c for c in study.cases if not c.ct_path.exists()]
    if missing:
        listed = "; ".join(f"{c.id}: {c.ct_path}" for c in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise MissingFileError(
            f"{len(missing)} CT file(s) of the study are missing: {listed}{more}"
        )


def order_seed(seed: int, reader_id: int, session: int) -> int:
    """The shuffle seed of one reader and session: a hash, so nearby ids give unrelated orders."""
    digest = hashlib.sha256(f"{seed}:{reader_id}:{session}".encode()).digest()
    return int.from_bytes(digest[:7], "big")  # 56 bits: fits SQLite's signed INTEGER


def case_order(case_ids: list[str] | tuple[str, ...], seed: int) -> list[str]:
    """The cases shuffled by ``random.Random(seed)``: the same seed always gives the same order."""
    order = list(case_ids)
    random.Random(seed).shuffle(order)
    return order


def session_modality(design: str, reader_index: int, session: int) -> str:
    """The modality read in a session: in the independent design by the reader index's parity.

    The sequential design reads both modalities in its one session ("both").
    """
    if design == "sequential":
        return "both"
    first, second = MODALITIES if reader_index % 2 == 0 else MODALITIES[::-1]
    return first if session == 1 else second
