"""Patient-level stratified K-fold split, written once to ``models/folds.csv``.

Training and evaluation both read the same file, so out-of-fold numbers are computed on exactly
the patients each fold model never saw. Patients (not nodules) are assigned, stratified by the
patient's highest mean malignancy rating, and nodule counts are balanced across folds.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import MissingFileError
from ..settings import shipped_models_dir

DEFAULT_K = 5
DEFAULT_SEED = 2026
DEFAULT_FOLDS_FILE = shipped_models_dir() / "folds.csv"
# Stratum upper bounds on a patient's max mean malignancy (LIDC 1-5): clearly benign, leaning
# benign, indeterminate (exactly 3, excluded from AUROC), leaning malignant, clearly malignant.
STRATA = ("<=2", "(2,3)", "=3", "(3,4]", ">4", "unknown")


def stratum(max_malignancy: float) -> str:
    """Stratum of a patient's highest mean malignancy rating."""
    m = max_malignancy
    if m is None or not np.isfinite(m):
        return "unknown"
    if m <= 2.0:
        return "<=2"
    if m < 3.0:
        return "(2,3)"
    if m == 3.0:
        return "=3"
    if m <= 4.0:
        return "(3,4]"
    return ">4"


def make_folds(
    patient_ids, malignancy_means, k: int = DEFAULT_K, seed: int = DEFAULT_SEED
) -> dict[str, int]:
    """Assign every patient to one of ``k`` folds, stratified and balanced in nodule count.

    ``patient_ids`` and ``malignancy_means`` are per nodule. Within each stratum, patients are
    shuffled (fixed seed), sorted by nodule count (largest first) and each goes to the fold with
    the fewest nodules of that stratum, ties broken by fewest nodules overall, then by fold index.
    """
    per_patient: dict[str, list[float]] = defaultdict(list)
    for pid, m in zip(patient_ids, malignancy_means, strict=True):
        per_patient[str(pid)].append(float(m) if m is not None else math.nan)
    strata: dict[str, list[str]] = defaultdict(list)
    for pid, ms in sorted(per_patient.items()):
        finite = [m for m in ms if np.isfinite(m)]
        strata[stratum(max(finite) if finite else math.nan)].append(pid)
    rng = np.random.default_rng(seed)
    total = np.zeros(k, dtype=int)
    assignment: dict[str, int] = {}
    for name in STRATA:
        pids = strata.get(name, [])
        if not pids:
            continue
        order = rng.permutation(len(pids))
        pids = [pids[i] for i in order]
        pids.sort(key=lambda p: -len(per_patient[p]))  # stable: ties keep the shuffled order
        in_stratum = np.zeros(k, dtype=int)
        for pid in pids:
            n = len(per_patient[pid])
            fold = min(range(k), key=lambda f: (in_stratum[f], total[f], f))
            assignment[pid] = fold
            in_stratum[fold] += n
            total[fold] += n
    return assignment


# Cells a spreadsheet runs as a formula (files/csv_cells.FORMULA_TRIGGERS; the core cannot
# import it, a test keeps the two equal).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def write_folds(assignment: dict[str, int], path: str | os.PathLike = DEFAULT_FOLDS_FILE) -> Path:
    """Write ``patient_id,fold`` sorted by patient.

    A patient ID a spreadsheet would run as a formula is refused: the folds file is read back
    by :func:`load_folds` verbatim, so it cannot carry the ``'`` that files/csv_cells adds.
    """
    formulas = sorted(p for p in assignment if str(p).startswith(_FORMULA_STARTS))
    if formulas:
        raise ValueError(f"patient IDs that a spreadsheet runs as a formula: {formulas[:3]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "fold"])
        for pid in sorted(assignment):
            w.writerow([pid, int(assignment[pid])])
    return path


def load_folds(path: str | os.PathLike = DEFAULT_FOLDS_FILE) -> dict[str, int]:
    """Read a folds file; refuses one that puts a patient in two folds."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"No folds file at {path} (nodule-malignancy train writes one).")
    out: dict[str, int] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            pid, fold = row["patient_id"].strip(), int(row["fold"])
            if pid in out and out[pid] != fold:
                raise ValueError(f"{path}: patient {pid} is in folds {out[pid]} and {fold}")
            out[pid] = fold
    return out


def folds_sha256(path: str | os.PathLike = DEFAULT_FOLDS_FILE) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ensure_folds(
    patient_ids,
    malignancy_means,
    path: str | os.PathLike = DEFAULT_FOLDS_FILE,
    k: int = DEFAULT_K,
    seed: int = DEFAULT_SEED,
) -> dict[str, int]:
    """Load the folds file, creating it from these nodules if absent.

    An existing file must cover every patient given: training on patients the split does not
    know would silently leak them, so it is an error (delete the file to re-split).
    """
    path = Path(path)
    if not path.is_file():
        write_folds(make_folds(patient_ids, malignancy_means, k, seed), path)
    folds = load_folds(path)
    unknown = sorted({str(p) for p in patient_ids} - set(folds))
    if unknown:
        raise ValueError(
            f"{len(unknown)} patient(s) are not in {path} (e.g. {unknown[:3]}); "
            "delete it to make a new split over the current data."
        )
    return folds


def fold_of(patient_ids, folds: dict[str, int]) -> np.ndarray:
    """Fold index of every nodule (by its patient)."""
    return np.array([folds[str(p)] for p in patient_ids], dtype=int)
