"""``nodule-malignancy mrmc``: the MRMC analysis of a reading study's scores (docs/DESIGN.md §14)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.atomic import atomic_path, write_json

__all__ = ["add_covariance_argument", "cmd_mrmc", "register"]


def cmd_mrmc(args) -> int:
    """Analyze, then write mrmc.json, mrmc.md, scores.imrmc and reader_rocs.png into --out."""
    from .mrmc import analyze, load_rows, plot_reader_rocs, result_markdown, write_imrmc

    rows = load_rows(args.scores)
    result = analyze(rows, covariance=args.covariance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "mrmc.json", result.to_dict())
    with atomic_path(out / "mrmc.md") as tmp:
        tmp.write_text(result_markdown(result) + "\n", encoding="utf-8")
    write_imrmc(out / "scores.imrmc", rows)
    plot_reader_rocs(rows, out / "reader_rocs.png")
    print(result.main_line())
    print(f"wrote mrmc.json, mrmc.md, scores.imrmc and reader_rocs.png to {out}")
    return 0


def add_covariance_argument(sp: argparse.ArgumentParser) -> None:
    """``--covariance``, shared by ``mrmc`` and ``study analyze``."""
    from .mrmc import COVARIANCES

    sp.add_argument(
        "--covariance",
        choices=COVARIANCES,
        default=COVARIANCES[0],
        help="AUC covariance over cases: jackknife (default, as the Iowa program) or DeLong",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mrmc`` sub-command to the main CLI's sub-parsers."""
    sp = subparsers.add_parser(
        "mrmc", help="Obuchowski-Rockette MRMC ROC analysis of a reading study's scores"
    )
    sp.add_argument(
        "--scores",
        required=True,
        help="CSV reader,case,modality,score,truth (rating = score), or an iMRMC file",
    )
    sp.add_argument("--out", required=True, help="folder for mrmc.json, mrmc.md, ...")
    add_covariance_argument(sp)
    sp.set_defaults(func=cmd_mrmc)
