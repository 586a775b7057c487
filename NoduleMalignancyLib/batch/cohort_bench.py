"""``nodule-malignancy bench-cohort``: the speed-up of ``predict`` on a Dask cluster.

Scores the first N LIDC VOIs at their centres in this process, then on local clusters of
``--workers`` processes, checks that every run wrote the same rows and prints wall times
(cluster start, scoring), the speed-up and the workers' memory (docs/DESIGN.md §13).
"""

from __future__ import annotations

import argparse
import csv
import platform
import resource
import time
from pathlib import Path


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
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _timed_run(rows, args, workers: int | None) -> dict:
    import torch

    from .cluster import dask_client
    from .predict import predict_rows

    t0 = time.perf_counter()
    with dask_client(None, workers) as client:
        t1 = time.perf_counter()
        results = predict_rows(rows, args.models, args.device, None, client)
        t2 = time.perf_counter()
        rss = list(client.run(worker_rss_mb).values()) if client else [worker_rss_mb()]
    return {
        "mode": f"--workers {workers}"
        if workers
        else f"in-process ({torch.get_num_threads()} thr)",
        "start_s": t1 - t0,
        "score_s": t2 - t1,
        "total_s": time.perf_counter() - t0,
        "rss_mb": max(rss),
        "results": results,
    }


def _read_seconds(rows: list[dict], k: int = 20) -> float:
    from .predict import load_image

    t = time.perf_counter()
    for row in rows[:k]:
        load_image(row["image"])
    return (time.perf_counter() - t) / max(min(k, len(rows)), 1)


def cmd_bench_cohort(args) -> int:
    from ..core.settings import data_dir

    vois = Path(args.vois) if args.vois else data_dir() / "lidc_vois"
    rows = voi_manifest(vois, args.n)
    print(f"{len(rows)} VOIs of {vois}, {platform.processor() or platform.machine()}")
    print(f"reading one VOI file: {1000 * _read_seconds(rows):.1f} ms")
    runs = [_timed_run(rows, args, None)] + [_timed_run(rows, args, w) for w in args.workers]
    base = runs[0]
    print(f"{'mode':<22} {'start s':>8} {'score s':>8} {'total s':>8} {'s/VOI':>6} "
          f"{'speed-up':>8} {'RSS MB':>7}")  # fmt: skip
    for run in runs:
        same = run["results"] == base["results"]
        print(
            f"{run['mode']:<22} {run['start_s']:8.1f} {run['score_s']:8.1f} {run['total_s']:8.1f}"
            f" {run['score_s'] / len(rows):6.3f} {base['total_s'] / run['total_s']:8.2f}"
            f" {run['rss_mb']:7.0f}" + ("" if same else "  ROWS DIFFER")
        )
        if not same:
            return 1
    scored = sum(not r["error"] for r in base["results"])
    print(f"scored {scored}/{len(rows)}; peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "bench-cohort",
        help="speed-up of predict over LIDC VOIs in-process vs a local Dask cluster",
        description=__doc__,
    )
    sp.add_argument("--vois", default=None, help="LIDC VOI folder (default: $DATA/lidc_vois)")
    sp.add_argument("--n", type=int, default=200, help="first N VOIs (0: all)")
    sp.add_argument(
        "--workers",
        type=lambda t: [int(v) for v in t.split(",")],
        default=[2],
        help="worker counts to compare, e.g. 1,2",
    )
    sp.add_argument("--device", default="auto")
    sp.add_argument("--models", default=None, help="ensemble folder (default: shipped models/)")
    sp.set_defaults(func=cmd_bench_cohort)
