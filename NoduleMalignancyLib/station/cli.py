"""``nodule-malignancy app``: the browser reading station (docs/DESIGN.md §15).

Binds to 127.0.0.1 unless told otherwise: the page shows patient images and, in a reading
study, takes reader tokens; exposing it is a deliberate choice (``--host 0.0.0.0``). The
websocket takes a random secret drawn at start: the address printed once the station serves
carries it (``?secret=``), and only pages opened from it can drive the station. Imports trame
and slicer only when the command runs (the CLI builds every parser).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_HOST = "127.0.0.1"


def cmd_app(args) -> int:
    from ..core.extras import require_extra

    require_extra("station", "slicer", "vtk", "trame", "trame_slicer")
    from ..study.store import DEFAULT_PORT
    from .ports import free_port, port_problem

    if bool(args.study) != bool(args.db):
        print(
            "error: --study and --db go together (the study file and its database)", file=sys.stderr
        )
        return 2
    if args.prior and not args.ct:
        print("error: --prior goes with --ct (the current CT)", file=sys.stderr)
        return 2
    port = DEFAULT_PORT if args.port is None else args.port
    port = free_port(args.host) if port == 0 else port
    problem = port_problem(args.host, port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.study:
        from .study_app import StudyStationApp

        app = StudyStationApp(args.study, args.db, models_dir=args.models, device=args.device)
    else:
        from .app import StationApp

        app = StationApp(models_dir=args.models, device=args.device)
        if args.ct:
            app.load(args.ct, series_uid=args.series)
            if args.prior:
                app.load_prior(args.prior, series_uid=args.prior_series)
        elif args.sample:
            app.load_sample(args.sample)
    return serve(app, args.host, port)


def serve(app, host: str, port: int, access=None) -> int:
    """Run a station until it stops; its address (with the secret) is printed once it serves.
    A port taken in the meantime is a message, not a traceback."""
    from .access import StationAccess, station_address
    from .ports import bind_message

    access = access or StationAccess()
    address = station_address(host, port, access.secret)
    app.server.controller.on_server_ready.add(
        lambda **_: print(f"reading station on {address}", flush=True)
    )
    try:
        app.start(host=host, port=port, access=access, show_connection_info=False)
    except OSError as exc:
        print(f"error: {bind_message(host, port, exc)}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args) -> int:
    """``study serve``: the study's one address; a station process per signed-in reader (each
    needs the station's extra: checked here, not when the first reader signs in)."""
    from ..core.extras import require_extra

    require_extra("station", "slicer", "vtk", "trame", "trame_slicer", "aiohttp")
    from .ports import bind_message, port_problem

    problem = port_problem(args.host, args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from .serve import StudyFront, run_front

    try:
        front = StudyFront(
            args.db, args.host, args.port, models_dir=args.models, device=args.device
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_front(front)
    except OSError as exc:
        print(f"error: {bind_message(args.host, args.port, exc)}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``app`` and ``study serve`` to the main CLI."""
    from ..study.store_cli import study_commands

    sp = subparsers.add_parser(
        "app", help="browser reading station: Slicer views, point placement, results"
    )
    source = sp.add_mutually_exclusive_group()
    source.add_argument("--ct", help="CT to open (file SimpleITK reads, DICOM folder, .tar.gz)")
    sp.add_argument("--series", help="with --ct: the series UID when it holds several series")
    sp.add_argument(
        "--prior",
        help="with --ct: the prior CT, registered and shown beside it (the views follow each other)",
    )
    sp.add_argument("--prior-series", help="with --prior: its series UID when it holds several")
    source.add_argument("--sample", help="bundled LIDC sample to open, e.g. LIDC-IDRI-0001")
    source.add_argument("--study", help="reading-study file (JSON, docs/DESIGN.md §14)")
    sp.add_argument("--db", help="the study's SQLite database (with --study)")
    sp.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=None, help="port (default 8080; 0: any free)")
    sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")
    sp.set_defaults(func=cmd_app)

    sp = study_commands(subparsers).add_parser(
        "serve", help="the study's one address: each reader signs in and gets their own station"
    )
    sp.add_argument("--db", required=True, help="the study's SQLite database")
    sp.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda[:N]")
    sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")
    sp.set_defaults(func=cmd_serve)
