"""``bench --cold`` (issue 27, item 7): ``analyze`` in a fresh process, split into its stages."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib import benchmark


def test_a_cold_run_splits_a_fresh_analyze(tmp_path):
    """A synthetic 12 mm solid nodule in lung: every stage of the split is timed, and the
    stages inside the process add up to no more than the wall time of the process."""
    k, j, i = np.ogrid[:48, :64, :64]
    ct = np.full((48, 64, 64), -850, dtype=np.int16)
    ct[((k - 24) ** 2 + (j - 32) ** 2 + (i - 32) ** 2) <= 8**2] = 40  # 0.75 mm voxels
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((0.75, 0.75, 0.75))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    point = np.array(image.TransformContinuousIndexToPhysicalPoint((32.0, 32.0, 24.0)))
    split = benchmark.cold_run(tmp_path / "ct.nrrd", point, None, "cpu")
    assert set(split) == {label for label, _ in benchmark.COLD_SPLIT} | {"total"}
    assert all(seconds > 0 for seconds in split.values()), split
    inside = sum(v for label, v in split.items() if label not in ("total",))
    assert inside <= split["total"] + 1e-9


def test_background_imports_in_order_and_errors_in_the_caller():
    """The thread imports the modules one after the other; a failed import is raised where
    the caller waits for it, and Python's switch interval is restored when the thread ends."""
    import sys

    from NoduleMalignancyLib.background_imports import BackgroundImports

    interval = sys.getswitchinterval()
    imports = BackgroundImports((".core.geometry", "json"), "NoduleMalignancyLib")
    assert imports.module(".core.geometry").ImageGeometry is not None
    imports.wait()
    assert imports.module("json").dumps([]) == "[]"
    failing = BackgroundImports(("json", "no_such_module_here", "csv"), None)
    assert failing.module("json").dumps(1) == "1"
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        failing.module("csv")  # never imported: the earlier failure is raised
    with pytest.raises(ModuleNotFoundError):
        failing.wait()
    failing.close()
    assert sys.getswitchinterval() == interval


def test_the_report_image_needs_no_pyplot():
    """The report is drawn on an Agg canvas of its own: pyplot (its import, its global state
    and backend switch) stays out of a cold ``analyze``."""
    code = (
        "import sys; import NoduleMalignancyLib.files.outputs; "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_program_ends_without_teardown_but_with_its_exit_handlers(tmp_path):
    """``cli.run`` (the console script, ``python -m``) exits with main's code, the streams
    flushed and the exit handlers run, without the interpreter's teardown."""
    code = (
        "import atexit, sys; from NoduleMalignancyLib import cli\n"
        "atexit.register(lambda: print('exit handler ran', flush=True))\n"
        "class Gone:\n"
        "    def __del__(self): print('teardown ran')\n"
        "kept = Gone()\n"
        f"sys.argv = ['nodule-malignancy', 'analyze', '--ct', {str(tmp_path / 'no.nrrd')!r},\n"
        "            '--point', '0,0,0', '--out', " + repr(str(tmp_path / "out")) + "]\n"
        "print('partial line', end='')\n"
        "cli.run()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "no such file" in out.stderr
    assert out.stdout.startswith("partial line") and "exit handler ran" in out.stdout
    assert "teardown ran" not in out.stdout


def _tar_gz(tmp_path: Path, files: dict[str, bytes], name: str = "ct.tar.gz") -> Path:
    path = tmp_path / name
    with tarfile.open(path, "w:gz" if name.endswith("gz") else "w") as archive:
        for arcname, data in files.items():
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name", ["ct.tar.gz", "ct.tar"])
def test_an_archive_is_extracted_whole_from_memory(tmp_path, name):
    """A gzip archive is decompressed in one zlib call (no thousands of GIL hand-overs beside
    the import thread) and every member written as it is; a plain tar is read as before."""
    from NoduleMalignancyLib.files.ct_input import extracted_archive

    files = {"a/s1.dcm": bytes(range(256)) * 40, "a/b/s2.dcm": b"x" * 3, "c.xml": b"<x/>"}
    with extracted_archive(_tar_gz(tmp_path, files, name)) as folder:
        found = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}
    assert found == files
    assert not folder.exists()


def test_an_archive_past_the_limit_or_cut_short_is_refused(tmp_path, monkeypatch):
    from NoduleMalignancyLib.files import ct_input

    archive = _tar_gz(tmp_path, {"s.dcm": b"\0" * 100_000})
    monkeypatch.setattr(ct_input, "MAX_EXTRACTED_BYTES", 1000)
    monkeypatch.setattr(ct_input, "_TAR_HEADROOM", 0)
    with pytest.raises(ValueError, match="more than the 1,000 bytes allowed"):
        with ct_input.extracted_archive(archive):
            pass
    monkeypatch.undo()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(ValueError, match="not a readable tar archive"):
        with ct_input.extracted_archive(cut):
            pass
