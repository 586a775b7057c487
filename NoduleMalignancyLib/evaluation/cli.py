"""``nodule-malignancy evaluate``: the out-of-fold report (EVALUATION.md, metrics.json, figures)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import MissingFileError
from ..core.settings import DATA_ENV, data_dir


def latest_oof(runs_dir: str | Path = "runs") -> Path | None:
    """Newest runs/<run>/oof.csv by modification time, or None."""
    found = sorted(Path(runs_dir).glob("*/oof.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def reader_labels_path(data: str | None) -> Path | None:
    """reader_labels.csv from --data or $NODULE_MALIGNANCY_DATA (the folder holding lidc_vois/,
    or lidc_vois/ itself); None when neither is set."""
    root = data_dir(data)
    if root is None:
        return None
    for cand in (root / "lidc_vois" / "reader_labels.csv", root / "reader_labels.csv"):
        if cand.exists():
            return cand
    raise MissingFileError(f"no lidc_vois/reader_labels.csv under {root}")


def cmd_evaluate(args) -> int:
    from .report import command_line, evaluate

    oof = Path(args.oof) if args.oof else latest_oof()
    if oof is None:
        raise MissingFileError("no runs/*/oof.csv found: pass --oof PATH")
    readers = reader_labels_path(args.data)
    folds = Path(args.folds) if args.folds and Path(args.folds).exists() else None
    argv = ["--oof", str(oof), "--out", str(args.out)]
    if folds is not None:
        argv += ["--folds", str(folds)]
    if readers is not None:
        argv += ["--data", str(readers.parent.parent)]
    argv += ["--n-boot", str(args.n_boot), "--seed", str(args.seed)]
    res = evaluate(oof, folds, readers, args.out, args.n_boot, args.seed, command_line(argv))
    for t in res["targets"]:
        mark = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        print(f"[{mark}] {t['target']}: {t['value']}")
    print(f"wrote {Path(args.out) / 'EVALUATION.md'}, metrics.json and figures/")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command to the main CLI's sub-parsers."""
    from ..core.model.metrics import N_BOOT, SEED

    sp = subparsers.add_parser("evaluate", help="out-of-fold evaluation report from oof.csv")
    sp.add_argument(
        "--oof", default=None, help="OOF predictions CSV (default: newest runs/*/oof.csv)"
    )
    sp.add_argument("--folds", default="models/folds.csv", help="patient_id,fold CSV")
    sp.add_argument(
        "--data", default=None, help=f"folder containing lidc_vois/ (default: ${DATA_ENV})"
    )
    sp.add_argument("--out", default="models", help="writes EVALUATION.md, metrics.json, figures/")
    sp.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    sp.add_argument("--seed", type=int, default=SEED, help="bootstrap seed")
    sp.set_defaults(func=cmd_evaluate)
