"""Cell by cell, two ``predict`` CSVs of the same manifest: per shared column the identical
cells and the largest numeric difference; the columns only one of them has.

Why: a refactor must leave every cell as it was (issue 27 item 5); a renamed or added column
is listed, not compared. How the figures in predict_cells.md were made: the 796 rows of
``$NODULE_MALIGNANCY_DATA/lidc_vois/metadata.csv`` (batch/cohort_bench.voi_manifest) scored by
each commit from a ``git worktree`` with its own ``models/``, one torch thread::

    OMP_NUM_THREADS=1 nice -n 10 python -m NoduleMalignancyLib.cli predict \\
        --manifest manifest.csv --out <commit>.csv --models <worktree>/models --device cpu

    python docs/experiments/predict_cells.py before.csv after.csv
"""

from __future__ import annotations

import csv
import math
import sys


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def compare(before: list[dict], after: list[dict]) -> list[str]:
    """One line per shared column (identical cells of all, largest numeric difference)."""
    if [r["id"] for r in before] != [r["id"] for r in after]:
        raise SystemExit("the two files do not hold the same ids in the same order")
    old, new = list(before[0]), list(after[0])
    lines = [
        f"rows {len(before)}; only before: {[c for c in old if c not in new]}; "
        f"only after: {[c for c in new if c not in old]}"
    ]
    for column in (c for c in old if c in new):
        same, largest, other = 0, 0.0, 0
        for a, b in zip(before, after, strict=True):
            if a[column] == b[column]:
                same += 1
                continue
            x, y = _number(a[column]), _number(b[column])
            if x is None or y is None:
                other += 1
            else:
                largest = max(largest, abs(x - y))
        line = f"{column:34s} identical {same:4d}/{len(before)}"
        line += f"  max |diff| {largest:.6g}" if largest else ""
        line += f"  other differences {other}" if other else ""
        lines.append(line)
    return lines


def main(before_path: str, after_path: str) -> None:
    rows = []
    for path in (before_path, after_path):
        with open(path, newline="") as f:
            rows.append(list(csv.DictReader(f)))
    print("\n".join(compare(*rows)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
