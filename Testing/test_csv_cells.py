"""Formula-safe CSV (issue 28 finding 6): text a spreadsheet would run gets a leading ``'``,
numbers stay numbers, the project's readers get the text back, and every CSV writer of the
library goes through ``files/csv_cells``."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.core.model import folds
from NoduleMalignancyLib.files.csv_cells import (
    FORMULA_TRIGGERS,
    formula_safe,
    plain_text,
    read_csv,
    write_csv,
)

PACKAGE = Path(__file__).resolve().parent.parent / "NoduleMalignancyLib"
HOSTILE = [
    '=HYPERLINK("http://x","click")',
    "=cmd|' /C calc'!A0",
    "+1+2",
    "-2+3",
    "@SUM(A1)",
    "\t=1",
    "\r=1",
    "'=1",
    "''-x",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_formula_is_written_as_text_and_read_back_as_given(text):
    cell = formula_safe(text)
    assert cell.startswith("'") and cell[1:] == text
    assert plain_text(cell) == text


@pytest.mark.parametrize("value", [-3, 2.5, -0.25, "-12.5", "+4", "1e-3", "-2E+5", ".5", "ok", ""])
def test_numbers_and_plain_text_stay_as_they_are(value):
    assert formula_safe(value) == value
    if isinstance(value, str):
        assert plain_text(value) == value


def test_write_and_read_round_trip(tmp_path):
    rows = [{"id": t, "x": -1.5, "note": "a'b"} for t in HOSTILE]
    path = write_csv(tmp_path / "t.csv", rows, ["id", "x", "note"])
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    assert all(r["id"].startswith("'") for r in raw)
    assert {r["x"] for r in raw} == {"-1.5"}
    assert [r["id"] for r in read_csv(path)] == HOSTILE
    assert [r["note"] for r in read_csv(path)] == ["a'b"] * len(HOSTILE)


def test_the_folds_file_refuses_a_formula_patient_id(tmp_path):
    assert folds._FORMULA_STARTS == FORMULA_TRIGGERS
    with pytest.raises(ValueError, match="formula"):
        folds.write_folds({"=1+1": 0, "P1": 1}, tmp_path / "folds.csv")


def test_predict_writes_a_formula_manifest_id_as_text(tiny_dir, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,image,x,y,z\n\"=cmd|' /C calc'!A0\",{tmp_path / 'none.nrrd'},1,2,3\n")
    out = tmp_path / "p.csv"
    cli.main(["predict", "--manifest", str(manifest), "--out", str(out), "--models", str(tiny_dir)])
    with open(out, newline="") as f:
        row = next(csv.DictReader(f))
    assert row["id"] == "'=cmd|' /C calc'!A0"
    assert row["error"] and not row["error"].startswith(FORMULA_TRIGGERS)


def _csv_writers(path: Path):
    """(line, what) for every CSV writer a module uses directly."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in ("writer", "DictWriter"):
            if isinstance(node.value, ast.Name) and node.value.id == "csv":
                yield node.lineno, f"csv.{node.attr}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("core.atomic"):
            if any(alias.name == "write_csv" for alias in node.names):
                yield node.lineno, "core.atomic.write_csv"
        if isinstance(node, ast.Attribute) and node.attr == "write_csv":
            if isinstance(node.value, ast.Name) and node.value.id == "atomic":
                yield node.lineno, "atomic.write_csv"


def test_every_csv_writer_goes_through_csv_cells():
    allowed = {
        PACKAGE / "files" / "csv_cells.py",  # the helper itself
        PACKAGE / "core" / "model" / "folds.py",  # refuses formula IDs (test above)
    }
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed
        for line, what in _csv_writers(path)
    ]
    assert found == []
