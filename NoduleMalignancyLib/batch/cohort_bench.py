"""``nodule-malignancy bench-cohort``: the speed-up of ``predict`` on a Dask cluster.

Scores the first N LIDC VOIs at their centres in this process, then on local clusters of
``--workers`` processes, checks that every run wrote the same rows (ids, order and errors
exactly; numbers to 1e-4, since the torch thread count changes float sums) and prints wall
times (cluster start, scoring), throughput, the CPU time the scoring processes spent per VOI,
the speed-up and the workers' memory (docs/DESIGN.md §13, docs/benchmarks/cohort.md).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import resource
import time
from pathlib import Path

from ..core.extras import require_extra

TOLERANCE = 1e-4  # numeric cells of two runs; one vs several torch threads sum in other orders


def voi_manifest(vois: Path, n: int | None) -> list[dict]:
    """Manifest rows (world LPS centres from ``metadata.csv``) for the first ``n`` VOIs."""
    with open(vois / "metadata.csv", newline="") as f:
        meta = list(csv.DictReader(f))
    rows = [
        {
            "id": f"{r['patient_id']}_R_{r['nodule_id']}",
            "image": str(vois / "image" / f"{r['patient_id']}_R_{r['nodule_id']}.nii.gz"),
            "x": r["coordX"],
            "y": r["coordY"],
            "z": r["coordZ"],
        }
        for r in meta
    ]
    return rows[:n] if n else rows


def worker_rss_mb() -> float:
    """Resident memory of the calling process (a worker: torch, its CT, its ensemble)."""
    require_extra("batch", "psutil")
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of the calling process, all its threads."""
    require_extra("batch", "psutil")
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def row_difference(a: list[dict], b: list[dict]) -> float | None:
    """The largest difference of a numeric cell between two runs' rows; ``None`` when they
    differ otherwise (ids, order, columns, errors, warnings or a text cell)."""
    if [r["id"] for r in a] != [r["id"] for r in b]:
        return None
    largest = 0.0
    for ra, rb in zip(a, b, strict=True):
        if ra.keys() != rb.keys():
            return None
        for key in ra:
            if ra[key] == rb[key]:
                continue
            try:
                x, y = float(ra[key]), float(rb[key])
            except ValueError:
                return None
            if not (math.isfinite(x) and math.isfinite(y)):
                return None
            largest = max(largest, abs(x - y))
    return largest


def _timed_run(rows, args, mode: str, count: int, worker_config: dict | None = None) -> dict:
    import torch

    from .cluster import dask_client
    from .predict import predict_rows

    if mode == "in-process":
        torch.set_num_threads(count)
    workers = count if mode != "in-process" else None
    t0 = time.perf_counter()
    with dask_client(None, workers, worker_config) as client:
        t1 = time.perf_counter()
        cpu0 = list(client.run(cpu_seconds).values()) if client else [cpu_seconds()]
        here0 = cpu_seconds()
        results = predict_rows(rows, args.models, args.device, None, client)
        t2 = time.perf_counter()
        here1 = cpu_seconds()
        cpu1 = list(client.run(cpu_seconds).values()) if client else [cpu_seconds()]
        rss = list(client.run(worker_rss_mb).values()) if client else [worker_rss_mb()]
    return {
        "mode": f"in-process, {count} thr" if not workers else f"--workers {workers}",
        "start_s": t1 - t0,
        "score_s": t2 - t1,
        "total_s": time.perf_counter() - t0,
        "cpu_per_voi": (sum(cpu1) - sum(cpu0)) / len(rows),
        "client_cpu_s": here1 - here0 if client else math.nan,
        "rss_mb": max(rss),
        "results": results,
    }


def _read_seconds(rows: list[dict], k: int = 20) -> float:
    from .predict import load_image

    t = time.perf_counter()
    for row in rows[:k]:
        load_image(row["image"])
    return (time.perf_counter() - t) / max(min(k, len(rows)), 1)


def _runs(rows, args) -> list[dict]:
    """In-process runs first, then the clusters, then (``--dask-defaults``) the first worker
    count with Dask's own worker settings: last, since a nanny started with Dask's defaults
    writes its MALLOC_TRIM_THRESHOLD_ into this process's environment, for later clusters."""
    import torch

    threads = args.threads or [torch.get_num_threads()]
    runs = [_timed_run(rows, args, "in-process", t) for t in threads]
    runs += [_timed_run(rows, args, "cluster", w) for w in args.workers]
    if args.dask_defaults:
        saved = dict(os.environ)
        try:
            run = _timed_run(rows, args, "cluster", args.workers[0], worker_config={})
        finally:
            os.environ.clear()
            os.environ.update(saved)
        run["mode"] += " (Dask defaults)"
        runs.append(run)
    return runs


def cmd_bench_cohort(args) -> int:
    from ..core.settings import data_dir

    vois = Path(args.vois) if args.vois else data_dir() / "lidc_vois"
    rows = voi_manifest(vois, args.n)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{len(rows)} VOIs of {vois}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load}")  # fmt: skip
    print(f"reading one VOI file: {1000 * _read_seconds(rows):.1f} ms")
    runs = _runs(rows, args)
    base = runs[0]
    print(f"{'mode':<34} {'start s':>7} {'score s':>7} {'total s':>7} {'VOIs/s':>6} "
          f"{'CPU s/VOI':>9} {'client CPU s':>12} {'speed-up':>8} {'RSS MB':>6}  rows")  # fmt: skip
    same_rows = True
    for run in runs:
        diff = row_difference(base["results"], run["results"])
        same_rows &= diff is not None and diff <= TOLERANCE
        agreement = (
            "differ" if diff is None or diff > TOLERANCE
            else "identical" if diff == 0 else f"max |diff| {diff:.0e}"
        )  # fmt: skip
        print(
            f"{run['mode']:<34} {run['start_s']:7.1f} {run['score_s']:7.1f} {run['total_s']:7.1f}"
            f" {len(rows) / run['score_s']:6.2f} {run['cpu_per_voi']:9.3f}"
            f" {_cell(run['client_cpu_s'], 12)} {base['total_s'] / run['total_s']:8.2f}"
            f" {run['rss_mb']:6.0f}  {agreement}"
        )
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    scored = sum(not r["error"] for r in base["results"])
    print(f"scored {scored}/{len(rows)}; load average at the end {load}; peak RSS of this "
          f"process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")  # fmt: skip
    return 0 if same_rows else 1


def _cell(value: float, width: int) -> str:
    return f"{value:{width}.1f}" if math.isfinite(value) else f"{'-':>{width}}"


def _counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive counts, got {text}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "bench-cohort",
        help="speed-up of predict over LIDC VOIs in-process vs a local Dask cluster",
        description=__doc__,
    )
    sp.add_argument("--vois", default=None, help="LIDC VOI folder (default: $DATA/lidc_vois)")
    sp.add_argument("--n", type=int, default=200, help="first N VOIs (0: all)")
    sp.add_argument(
        "--threads",
        type=_counts,
        default=None,
        help="torch thread counts of the in-process runs, e.g. 2,1 (the first is the speed-up's "
        "reference; default: torch's own count)",
    )
    sp.add_argument(
        "--workers", type=_counts, default=[2], help="worker counts to compare, e.g. 1,2"
    )
    sp.add_argument(
        "--dask-defaults",
        action="store_true",
        help="also run the first worker count with Dask's default worker settings",
    )
    sp.add_argument("--device", default="auto")
    sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")
    sp.set_defaults(func=cmd_bench_cohort)
