"""The package works installed: a wheel built from the repository, in a fresh virtual environment.

Why: the editable install of ``make`` reads the source tree, which hid a wheel without most of
its sub-packages and without the shipped ensemble. Here the wheel is installed on its own (the
dependencies come from the test environment's site-packages, the source tree is not on the path)
and ``nodule-malignancy predict`` runs from it with the shipped models on a real LIDC VOI.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "runs", "build", "*.egg-info", "__pycache__", "demo_output"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the working tree (the tree itself is left untouched)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    out = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--disable-pip-version-check", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("*.whl")
    return found


def test_wheel_holds_every_package_and_the_shipped_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    library = ROOT / "NoduleMalignancyLib"
    for init in library.rglob("__init__.py"):
        assert str(init.relative_to(ROOT)) in names, init
    for path in library.rglob("*.py"):
        assert str(path.relative_to(ROOT)) in names, path
    manifest = "NoduleMalignancyLib/models/manifest.json"
    assert manifest in names
    assert {f"NoduleMalignancyLib/models/fold{k}.pt" for k in range(5)} <= names
    assert "NoduleMalignancyLib/resources/NoduleMalignancyEvidence.ctbl" in names


def test_installed_wheel_runs_predict_on_a_voi(wheel, tmp_path, data_dir):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
        + ["--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
    )
    # The dependencies (torch, SimpleITK, ...) from this environment, after the venv's own
    # site-packages; a plain path entry, so the editable install's finder is not loaded.
    site = Path(sysconfig.get_paths()["purelib"])
    env_site = next((env_dir / "lib").glob("python3*/site-packages"))
    (env_site / "zz_test_dependencies.pth").write_text(f"{site}\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [python, "-c", "import NoduleMalignancyLib as m; print(m.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where

    image = data_dir / "lidc_vois" / "image" / "LIDC-IDRI-0001_R_1.nii.gz"
    voi = sitk.ReadImage(str(image))
    # The VOI's centre in world LPS (the crop is centred on the readers' nodule).
    x, y, z = voi.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in voi.GetSize()])
    manifest = work / "points.csv"
    manifest.write_text(f"id,image,x,y,z\nn1,{image},{x:.4f},{y:.4f},{z:.4f}\n")
    clean_env = {"PATH": str(env_dir / "bin"), "HOME": str(tmp_path)}
    run = subprocess.run(
        [env_dir / "bin" / "nodule-malignancy", "predict"]
        + ["--manifest", str(manifest), "--out", str(work / "p.csv")],
        cwd=work,
        capture_output=True,
        text=True,
        env=clean_env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (row,) = list(csv.DictReader((work / "p.csv").open()))
    assert row["error"] == ""
    assert run.stderr == "" or "Traceback" not in run.stderr
    assert float(row["malignancy_probability"]) > 0.9  # a 23 mm spiculated nodule
    assert 15.0 < float(row["diameter_mm"]) < 35.0
