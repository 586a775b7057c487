"""The package works installed: the wheel built from the repository, installed with its own
dependencies into a fresh virtual environment (docs/DESIGN.md §9).

Why: the editable install of ``make`` reads the source tree and the test environment has every
package, which hid a wheel without most of its sub-packages and, later, a wheel that declared
neither scipy nor tqdm (``predict`` failed on a fresh install). Here pip installs the wheel and
what it declares, at the versions ``make`` pins (requirements.txt as constraints: the CPU torch
installs offline), ``pip check`` agrees, ``predict`` runs on a real LIDC VOI with the core
dependencies alone, then with ``[all]`` every sub-command's ``--help`` works. The static tests
keep pyproject.toml, requirements.txt and the imports saying the same thing.

A fresh install takes about two minutes; the venv is kept in pytest's cache folder under a key
of the wheel's content and the constraints, so a rerun on an unchanged tree reuses it (still a
real install with its dependencies; any change to the package makes a new one).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

from NoduleMalignancyLib.core.errors import DependencyError
from NoduleMalignancyLib.core.extras import DISTRIBUTION, require_extra

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "NoduleMalignancyLib"
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "runs", "build", "*.egg-info", "__pycache__", "demo_output"
)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Imported only where they exist: the Slicer application's own modules.
SLICER_APPLICATION_ONLY = {"PyTorchUtils", "qt", "ctk"}


def _name(requirement: str) -> str:
    """``dask[distributed]>=2024.8`` -> ``dask`` (PEP 503 normalised)."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, set[str]]:
    """Distribution names per group: ``""`` (the core) and each extra, self-references out."""
    project = PYPROJECT["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    own = _name(DISTRIBUTION)
    return {g: {_name(r) for r in reqs} - {own} for g, reqs in groups.items()}


def _requirements_txt() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the package files importing it (function level too)."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root not in stdlib and root != PACKAGE.name:
                    found.setdefault(root, set()).add(str(path.relative_to(ROOT)))
    return found


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, with their requested extras (from the
    installed metadata of this environment, where `make` installed all of them)."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, str]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = _name(requirement.name)
        for extra in {"", *requirement.extras}:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            try:
                lines = importlib.metadata.requires(name) or []
            except importlib.metadata.PackageNotFoundError:
                continue
            for line in lines:
                child = Requirement(line)
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    todo.append(child)
    return {name for name, _ in seen}


def test_requirements_txt_pins_what_pyproject_declares():
    """`make` installs requirements.txt: the same packages as the core and every extra."""
    declared = set().union(*_declared().values())
    pinned = {_name(r) for r in _requirements_txt()}
    assert pinned == declared, (
        f"only in requirements.txt: {sorted(pinned - declared)}; "
        f"only in pyproject.toml: {sorted(declared - pinned)}"
    )


def test_every_third_party_import_is_declared():
    """Each module the package imports comes with the core or one of the extras."""
    to_dist = importlib.metadata.packages_distributions()
    project = PYPROJECT["project"]
    own = _name(DISTRIBUTION)
    requirements = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    covered = _closure([r for r in requirements if _name(r) != own])
    missing = {}
    for module, files in _third_party_imports().items():
        if module in SLICER_APPLICATION_ONLY:
            continue
        dists = {_name(d) for d in to_dist.get(module, [])}
        if not dists & covered:
            missing[module] = sorted(files)
    assert not missing, f"imported but declared nowhere (pyproject.toml): {missing}"


def test_require_extra_names_extras_that_exist():
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "require_extra":
                calls.append((path.name, node.args[0].value))
    assert {"batch", "dicom", "lidc", "slicer", "station"} <= {extra for _, extra in calls}
    assert all(extra in extras for _, extra in calls), calls


def test_require_extra_says_which_extra_to_install():
    require_extra("batch", "json", "numpy")  # present: nothing happens
    with pytest.raises(DependencyError, match=r"not_a_module_h1 is not installed") as info:
        require_extra("station", "numpy", "not_a_module_h1")
    assert f"pip install '{DISTRIBUTION}[station]'" in str(info.value)


@pytest.mark.parametrize(
    ("argv", "hidden", "extra"),
    [
        (["app", "--sample", "NO-SUCH-SAMPLE"], "trame_slicer", "station"),
        (["selftest"], "slicer", "slicer"),
        (["study", "serve", "--db", "no-such-study.db"], "slicer", "station"),
    ],
)
def test_a_command_without_its_extra_exits_2_naming_it(argv, hidden, extra, monkeypatch, capsys):
    """What a user of the bare wheel sees: the extra to install, not a ModuleNotFoundError."""
    from NoduleMalignancyLib import cli
    from NoduleMalignancyLib.core import extras

    installed = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m != hidden and installed(m))
    assert cli.main(argv) == 2
    assert f"pip install '{DISTRIBUTION}[{extra}]'" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["mrml.logic", "mrml.nodes", "mrml.ct_loading"])
def test_the_mrml_layer_without_slicer_core_names_the_extra(module):
    """Imported where slicer-core is missing (hidden here from a fresh interpreter), the MRML
    layer raises the dependency error naming the 'slicer' extra, not a ModuleNotFoundError."""
    code = (
        "import sys\n"
        "class Hidden:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('slicer', 'vtk', 'vtkmodules'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hidden())\n"
        "from NoduleMalignancyLib.core.errors import DependencyError\n"
        "try:\n"
        f"    import NoduleMalignancyLib.{module}\n"
        "except DependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install '{DISTRIBUTION}[slicer]'" in out.stdout, out.stdout + out.stderr


def test_a_cluster_without_the_batch_extra_names_it(monkeypatch):
    from NoduleMalignancyLib.batch.cluster import dask_client
    from NoduleMalignancyLib.core import extras

    monkeypatch.setattr(extras, "_installed", lambda m: m != "distributed")
    with pytest.raises(DependencyError, match=r"\[batch\]"), dask_client(workers=1):
        pass


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
    for init in PACKAGE.rglob("__init__.py"):
        assert str(init.relative_to(ROOT)) in names, init
    for path in PACKAGE.rglob("*.py"):
        assert str(path.relative_to(ROOT)) in names, path
    manifest = "NoduleMalignancyLib/models/manifest.json"
    assert manifest in names
    assert {f"NoduleMalignancyLib/models/fold{k}.pt" for k in range(5)} <= names
    assert "NoduleMalignancyLib/resources/NoduleMalignancyEvidence.ctbl" in names


def _constraints() -> str:
    """requirements.txt as pip constraints (constraints take no extras)."""
    return "\n".join(re.sub(r"\[[^]]*\]", "", r) for r in _requirements_txt()) + "\n"


def _wheel_digest(wheel: Path) -> str:
    """The wheel's content (names and bytes of its files), not its zip timestamps."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            digest.update(name.encode() + b"\0" + z.read(name))
    return digest.hexdigest()


def _pip(env_dir: Path, *args: str) -> None:
    run = subprocess.run(
        [env_dir / "bin" / "python", "-m", "pip", *args, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, f"pip {' '.join(args)}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"


def _predict(env_dir: Path, data_dir: Path, work: Path) -> None:
    """``nodule-malignancy predict`` through the console script, from another folder, with
    nothing of the test environment (no PYTHONPATH, HOME elsewhere)."""
    import SimpleITK as sitk

    image = data_dir / "lidc_vois" / "image" / "LIDC-IDRI-0001_R_1.nii.gz"
    voi = sitk.ReadImage(str(image))
    # The VOI's centre in world LPS (the crop is centred on the readers' nodule).
    x, y, z = voi.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in voi.GetSize()])
    manifest = work / "points.csv"
    manifest.write_text(f"id,image,x,y,z\nn1,{image},{x:.4f},{y:.4f},{z:.4f}\n")
    out = work / "p.csv"
    run = subprocess.run(
        [env_dir / "bin" / "nodule-malignancy", "predict"]
        + ["--manifest", str(manifest), "--out", str(out)],
        cwd=work,
        capture_output=True,
        text=True,
        env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(work)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    (row,) = list(csv.DictReader(out.open()))
    assert row["error"] == ""
    assert float(row["malignancy_probability"]) > 0.9  # a 23 mm spiculated nodule
    assert 15.0 < float(row["diameter_mm"]) < 35.0


HELP_WALK = """
import argparse, contextlib, io, json
from NoduleMalignancyLib import cli

def subparsers(parser):
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)

results, todo = {}, [[]]
while todo:
    path = todo.pop(0)
    root = cli.build_parser()
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            root.parse_args([*path, "--help"])
            code = "no exit"
        except SystemExit as exc:
            code = exc.code
    results[" ".join(path)] = [code, text.getvalue()[-600:]]
    if code == 0:
        parser = root
        for name in path:
            parser = subparsers(parser).choices[name]
        action = subparsers(parser)
        todo += [[*path, name] for name in (action.choices if action else ())]
print(json.dumps(results))
"""


def _every_help(env_dir: Path, work: Path) -> dict:
    """``--help`` of the program and of every sub-command, nested ones too (one process)."""
    run = subprocess.run(
        [env_dir / "bin" / "python", "-c", HELP_WALK],
        cwd=work,
        capture_output=True,
        text=True,
        env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(work)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def _fresh_or_kept_venv(wheel: Path, cache_root: Path) -> tuple[Path, bool]:
    """The venv for this wheel and these constraints: (folder, True when it must be built)."""
    key = hashlib.sha256(
        f"{_wheel_digest(wheel)} {_constraints()} {sys.version}".encode()
    ).hexdigest()[:20]
    env_dir = cache_root / key
    if (env_dir / "tested").is_file():
        return env_dir, False
    for old in cache_root.iterdir():  # one venv at a time (about 2.5 GB with [all])
        shutil.rmtree(old, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    return env_dir, True


@pytest.mark.install
def test_the_wheel_installs_with_its_dependencies_and_runs(wheel, data_dir, tmp_path, request):
    env_dir, fresh = _fresh_or_kept_venv(wheel, request.config.cache.mkdir("packaging-venv"))
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(_constraints())
    work = tmp_path / "elsewhere"
    work.mkdir()
    if fresh:  # the core dependencies alone predict; then every extra
        _pip(env_dir, "install", "-q", "-c", str(constraints), str(wheel))
        _pip(env_dir, "check")
        _predict(env_dir, data_dir, work)
        _pip(env_dir, "install", "-q", "-c", str(constraints), f"{wheel}[all]")
    _pip(env_dir, "check")
    where = subprocess.run(
        [env_dir / "bin" / "python", "-c", "import NoduleMalignancyLib as m; print(m.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where
    _predict(env_dir, data_dir, work)
    helps = _every_help(env_dir, work)
    failed = {path: out for path, out in helps.items() if out[0] != 0}
    assert not failed, failed
    top = {name for name in helps if name and " " not in name}
    assert {"analyze", "predict", "app", "study", "selftest", "export"} <= top, sorted(helps)
    assert any(" " in name for name in helps), "the nested sub-commands (study ...) were walked"
    (env_dir / "tested").write_text(os.environ.get("PYTEST_CURRENT_TEST", "") + "\n")
