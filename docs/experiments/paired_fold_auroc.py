"""Two out-of-fold tables of the same held-out nodules, side by side (pilots on one fold).

Usage: ``python docs/experiments/paired_fold_auroc.py BEFORE/oof.csv AFTER/oof.csv [...]``

Per table: raw MIL head malignancy AUROC with its 95 % CI, the 7 ordinal attributes' raw-head
MAE (1-5 scale; each attribute and the mean) and Dice; then each later table's AUROC minus the
first's on the same nodules (paired bootstrap, patients as clusters, 2000 resamples, seed
20240611 as the shipped evaluation) and how far each head's probability moved (mean |change|).
"""

from __future__ import annotations

import csv
import sys

import numpy as np

from NoduleMalignancyLib.core.config import ATTRIBUTES, ORDINAL_ATTRIBUTES
from NoduleMalignancyLib.core.model.metrics import auroc_ci, mae_1to5, paired_auroc_difference

N_BOOT, SEED = 2000, 20240611


def _table(path: str) -> dict[tuple[str, str], dict]:
    with open(path, newline="") as f:
        return {(r["patient_id"], r["nodule_id"]): r for r in csv.DictReader(f)}


def _col(rows: list[dict], name: str) -> np.ndarray:
    return np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])


def main(paths: list[str]) -> None:
    tables = [_table(p) for p in paths]
    keys = sorted(tables[0])
    if any(sorted(t) != keys for t in tables[1:]):
        raise SystemExit("the tables do not hold the same nodules")
    rows = [[t[k] for k in keys] for t in tables]
    y = _col(rows[0], "label")
    groups = np.array([k[0] for k in keys])
    scores = [_col(r, "malignancy_prob") for r in rows]
    for path, r, s in zip(paths, rows, scores, strict=True):
        ci = auroc_ci(y, s, groups, N_BOOT, SEED)
        mae = {
            a: mae_1to5(_col(r, f"{a}_prob"), _col(r, f"{a}_target")) for a in ORDINAL_ATTRIBUTES
        }
        print(f"{path}: {len(r)} nodules, {ci['n']} labelled")
        print(f"  MIL head AUROC {ci['auroc']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]")
        print(f"  raw-head MAE {np.mean(list(mae.values())):.3f}", end=" (")
        print(", ".join(f"{a} {v:.3f}" for a, v in mae.items()) + ")")
        print(f"  Dice {np.nanmean(_col(r, 'dice')):.3f}")
    for path, r, s in zip(paths[1:], rows[1:], scores[1:], strict=True):
        d = paired_auroc_difference(y, s, scores[0], groups, N_BOOT, SEED)
        print(
            f"{path} minus {paths[0]}: AUROC {d['diff']:+.3f} "
            f"[{d['lo']:+.3f}, {d['hi']:+.3f}], p = {d['p']:.3f}"
        )
        moved = {
            a: np.nanmean(np.abs(_col(r, f"{a}_prob") - _col(rows[0], f"{a}_prob")))
            for a in ATTRIBUTES
        }
        print("  mean |probability change|: " + ", ".join(f"{a} {v:.3f}" for a, v in moved.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
