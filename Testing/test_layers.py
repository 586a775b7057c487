"""The library's layers (docs/DESIGN.md §1) are enforced here, on every import statement.

Floors, bottom to top: ``core`` (numpy + torch), ``files`` (file formats, reports), ``mrml``
(the Slicer MRML layer), then the applications (``training``, ``evaluation``, ``cli``, ...). A
module imports only from its own floor or below; ``core`` and ``files`` never import ``slicer``
or ``vtk``; nothing in the library imports Qt. Function-level imports count too. Third-party
packages are allowed per floor (:data:`THIRD_PARTY`, the same list as docs/DESIGN.md §1): the
core needs only what the wheel installs without extras.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "NoduleMalignancyLib"
FLOORS = {"core": 0, "files": 1, "mrml": 2}
APPLICATIONS = 3
SLICER_ROOTS = {"slicer", "vtk", "vtkmodules", "trame_slicer", "mrml"}
QT_ROOTS = {"qt", "ctk", "PythonQt"}
NO_SLICER_BELOW = FLOORS["mrml"]
# Third-party imports each floor adds (a floor may use those of the floors below it); the
# applications' own ones by folder. Which extra installs each: pyproject.toml.
THIRD_PARTY = {
    0: {"numpy", "torch", "SimpleITK", "scipy", "threadpoolctl"},
    1: {"matplotlib", "tqdm", "pydicom", "highdicom"},
    2: {"slicer", "vtk", "vtkmodules", "PyTorchUtils"},
}
APPLICATION_THIRD_PARTY = {
    "batch": {"dask", "distributed", "psutil", "pylidc"},
    "station": {"trame", "trame_client", "trame_slicer", "wslink", "aiohttp"},
}


def floor_of(module: str) -> int:
    """``NoduleMalignancyLib.core.nodule.voi`` -> 0; the package root counts as the core."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) == 1:
        return 0
    return FLOORS.get(parts[1], APPLICATIONS)


def _imports(path: Path, module: str):
    """(imported module, line) for every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level and target == package:
                # "from . import x": x is a module of that package
                for alias in node.names:
                    yield f"{target}.{alias.name}", node.lineno
            else:
                yield target, node.lineno


def import_violations(package_dir: Path) -> list[str]:
    """Every import that breaks a layer rule, as ``file:line: message``."""
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        floor = floor_of(module)
        for target, line in _imports(path, module):
            root = target.split(".")[0]
            where = f"{rel}:{line}"
            if root in QT_ROOTS or target.startswith("slicer.ScriptedLoadableModule"):
                problems.append(f"{where}: imports {target} (the library never imports Qt)")
            elif root in SLICER_ROOTS and floor < NO_SLICER_BELOW:
                problems.append(f"{where}: imports {target} below the MRML layer")
            elif root == PACKAGE and floor_of(target) > floor:
                problems.append(
                    f"{where}: floor {floor} imports {target} from floor {floor_of(target)}"
                )
    return problems


def allowed_third_party(module: str) -> set[str]:
    """The third-party packages ``module`` may import: its floor's and those below."""
    floor = floor_of(module)
    allowed = set().union(*(names for f, names in THIRD_PARTY.items() if f <= floor))
    parts = module.split(".")
    if floor == APPLICATIONS and len(parts) > 1:
        allowed |= APPLICATION_THIRD_PARTY.get(parts[1], set())
    return allowed


def third_party_violations(package_dir: Path) -> list[str]:
    """Every import of a third-party package the module's floor does not allow."""
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        allowed = allowed_third_party(module)
        for target, line in _imports(path, module):
            root = target.split(".")[0]
            if root in sys.stdlib_module_names or root in (PACKAGE, "", "__future__"):
                continue
            if root not in allowed and root not in QT_ROOTS:  # Qt: import_violations
                problems.append(f"{rel}:{line}: imports {root} (floor {floor_of(module)})")
    return problems


def test_every_floor_imports_only_its_third_party_packages():
    assert third_party_violations(ROOT / PACKAGE) == []


def test_the_rule_catches_the_core_importing_a_package_of_an_extra(tmp_path):
    copy = tmp_path / PACKAGE
    shutil.copytree(ROOT / PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    vessel = copy / "core" / "scope" / "vessel.py"
    vessel.write_text(vessel.read_text() + "\n\ndef _f():\n    import distributed\n")
    training = copy / "training" / "cli.py"
    training.write_text(training.read_text() + "\nimport trame\n")
    problems = third_party_violations(copy)
    assert len(problems) == 2, problems
    assert "core/scope/vessel.py" in problems[0] and "distributed (floor 0)" in problems[0]
    assert "training/cli.py" in problems[1] and "trame (floor 3)" in problems[1]


def test_every_module_sits_on_a_floor_and_imports_downwards():
    assert import_violations(ROOT / PACKAGE) == []
    top = {p.name for p in (ROOT / PACKAGE).iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert set(FLOORS) <= top, "the layer folders exist"


def test_the_rule_catches_a_core_module_importing_slicer(tmp_path):
    """Shown once: the same check fails on a copy whose core imports slicer (and Qt, upwards)."""
    copy = tmp_path / PACKAGE
    shutil.copytree(ROOT / PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    geometry = copy / "core" / "geometry.py"
    geometry.write_text(geometry.read_text() + "\n\ndef _f():\n    import slicer\n")
    voi = copy / "core" / "nodule" / "voi.py"
    voi.write_text(voi.read_text() + "\nfrom ...mrml import logic\n")
    writers = copy / "files" / "writers.py"
    writers.write_text(writers.read_text() + "\nimport qt\n")
    problems = import_violations(copy)
    assert len(problems) == 3, problems
    assert any("core/geometry.py" in p and "below the MRML layer" in p for p in problems)
    assert any("core/nodule/voi.py" in p and "floor 0 imports" in p for p in problems)
    assert any("files/writers.py" in p and "never imports Qt" in p for p in problems)


def test_the_module_file_stays_light_at_import():
    """Slicer imports the module file at start-up, before torch may be installed."""
    tree = ast.parse((ROOT / "NoduleMalignancy" / "NoduleMalignancy.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
    assert "torch" not in top
    assert not {m for m in top if m.startswith(PACKAGE + ".core")}, top


def test_docstrings_cite_only_documents_inside_the_repository():
    """Every ``docs/DESIGN.md §N`` cited exists, and no other design document is cited."""
    import re

    design = (ROOT / "docs" / "DESIGN.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", design, flags=re.M))
    sources = [*(ROOT / PACKAGE).rglob("*.py"), *(ROOT / "Testing").glob("*.py")]
    sources.append(ROOT / "NoduleMalignancy" / "NoduleMalignancy.py")
    cited = set()
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?<!docs/)DESIGN(\.md)? §", text), f"{path}: cite docs/DESIGN.md"
        assert "shared" + "/DESIGN" not in text, path
        cited |= {(path.name, n) for n in re.findall(r"docs/DESIGN\.md §(\d+)", text)}
    missing = {c for c in cited if c[1] not in sections}
    assert cited and not missing, missing
