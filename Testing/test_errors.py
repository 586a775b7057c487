"""Errors that tell a bug from bad input (issue 27, item 3): one base class for the project's
expected errors; the CLI exits 2 with the message for those, 1 with the traceback for anything
else; a batch row that fails on a bug keeps its message and logs its traceback beside the
output."""

from __future__ import annotations

import ast
import csv
import importlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.core.errors import NoduleMalignancyError
from NoduleMalignancyLib.core.scope.validation import RefusedError

LIB = Path(cli.__file__).parent
ANALYZE = ["analyze", "--ct", "ct.nrrd", "--point", "0,0,0", "--out"]


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every class named ``...Error`` defined in the library."""
    found = []
    for path in sorted(LIB.rglob("*.py")):
        module = ".".join(path.relative_to(LIB.parent).with_suffix("").parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.append((module.removesuffix(".__init__"), node.name))
    return found


def test_every_error_class_derives_from_the_base(slicer_runtime):
    classes = _error_classes()
    assert len(classes) >= 15
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, NoduleMalignancyError), f"{module}.{name}"


def test_one_input_error_class():
    from NoduleMalignancyLib.batch import luna25
    from NoduleMalignancyLib.core.errors import InputError

    assert luna25.InputError is InputError
    assert issubclass(RefusedError, InputError) and issubclass(InputError, ValueError)


def _bug(*args, **kwargs):
    raise KeyError("a missing key")


def test_a_bug_exits_1_with_its_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "read_input", _bug)
    assert cli.main([*ANALYZE, str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'a missing key'" in err
    assert "a bug" in err


def test_a_refusal_exits_2_with_its_message(monkeypatch, tmp_path, capsys):
    def refuse(*args, **kwargs):
        raise RefusedError("not_ct", "This is not a CT.")

    monkeypatch.setattr(cli, "read_input", refuse)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main([*ANALYZE, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refused (not_ct): This is not a CT." in err and "Traceback" not in err
    # --debug (or the environment variable) shows the traceback of every error too
    assert cli.main(["--debug", *ANALYZE, str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert cli.main([*ANALYZE, str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_missing_file_is_bad_input(tmp_path, capsys):
    assert cli.main(["analyze", "--ct", str(tmp_path / "no.nrrd"), *ANALYZE[3:], "o"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_building_the_parser_imports_no_subcommand_module():
    """Each sub-command's module is imported only when it runs (cold start, item 7)."""
    import subprocess
    import sys

    modules = sorted({m for modules, _ in cli.LAZY_COMMANDS.values() for m in modules})
    code = (
        "import sys; from NoduleMalignancyLib import cli; cli.build_parser(); "
        f"print([m for m in {modules!r} if 'NoduleMalignancyLib' + m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", list(cli.LAZY_COMMANDS))
def test_lazy_command_help_is_its_module_s(name):
    """The top-level listing (no import) says what the module registers."""
    import argparse

    modules, text = cli.LAZY_COMMANDS[name]
    sub = argparse.ArgumentParser().add_subparsers()
    for module in modules:
        importlib.import_module(module, "NoduleMalignancyLib").register(sub)
    assert {a.dest: a.help for a in sub._choices_actions}[name] == text


def test_a_row_that_hits_a_bug_logs_its_traceback(tiny_dir, tmp_path, monkeypatch, capsys):
    from NoduleMalignancyLib.core.nodule import analysis

    image = sitk.GetImageFromArray(np.full((8, 8, 8), -800, dtype=np.int16))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        f"id,image,x,y,z\nbug,{tmp_path / 'ct.nrrd'},1,1,1\nrefused,{tmp_path / 'ct.nrrd'},2,2,2\n"
    )
    real = analysis.analyze_point

    def analyze(array, geometry, point, *args, **kwargs):
        if point[0] == 1:
            raise KeyError("a missing key")
        return real(array, geometry, point, *args, **kwargs)

    monkeypatch.setattr(analysis, "analyze_point", analyze)
    out = tmp_path / "p.csv"
    args = ["predict", "--manifest", str(manifest), "--out", str(out), "--models", str(tiny_dir)]
    assert cli.main(args) == 1  # nothing scored
    with open(out, newline="") as f:
        rows = {r["id"]: r["error"] for r in csv.DictReader(f)}
    assert rows["bug"] == "KeyError: 'a missing key'"
    assert rows["refused"].startswith("no_nodule_at_point: ")  # a refusal: its code, no log
    log = tmp_path / "p.errors.log"
    text = log.read_text()
    assert "rows bug:" in text and "Traceback" in text and "refused" not in text
    assert f"tracebacks of unexpected errors: {log}" in capsys.readouterr().out
    # a run without a bug removes the previous run's log
    manifest.write_text(f"id,image,x,y,z\nrefused,{tmp_path / 'ct.nrrd'},2,2,2\n")
    cli.main(args)
    assert not log.exists()
