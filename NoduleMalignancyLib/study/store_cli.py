"""``nodule-malignancy study create | add-reader | export | analyze``: the owner's commands.

See docs/DESIGN.md §14.

The ``study`` group is shared with the analysis commands of ``study/cli.py``: both add their
sub-commands through :func:`study_commands`, which makes the group once.
"""

from __future__ import annotations

import argparse
import sys

from .store import DEFAULT_PORT, SCORES, StudyStore, create_study, reader_link


def study_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-parsers of the ``study`` group, made on first use (argparse refuses a second)."""
    parser = subparsers.choices.get("study")
    if parser is None:
        parser = subparsers.add_parser(
            "study", help="reading studies: create, readers, export, analyze"
        )
        parser.study_commands = parser.add_subparsers(dest="study_command", required=True)
    return parser.study_commands


def _refused(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cmd_create(args) -> int:
    try:
        token = create_study(args.db, args.study, check_files=args.check_files)
    except (FileExistsError, PermissionError) as exc:
        return _refused(exc)
    print(f"created {args.db}")
    print(f"owner token (shown once; needed for add-reader and export): {token}")
    return 0


def cmd_add_reader(args) -> int:
    try:
        token = StudyStore(args.db).add_reader(args.owner_token, args.name)
    except PermissionError as exc:
        return _refused(exc)
    print(f"reader {args.name.strip()}: token {token}")
    print(f"link: {reader_link(token, args.port, args.host)}")
    return 0


def cmd_export(args) -> int:
    store = StudyStore(args.db)
    try:
        paths = store.export(args.owner_token, args.out, score=args.score)
    except PermissionError as exc:
        return _refused(exc)
    print(
        f"wrote {paths['ratings']} (every rating), {paths['scores']} (score = {args.score}) and "
        f"{paths['skipped']} (skipped cases and why)"
    )
    return 0


def cmd_analyze(args) -> int:
    from .summary import analyze_study

    try:
        summary = analyze_study(
            args.db, args.owner_token, args.out, score=args.score, covariance=args.covariance
        )
    except PermissionError as exc:
        return _refused(exc)
    part = summary["mrmc"]
    if part["available"]:
        print(part["headline"]["main_line"])
    else:
        print(f"MRMC not available: {part['reason']}")
    for left in part["excluded"]:
        print(f"left out of the MRMC: {left['reader']}: {left['reason']}")
    print(f"wrote summary.md, summary.json, mrmc.md, mrmc.json and the exports to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``study create``, ``add-reader``, ``export`` and ``analyze`` to the main CLI."""
    from .cli import add_covariance_argument

    study = study_commands(subparsers)

    sp = study.add_parser(
        "create", help="a study database from a study file (prints the owner token)"
    )
    sp.add_argument("--study", required=True, help="study file (JSON, docs/DESIGN.md §14)")
    sp.add_argument("--db", required=True, help="new SQLite database (never overwritten)")
    sp.add_argument("--check-files", action="store_true", help="every case's CT must exist")
    sp.set_defaults(func=cmd_create)

    sp = study.add_parser("add-reader", help="register a reader (prints their token and link)")
    sp.add_argument("--db", required=True)
    sp.add_argument("--owner-token", required=True)
    sp.add_argument("--name", required=True, help="reader name as it appears in the exports")
    sp.add_argument("--port", type=int, default=DEFAULT_PORT, help="browser station port")
    sp.add_argument("--host", default="127.0.0.1", help="browser station host for the link")
    sp.set_defaults(func=cmd_add_reader)

    sp = study.add_parser("export", help="ratings.csv (every field) and scores.csv (MRMC table)")
    sp.add_argument("--db", required=True)
    sp.add_argument("--owner-token", required=True)
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument(
        "--score", choices=SCORES, default="malignancy", help="scores.csv score column's source"
    )
    sp.set_defaults(func=cmd_export)

    sp = study.add_parser(
        "analyze", help="exports, per-reader summary, MRMC of aided vs unaided, reader ROCs"
    )
    sp.add_argument("--db", required=True)
    sp.add_argument("--owner-token", required=True)
    sp.add_argument("--out", required=True, help="output folder (summary.md, mrmc.md, ...)")
    sp.add_argument(
        "--score", choices=SCORES, default="malignancy", help="AUROC and MRMC score's source"
    )
    add_covariance_argument(sp)
    sp.set_defaults(func=cmd_analyze)
