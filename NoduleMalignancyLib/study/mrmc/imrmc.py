"""The iMRMC text layout: header, ``BEGIN DATA:``, truth rows, then score rows.

Why: the FDA's iMRMC (and RJafroc) read this file, so a study can be re-analyzed there; and a
study kept in that layout can be analyzed here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ...core.atomic import atomic_path
from ...core.errors import InputError
from .data import build_study, case_truth, check_row, truth_value

IMRMC_BEGIN = "BEGIN DATA:"
IMRMC_TRUTH_READER = "-1"
IMRMC_TRUTH_READERS = ("-1", "truth")  # the R package's data frames say "truth"


def is_imrmc(path: Path) -> bool:
    if path.suffix.lower() == ".imrmc":
        return True
    with open(path, encoding="utf-8", errors="replace") as f:
        head = [next(f, "") for _ in range(50)]
    return any(line.strip() == IMRMC_BEGIN for line in head)


def _score_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_imrmc(path: str | os.PathLike, rows: Iterable[Mapping] | str | os.PathLike) -> Path:
    """The study in the iMRMC text layout (header, ``BEGIN DATA:``, truth rows, score rows).

    Why: the FDA's iMRMC (and RJafroc) read this file, so a study can be re-analyzed there.
    Truth rows are ``-1,case,0,truth``; score rows ``reader,case,modality,score``.
    """
    study = build_study(rows)
    if set(IMRMC_TRUTH_READERS) & set(study.readers):
        raise InputError(f"readers {IMRMC_TRUTH_READERS} mark iMRMC's truth rows; rename them")
    lines = [
        "NoduleMalignancy reading study, iMRMC input layout",
        f"N0: {study.n_normal}",
        f"N1: {study.n_abnormal}",
        f"NR: {len(study.readers)}",
        f"NM: {len(study.modalities)}",
        "",
        IMRMC_BEGIN,
    ]
    lines += [
        f"{IMRMC_TRUTH_READER},{c},0,{t}" for c, t in zip(study.cases, study.truth, strict=True)
    ]
    for i, m in enumerate(study.modalities):
        for j, r in enumerate(study.readers):
            lines += [
                f"{r},{c},{m},{_score_text(s)}"
                for c, s in zip(study.cases, study.scores[i, j], strict=True)
            ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def _header_counts(header: list[str]) -> dict[str, int]:
    counts = {}
    for line in header:
        key, _, value = line.partition(":")
        if key.strip() in ("N0", "N1", "NR", "NM") and value.strip().isdigit():
            counts[key.strip()] = int(value)
    return counts


def read_imrmc(path: str | os.PathLike) -> list[dict]:
    """Long-format rows (``reader,case,modality,score,truth``) from an iMRMC file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    stripped = [line.strip() for line in lines]
    if IMRMC_BEGIN not in stripped:
        raise InputError(f"{path}: no '{IMRMC_BEGIN}' line; not an iMRMC file")
    start = stripped.index(IMRMC_BEGIN)
    truth, scored = {}, []
    for number, line in enumerate(stripped[start + 1 :], start=start + 2):
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise InputError(f"{path}:{number}: expected 4 comma-separated fields, got {line!r}")
        if parts[0] in IMRMC_TRUTH_READERS:
            truth[parts[1]] = truth_value(parts[3], number)
        else:
            scored.append((number, parts))
    rows = []
    for number, parts in scored:
        row = dict(zip(("reader", "case", "modality", "score"), parts, strict=True))
        if row["case"] not in truth:
            raise InputError(f"{path}:{number}: case {row['case']} has no truth row")
        rows.append(check_row({**row, "truth": truth[row["case"]]}, number))
    _check_header(path, _header_counts(stripped[:start]), rows)
    return rows


def _check_header(path, counts: dict[str, int], rows: list[dict]) -> None:
    truth = case_truth(rows)
    found = {
        "N0": sum(1 for t in truth.values() if t == 0),
        "N1": sum(1 for t in truth.values() if t == 1),
        "NR": len({r["reader"] for r in rows}),
        "NM": len({r["modality"] for r in rows}),
    }
    for key, value in counts.items():
        if found[key] != value:
            raise InputError(f"{path}: header says {key}: {value}, the data hold {found[key]}")
