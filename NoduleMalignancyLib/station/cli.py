"""``nodule-malignancy app``: the browser reading station (docs/DESIGN.md §15).

Binds to 127.0.0.1 unless told otherwise: the page shows patient images and, in a reading
study, takes reader tokens; exposing it is a deliberate choice (``--host 0.0.0.0``).
Imports trame and slicer only when the command runs (the CLI builds every parser).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_HOST = "127.0.0.1"


def cmd_app(args) -> int:
    from ..study.store import DEFAULT_PORT

    if bool(args.study) != bool(args.db):
        print(
            "error: --study and --db go together (the study file and its database)", file=sys.stderr
        )
        return 2
    port = DEFAULT_PORT if args.port is None else args.port
    if args.study:
        from .study_app import StudyStationApp

        app = StudyStationApp(args.study, args.db, models_dir=args.models, device=args.device)
    else:
        from .app import StationApp

        app = StationApp(models_dir=args.models, device=args.device)
        if args.ct:
            app.load(args.ct)
        elif args.sample:
            app.load_sample(args.sample)
    print(f"reading station on http://{args.host}:{port}/", flush=True)
    app.start(host=args.host, port=port)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``app`` to the main CLI."""
    sp = subparsers.add_parser(
        "app", help="browser reading station: Slicer views, point placement, results"
    )
    source = sp.add_mutually_exclusive_group()
    source.add_argument("--ct", help="CT to open (file SimpleITK reads, DICOM folder, .tar.gz)")
    source.add_argument("--sample", help="bundled LIDC sample to open, e.g. LIDC-IDRI-0001")
    source.add_argument("--study", help="reading-study file (JSON, docs/DESIGN.md §14)")
    sp.add_argument("--db", help="the study's SQLite database (with --study)")
    sp.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=None, help="port (default 8080; 0: any free)")
    sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")
    sp.set_defaults(func=cmd_app)
