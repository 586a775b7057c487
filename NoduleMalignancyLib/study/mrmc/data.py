"""The MRMC analysis's input: long-format rows, checked, and the fully crossed score cube.

Input is a long table, one row per reader x case x modality: ``reader,case,modality,score,truth``
(``rating`` is read as ``score``), from a list of dicts, a CSV or an iMRMC file. Labels are kept
as text, so reader ``1`` and ``"1"`` are one reader; modalities keep the order in which they first
appear (differences are first minus second), unless ``modalities=`` gives the order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.errors import InputError
from ...files.csv_cells import read_csv

SCORE_COLUMNS = ("score", "rating")


@dataclass(frozen=True)
class Study:
    """A complete factorial reading study: every reader scored every case in every modality."""

    readers: tuple[str, ...]
    modalities: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray  # (cases,) 0 = normal, 1 = abnormal
    scores: np.ndarray  # (modalities, readers, cases)

    @property
    def n_abnormal(self) -> int:
        return int(self.truth.sum())

    @property
    def n_normal(self) -> int:
        return len(self.truth) - self.n_abnormal


def _cell(row: Mapping, names: Sequence[str], number: int):
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    raise InputError(f"row {number}: no {' or '.join(names)} column (got {sorted(row)})")


def _label(value, what: str, number: int) -> str:
    text = str(value).strip()
    if not text or any(ch in text for ch in ",\n\r"):
        raise InputError(f"row {number}: {what} {value!r} is empty or holds a comma / newline")
    return text


def truth_value(value, number: int) -> int:
    try:
        number_value = float(value)
    except (TypeError, ValueError):
        number_value = math.nan
    if number_value not in (0.0, 1.0):
        raise InputError(f"row {number}: truth must be 0 (normal) or 1 (abnormal), got {value!r}")
    return int(number_value)


def _score(value, number: int) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise InputError(f"row {number}: score must be a finite number, got {value!r}")
    return score


def check_row(row: Mapping, number: int) -> dict:
    """One input row as ``{reader, case, modality, score, truth}`` (labels as text)."""
    return {
        "reader": _label(_cell(row, ("reader",), number), "reader", number),
        "case": _label(_cell(row, ("case",), number), "case", number),
        "modality": _label(_cell(row, ("modality",), number), "modality", number),
        "score": _score(_cell(row, SCORE_COLUMNS, number), number),
        "truth": truth_value(_cell(row, ("truth",), number), number),
    }


def load_rows(source: str | os.PathLike | Iterable[Mapping]) -> list[dict]:
    """Rows from a list of dicts, a long-format CSV or an iMRMC file, normalised and checked.

    Why one entry point: the CLI, the plot and the analysis all accept any of the three.
    """
    if isinstance(source, (str, os.PathLike)):
        from .imrmc import is_imrmc, read_imrmc  # here: the iMRMC reader checks rows with ours

        path = Path(source)
        if is_imrmc(path):
            return read_imrmc(path)
        source = read_csv(path)  # the project's CSV: formula-safe cells read back as written
    rows = [check_row(row, number) for number, row in enumerate(source, start=1)]
    if not rows:
        raise InputError("no rows: a reading study needs reader,case,modality,score,truth rows")
    return rows


def _first_seen(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def case_truth(rows: list[dict]) -> dict[str, int]:
    truth: dict[str, int] = {}
    for row in rows:
        previous = truth.setdefault(row["case"], row["truth"])
        if previous != row["truth"]:
            raise InputError(f"case {row['case']}: truth is not constant (both 0 and 1 given)")
    return truth


def _modality_order(rows: list[dict], modalities: Sequence | None) -> tuple[str, ...]:
    seen = _first_seen(row["modality"] for row in rows)
    if modalities is None:
        return seen
    order = tuple(str(m).strip() for m in modalities)
    if sorted(order) != sorted(seen):
        raise InputError(f"modalities={list(order)} do not match the data's {list(seen)}")
    return order


def _check_design(study: Study) -> None:
    if len(study.readers) < 2:
        raise InputError(f"an MRMC analysis needs at least 2 readers, got {len(study.readers)}")
    if len(study.modalities) < 2:
        raise InputError(
            f"an MRMC analysis compares at least 2 modalities, got {len(study.modalities)}"
        )
    if study.n_abnormal == 0 or study.n_normal == 0:
        raise InputError("truth has one class only: an AUC needs normal and abnormal cases")
    if study.n_abnormal < 2 or study.n_normal < 2:
        raise InputError(
            f"need at least 2 normal and 2 abnormal cases (got {study.n_normal} normal, "
            f"{study.n_abnormal} abnormal) for the case covariance"
        )


def build_study(rows: Iterable[Mapping] | str | os.PathLike, modalities=None) -> Study:
    """The score cube (modality, reader, case) and the truth per case, with the design checked.

    Why strict: the Obuchowski-Rockette analysis here assumes the fully crossed design; a reader
    who missed a case would silently bias a padded or dropped cell.
    """
    table = load_rows(rows)
    readers = _first_seen(row["reader"] for row in table)
    mods = _modality_order(table, modalities)
    truth_of = case_truth(table)
    cases = tuple(truth_of)
    index = (
        {m: i for i, m in enumerate(mods)},
        {r: j for j, r in enumerate(readers)},
        {c: k for k, c in enumerate(cases)},
    )
    scores = np.full((len(mods), len(readers), len(cases)), np.nan)
    seen = np.zeros(scores.shape, dtype=bool)
    for row in table:
        at = (index[0][row["modality"]], index[1][row["reader"]], index[2][row["case"]])
        if seen[at]:
            raise InputError(
                f"reader {row['reader']} scored case {row['case']} twice in modality "
                f"{row['modality']}"
            )
        seen[at], scores[at] = True, row["score"]
    if not seen.all():
        i, j, k = np.argwhere(~seen)[0]
        raise InputError(
            f"reader {readers[j]} has no score for case {cases[k]} in modality {mods[i]} "
            f"({int((~seen).sum())} reader x case x modality cells missing; the design must be "
            "fully crossed)"
        )
    study = Study(readers, mods, cases, np.array([truth_of[c] for c in cases]), scores)
    _check_design(study)
    return study
