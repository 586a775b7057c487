"""A per-row timeout in the batch paths (issue 28 item 5): a row that runs too long fails with
its reason and the next row runs; the default is documented and the timer is left as found."""

from __future__ import annotations

import csv
import signal
import time

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.batch.row_timeout import (
    DEFAULT_ROW_TIMEOUT_S,
    RowTimeoutError,
    row_deadline,
)
from NoduleMalignancyLib.core.nodule import analysis


def test_a_row_over_the_timeout_fails_and_the_next_runs(tmp_path, tiny_dir, monkeypatch):
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30, 40), np.int16)), str(ct))

    def analyze(array, geometry, point, *args, **kwargs):
        if point[0] == 1:  # the stuck row
            time.sleep(60)
        raise ValueError("the next row ran")

    monkeypatch.setattr(analysis, "analyze_point", analyze)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,image,x,y,z\nstuck,{ct},1,2,3\nnext,{ct},2,2,3\n")
    out = tmp_path / "p.csv"
    argv = ["predict", "--manifest", str(manifest), "--out", str(out), "--models", str(tiny_dir)]
    start = time.perf_counter()
    assert cli.main([*argv, "--row-timeout", "1"]) == 1
    assert time.perf_counter() - start < 30
    rows = list(csv.DictReader(open(out, newline="")))
    assert "row 'stuck' took longer than the row timeout (1 s" in rows[0]["error"]
    assert rows[1]["error"].endswith("the next row ran")


def test_the_default_is_documented_and_zero_turns_it_off():
    args = cli.build_parser().parse_args(["predict", "--manifest", "m", "--out", "o"])
    assert args.row_timeout == DEFAULT_ROW_TIMEOUT_S
    with row_deadline(0, "no limit"):
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_timer_and_handler_are_restored():
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(RowTimeoutError, match="a sleep took longer"):
        with row_deadline(0.2, "a sleep"):
            time.sleep(5)
    with row_deadline(5, "a quick block"):
        pass
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def _busy(seconds: float) -> None:
    """Python-level work (a worker thread sees the timeout between instructions)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


def test_the_limit_holds_off_the_main_thread_and_never_fires_after_the_block():
    """In a thread (a Dask worker's task thread) the timer thread raises the error there; a
    block that ends in time leaves nothing pending, and the row's own ``except Exception``
    does not swallow it."""
    import threading

    outcome = {}

    def stuck_row() -> None:
        try:
            with row_deadline(0.3, "row 'stuck'"):
                try:
                    _busy(30)
                except Exception:  # a row's own error handling
                    outcome["swallowed"] = True
        except RowTimeoutError as exc:
            outcome["error"] = str(exc)
        with row_deadline(0.3, "row 'quick'"):
            _busy(0.05)
        _busy(0.6)  # past the quick row's deadline: nothing is raised any more
        outcome["after"] = True

    start = time.perf_counter()
    thread = threading.Thread(target=stuck_row)
    thread.start()
    thread.join(20)
    assert not thread.is_alive() and time.perf_counter() - start < 5
    assert outcome == {
        "error": "row 'stuck' took longer than the row timeout (0.3 s; --row-timeout)",
        "after": True,
    }


def test_export_fails_a_ct_over_the_timeout_and_goes_on(tmp_path, monkeypatch):
    from NoduleMalignancyLib.files import patches

    export_ct = patches.export_ct

    def stuck_first(ct, *args, **kwargs):
        if ct.path.name == "stuck.nrrd":
            time.sleep(60)
        return export_ct(ct, *args, **kwargs)

    monkeypatch.setattr(patches, "export_ct", stuck_first)
    array = np.full((40, 64, 64), -800, np.int16)
    lines = ["id,image,x,y,z"]
    for name in ("stuck", "next"):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"{name}.nrrd"))
        lines.append(f"{name}_1,{tmp_path / f'{name}.nrrd'},30,30,20")
    table = tmp_path / "points.csv"
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["export", "--points", str(table), "--out", str(out), "--quiet", "--row-timeout", "1"]
    start = time.perf_counter()
    cli.main(argv)
    assert time.perf_counter() - start < 30
    failures = list(csv.DictReader(open(out / "failures.csv", newline="")))
    stuck = [f for f in failures if f["source"].endswith("stuck.nrrd")]
    assert stuck and "took longer than the row timeout (1 s" in stuck[0]["reason"]
    assert not any(
        f["source"].endswith("next.nrrd") and "row timeout" in f["reason"] for f in failures
    )
