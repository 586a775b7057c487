"""Cohort runs on Dask distributed (docs/DESIGN.md §13): ``predict`` and ``export`` on a local
cluster of worker processes give the files of the in-process run, byte for byte (the tiny
ensemble); with the shipped ensemble the rows agree to 1e-4 (one torch thread per worker vs
all cores here)."""

from __future__ import annotations

import csv
import json
import operator
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib.batch.cluster import dask_client, map_in_order
from NoduleMalignancyLib.batch.export import lidc_cts, read_points_table
from NoduleMalignancyLib.batch.predict import ensemble_loads
from NoduleMalignancyLib.cli import main
from NoduleMalignancyLib.core.result_schema import field

VOIS = (
    ("LIDC-IDRI-0001", "1"),
    ("LIDC-IDRI-0003", "2"),
    ("LIDC-IDRI-0003", "3"),
    ("LIDC-IDRI-0004", "1"),
    ("LIDC-IDRI-0005", "1"),
    ("LIDC-IDRI-0007", "1"),
)


@pytest.fixture(scope="module")
def cluster():
    """The local cluster ``--workers 2`` starts (2 processes on loopback), as a user's running
    scheduler."""
    with dask_client(None, 2) as client:
        yield client


def _worker_settings() -> tuple[str | None, bool]:
    import os

    import dask

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), dask.config.get(
        "distributed.worker.profile.enabled"
    )


def test_local_cluster_listens_on_loopback_only(cluster):
    """Every socket the scheduler, nannies and workers listen on is 127.0.0.1 (none on
    0.0.0.0), the scheduler's HTTP server included, on a random port."""
    import os

    import psutil

    me = psutil.Process()
    listening = [
        c.laddr
        for p in [me, *me.children(recursive=True)]
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 2 + 2 * 2, listening  # scheduler + HTTP, 2 x (worker + HTTP)
    assert {a.ip for a in listening} == {"127.0.0.1"}, listening
    http = [s.getsockname() for s in cluster.cluster.scheduler.http_server._sockets.values()]
    assert [host for host, _ in http] == ["127.0.0.1"]
    assert cluster.scheduler_info()["services"]["dashboard"] == http[0][1]
    # The worker settings of batch/cluster.py: no malloc trim override, no profiler.
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    assert set(cluster.run(_worker_settings).values()) == {(trim, False)}


@pytest.fixture(scope="module")
def manifest(data_dir, tmp_path_factory):
    """Six LIDC VOIs at their centres, a second point on the first VOI further down (its image
    is grouped, its row keeps its place) and a row whose image does not exist."""
    with open(data_dir / "lidc_vois" / "metadata.csv", newline="") as f:
        meta = {(r["patient_id"], r["nodule_id"]): r for r in csv.DictReader(f)}
    folder = tmp_path_factory.mktemp("cohort")
    lines = ["id,image,x,y,z"]
    for patient, nodule in VOIS:
        r = meta[(patient, nodule)]
        image = data_dir / "lidc_vois" / "image" / f"{patient}_R_{nodule}.nii.gz"
        lines.append(f"{patient}_{nodule},{image},{r['coordX']},{r['coordY']},{r['coordZ']}")
        if len(lines) == 4:
            lines.append(f"missing,{folder / 'no_such_ct.nii.gz'},0,0,0")
    first = lines[1].split(",")
    lines.append(f"again,{first[1]},{first[2]},{first[3]},{float(first[4]) + 2.0}")
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _predict(manifest, tiny_dir, out, *extra) -> int:
    return main(
        ["predict", "--manifest", str(manifest), "--out", str(out), "--models", str(tiny_dir)]
        + [str(e) for e in extra]
    )


@pytest.fixture(scope="module")
def in_process(manifest, tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("in_process")
    assert _predict(manifest, tiny_dir, folder / "p.csv", "--masks-dir", folder / "masks") == 0
    return folder


def test_in_process_run_is_the_reference(in_process):
    with open(in_process / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [r["id"] for r in rows]
    assert ids[3] == "missing" and ids[-1] == "again" and len(ids) == len(VOIS) + 2
    assert "cannot read image" in rows[3]["error"]
    assert sum(not r["error"] for r in rows) == len(VOIS) + 1
    assert len(list((in_process / "masks").glob("*.nii.gz"))) == len(VOIS) + 1


def test_predict_on_local_workers_equals_in_process(manifest, tiny_dir, in_process, tmp_path):
    code = _predict(
        manifest, tiny_dir, tmp_path / "p.csv", "--masks-dir", tmp_path / "masks", "--workers", 2
    )
    assert code == 0
    assert (tmp_path / "p.csv").read_bytes() == (in_process / "p.csv").read_bytes()
    masks = sorted(p.name for p in (in_process / "masks").glob("*.nii.gz"))
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.nii.gz")) == masks
    for name in masks:  # written on the workers
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(in_process / "masks" / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "masks" / name)))
        assert np.array_equal(a, b)


def test_shipped_ensemble_on_local_workers_equals_in_process(manifest, tmp_path):
    """The shipped ensemble (models/) on ``--workers 2`` gives the single-process rows: ids,
    order, errors, warnings and Lung-RADS categories exactly; numbers to 1e-4, not bit for
    bit, since a worker runs torch on one thread and this process on all cores, and a
    different thread count sums floats in a different order."""
    from NoduleMalignancyLib.core.settings import shipped_models_dir

    lines = manifest.read_text().splitlines(keepends=True)
    few = tmp_path / "few.csv"  # 3 VOIs, the missing image, the second point on the first VOI
    few.write_text("".join(lines[:5] + lines[-1:]))
    models = shipped_models_dir()
    one, many = tmp_path / "one.csv", tmp_path / "many.csv"
    assert _predict(few, models, one) == 0
    assert _predict(few, models, many, "--workers", 2) == 0
    a, b = _rows(one), _rows(many)
    assert [r["id"] for r in b] == [r["id"] for r in a]
    assert [bool(r["error"]) for r in a] == [False, False, False, True, False]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for column in ra:
            if column in ("id", "error") or field(column).kind != "number" or not ra[column]:
                assert rb[column] == ra[column], (ra["id"], column)
            else:
                assert float(rb[column]) == pytest.approx(float(ra[column]), abs=1e-4), (
                    ra["id"],
                    column,
                )


def test_predict_on_a_running_scheduler(cluster, manifest, tiny_dir, in_process, tmp_path):
    import torch

    address = cluster.scheduler.address
    assert _predict(manifest, tiny_dir, tmp_path / "p.csv", "--scheduler", address) == 0
    assert (tmp_path / "p.csv").read_bytes() == (in_process / "p.csv").read_bytes()
    # One ensemble load per worker however many CTs it scored; one torch thread each.
    loads = cluster.run(ensemble_loads)
    assert len(loads) == 2 and max(loads.values()) == 1, loads
    assert set(cluster.run(torch.get_num_threads).values()) == {1}
    # A second run on the same workers loads nothing new.
    one_row = tmp_path / "one.csv"
    one_row.write_text("".join(manifest.read_text().splitlines(keepends=True)[:2]))
    assert _predict(one_row, tiny_dir, tmp_path / "q.csv", "--scheduler", address) == 0
    assert cluster.run(ensemble_loads) == loads


def _stuck_workers() -> None:
    """On a worker: the point x = 1 runs (Python-level) for a minute, any other fails at once."""
    import time

    from NoduleMalignancyLib.core.nodule import analysis

    def stuck(array, geometry, point, *args, **kwargs):
        if point[0] == 1.0:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                time.sleep(0.01)
        raise ValueError("the next row ran")

    stuck.original = analysis.analyze_point
    analysis.analyze_point = stuck


def _unstuck_workers() -> None:
    from NoduleMalignancyLib.core.nodule import analysis

    analysis.analyze_point = getattr(analysis.analyze_point, "original", analysis.analyze_point)


def test_the_row_timeout_holds_in_dask_workers(cluster, data_dir, tiny_dir, tmp_path):
    """``predict --row-timeout`` on workers (issue 28): a task thread cannot take SIGALRM, the
    timer thread stops the stuck row there; the next row of the CT runs on the same worker."""
    import time

    image = data_dir / "lidc_vois" / "image" / "LIDC-IDRI-0001_R_1.nii.gz"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,image,x,y,z\nstuck,{image},1,2,3\nnext,{image},2,2,3\n")
    out = tmp_path / "p.csv"
    address = cluster.scheduler.address
    cluster.run(_stuck_workers)
    try:
        start = time.perf_counter()
        assert _predict(manifest, tiny_dir, out, "--scheduler", address, "--row-timeout", 1) == 1
        elapsed = time.perf_counter() - start
    finally:
        cluster.run(_unstuck_workers)
    assert elapsed < 30, f"{elapsed:.1f} s: the stuck row was not stopped"
    rows = _rows(out)
    assert "row 'stuck' took longer than the row timeout (1 s" in rows[0]["error"]
    assert rows[1]["error"].endswith("the next row ran")


def test_a_failed_task_is_reported_and_the_others_go_on(cluster):
    calls = [(6, 3), (1, 0), (8, 2), (9, 3)]
    out = list(map_in_order(operator.truediv, calls, cluster, progress=False))
    assert [i for i, _, _ in out] == [0, 1, 2, 3]
    assert [v for _, v, _ in out] == [2.0, None, 4.0, 3.0]
    assert isinstance(out[1][2], ZeroDivisionError)
    local = list(map_in_order(operator.truediv, calls, None, progress=False))
    assert [v for _, v, _ in local] == [2.0, None, 4.0, 3.0]


def test_cts_to_export_pickle(manifest, data_dir):
    """Tasks carry their CT (and its loader) to the workers with plain pickle."""
    cts = read_points_table(manifest) + lidc_cts([data_dir / "lidc_ct" / "LIDC-IDRI-0001.tar.gz"])
    back = pickle.loads(pickle.dumps(cts))
    assert [c.path for c in back] == [c.path for c in cts]
    assert back[0].load().array_zyx.shape == cts[0].load().array_zyx.shape


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_export_on_the_cluster_equals_in_process(cluster, manifest, tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    assert main(["export", "--quiet", "--out", str(one), "--points", str(manifest)]) == 0
    address = cluster.scheduler.address
    args = ["export", "--quiet", "--out", str(many), "--points", str(manifest)]
    assert main([*args, "--scheduler", address]) == 0
    for name in ("metadata.csv", "failures.csv", "export_state.json"):
        assert (one / name).read_bytes() == (many / name).read_bytes(), name
    assert len(_rows(one / "metadata.csv")) == len(VOIS) + 1
    a, b = (json.loads((d / "dataset.json").read_text()) for d in (one, many))
    for info in (a, b):
        info.pop("created")
    assert a == b
    patches = sorted(p.name for p in (one / "image").glob("*.nii.gz"))
    assert sorted(p.name for p in (many / "image").glob("*.nii.gz")) == patches
    for name in patches:
        x, y = (sitk.ReadImage(str(d / "image" / name)) for d in (one, many))
        assert np.array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y))
        assert x.GetOrigin() == y.GetOrigin() and x.GetSpacing() == y.GetSpacing()
    # Resume on the cluster: everything already done, nothing rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in (many / "image").iterdir()}
    assert main([*args, "--scheduler", address]) == 0
    assert json.loads((many / "dataset.json").read_text())["last_run"] == {
        "done": 0,
        "skipped": len(VOIS) + 1,
        "failed": 1,
    }
    assert {p.name: p.stat().st_mtime_ns for p in (many / "image").iterdir()} == before
