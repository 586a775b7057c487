"""``nodule-malignancy study create | add-reader | export | analyze``: the owner's commands.

See docs/DESIGN.md §14.

The ``study`` group is shared with the analysis commands of ``study/cli.py``: both add their
sub-commands through :func:`study_commands`, which makes the group once.

The owner token opens the truth and every rating: on the command line (``--owner-token``) it
shows in ``ps`` and the shell's history, so it also comes from a file (``--owner-token-file``,
which ``study create --owner-token-file`` writes, 0600) or the environment
(``NODULE_MALIGNANCY_OWNER_TOKEN``). ``export`` and ``analyze`` only read the database.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.errors import InputError, OutputExistsError
from .store import DEFAULT_PORT, SCORES, StudyStore, create_study, reader_link

OWNER_TOKEN_ENV = "NODULE_MALIGNANCY_OWNER_TOKEN"


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


def owner_token(args) -> str:
    """The owner token from ``--owner-token``, ``--owner-token-file`` or the environment."""
    if args.owner_token:
        return args.owner_token
    if args.owner_token_file:
        path = Path(args.owner_token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--owner-token-file {path}: cannot read it ({exc})") from None
        if not token:
            raise InputError(f"--owner-token-file {path} is empty")
        return token
    token = os.environ.get(OWNER_TOKEN_ENV, "").strip()
    if not token:
        raise InputError(
            f"the owner token is needed: --owner-token-file PATH, {OWNER_TOKEN_ENV}, or "
            "--owner-token (visible to other users in ps and in the shell's history)"
        )
    return token


def _write_token_file(path: Path, token: str) -> None:
    """A new file readable by its owner only; an existing file is never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OutputExistsError(
            f"{path} exists: the owner token file is never overwritten"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")


def cmd_create(args) -> int:
    token_file = Path(args.owner_token_file) if args.owner_token_file else None
    if token_file is not None and token_file.exists():
        raise OutputExistsError(f"{token_file} exists: the owner token file is never overwritten")
    try:
        token = create_study(args.db, args.study, check_files=args.check_files)
    except (FileExistsError, PermissionError) as exc:
        return _refused(exc)
    print(f"created {args.db}")
    if token_file is not None:
        _write_token_file(token_file, token)
        print(f"owner token written to {token_file} (0600; needed for add-reader and export)")
    else:
        print(f"owner token (shown once; needed for add-reader and export): {token}")
    return 0


def cmd_add_reader(args) -> int:
    try:
        token = StudyStore(args.db).add_reader(owner_token(args), args.name)
    except PermissionError as exc:
        return _refused(exc)
    print(f"reader {args.name.strip()}: token {token}")
    print(f"link: {reader_link(token, args.port, args.host)}")
    return 0


def cmd_export(args) -> int:
    store = StudyStore(args.db, read_only=True)  # an archived study exports too
    try:
        paths = store.export(owner_token(args), args.out, score=args.score)
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
            args.db, owner_token(args), args.out, score=args.score, covariance=args.covariance
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


def add_owner_token_arguments(sp: argparse.ArgumentParser) -> None:
    """``--owner-token-file`` or ``--owner-token`` (else ``NODULE_MALIGNANCY_OWNER_TOKEN``)."""
    given = sp.add_mutually_exclusive_group()
    given.add_argument(
        "--owner-token-file", help=f"file holding the owner token (or set {OWNER_TOKEN_ENV})"
    )
    given.add_argument(
        "--owner-token", help="the owner token itself (shows in ps and the shell's history)"
    )


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
    sp.add_argument(
        "--owner-token-file",
        help="write the owner token to this new file (0600) instead of printing it",
    )
    sp.set_defaults(func=cmd_create)

    sp = study.add_parser("add-reader", help="register a reader (prints their token and link)")
    sp.add_argument("--db", required=True)
    add_owner_token_arguments(sp)
    sp.add_argument("--name", required=True, help="reader name as it appears in the exports")
    sp.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="the link's port (where study serve runs)"
    )
    sp.add_argument("--host", default="127.0.0.1", help="the link's host (study serve's address)")
    sp.set_defaults(func=cmd_add_reader)

    sp = study.add_parser("export", help="ratings.csv (every field) and scores.csv (MRMC table)")
    sp.add_argument("--db", required=True)
    add_owner_token_arguments(sp)
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument(
        "--score", choices=SCORES, default="malignancy", help="scores.csv score column's source"
    )
    sp.set_defaults(func=cmd_export)

    sp = study.add_parser(
        "analyze", help="exports, per-reader summary, MRMC of aided vs unaided, reader ROCs"
    )
    sp.add_argument("--db", required=True)
    add_owner_token_arguments(sp)
    sp.add_argument("--out", required=True, help="output folder (summary.md, mrmc.md, ...)")
    sp.add_argument(
        "--score", choices=SCORES, default="malignancy", help="AUROC and MRMC score's source"
    )
    add_covariance_argument(sp)
    sp.set_defaults(func=cmd_analyze)
