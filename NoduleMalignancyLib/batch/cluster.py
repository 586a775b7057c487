"""Cohort runs on Dask distributed: one task per CT, results back in input order.

Why: a cohort is many CTs, each independent, each read once; N worker processes (one torch
thread each) score N CTs at a time (docs/DESIGN.md §13). Without ``--scheduler`` or
``--workers`` the same tasks run in the calling process, as before. Workers read and write the
paths they are given (CTs, ``--masks-dir``, an export's patch folder): with a remote scheduler
those must be on a filesystem every worker sees.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ..core.extras import require_extra


def add_cluster_arguments(sp: argparse.ArgumentParser) -> None:
    """``--scheduler ADDRESS`` | ``--workers N`` (neither: in-process)."""
    group = sp.add_mutually_exclusive_group()
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="run on this Dask scheduler (tcp://host:port; shared filesystem assumed)",
    )
    group.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="start a local Dask cluster of N worker processes (1 thread each)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of workers, got {text}")
    return value


# Dask's defaults for a worker, changed for CPU-bound one-thread torch tasks (scoped to the
# local cluster this module starts; a running --scheduler keeps its own). The nanny sets
# MALLOC_TRIM_THRESHOLD_=65536 in each worker's environment: glibc then returns freed memory to
# the OS at once, and every VOI's tensors are unmapped and faulted in again (measured on 30
# VOIs: 181,000 minor page faults and 0.31 s of system time per VOI, against 233 and 0.003 s
# without it). The statistical profiler samples every thread's stack each 10 ms; its cost was
# within the noise here, but nothing reads its samples. Worker CPU-s per VOI (40 LIDC VOIs, one
# worker, load average ~5 from other jobs): 0.62 with Dask's defaults, 0.38 with these, 0.32
# in one process on one torch thread (`nodule-malignancy bench-cohort --n 40 --threads 1
# --workers 1 --dask-defaults`; docs/benchmarks/cohort.md).
LOCAL_WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}
# Every HTTP server (the scheduler's health/metrics routes, each worker's) on a random loopback
# port: with dashboard_address=None the scheduler still serves HTTP, on the fixed port 8787.
LOOPBACK_ANY_PORT = "127.0.0.1:0"


@contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    worker_config: dict | None = None,
) -> Iterator:
    """A ``distributed.Client``: on ``scheduler``, or on a local cluster of ``workers`` processes
    listening on 127.0.0.1 only, without dashboard (closed at the end); ``None`` when neither
    is given. ``worker_config`` (Dask settings for the local cluster, default
    :data:`LOCAL_WORKER_CONFIG`) lets ``bench-cohort`` compare Dask's own defaults."""
    if not scheduler and not workers:
        yield None
        return
    require_extra("batch", "dask", "distributed")
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    config = LOCAL_WORKER_CONFIG if worker_config is None else worker_config
    with dask.config.set(config):  # read when the nannies are made, here
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": LOOPBACK_ANY_PORT},
        )
    with cluster, Client(cluster) as client:
        yield client


def map_in_order(
    fn: Callable,
    calls: Sequence[tuple],
    client=None,
    desc: str = "",
    weights: Sequence[int] | None = None,
    progress: bool | None = None,
) -> Iterator[tuple[int, object, BaseException | None]]:
    """``(index, fn(*calls[index]), None)`` or ``(index, None, error)``, in input order.

    Each call is one task (on ``client``, else here). A result is yielded as soon as every
    earlier one has been, so a caller that records results (the export's tables) sees the
    input order and loses at most the tasks still out after a kill. The progress bar counts
    ``weights`` (e.g. rows per CT) over completed tasks; shown on a terminal by default.
    """
    from tqdm import tqdm

    weights = list(weights) if weights is not None else [1] * len(calls)
    bar = tqdm(
        total=sum(weights),
        desc=desc,
        disable=not (sys.stderr.isatty() if progress is None else progress),
    )
    with bar:
        if client is None:
            for i, call in enumerate(calls):
                try:
                    out = (i, fn(*call), None)
                except Exception as exc:  # one bad CT must not stop a cohort
                    out = (i, None, exc)
                bar.update(weights[i])
                yield out
            return
        yield from _on_cluster(fn, calls, client, bar, weights)


def _on_cluster(fn, calls, client, bar, weights):
    from asyncio import CancelledError

    from distributed import as_completed

    futures = [client.submit(fn, *call, pure=False) for call in calls]
    index = {f.key: i for i, f in enumerate(futures)}
    ready: dict[int, tuple] = {}
    following = 0
    try:
        for future in as_completed(futures):
            i = index[future.key]
            try:
                ready[i] = (i, future.result(), None)
            except (Exception, CancelledError) as exc:  # the task raised, its worker was lost
                ready[i] = (i, None, exc)
            future.release()
            bar.update(weights[i])
            while following in ready:
                yield ready.pop(following)
                following += 1
    finally:
        client.cancel([f for f in futures if not f.done()])
