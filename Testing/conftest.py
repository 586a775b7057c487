"""Shared pytest fixtures: the data folder, an isolated cache, sample CTs, the headless scene,
the module file with stand-ins for Qt.

The data folder comes from ``NODULE_MALIGNANCY_DATA`` (CI sets it). Tiers (README, "Contributing"):
a test that uses the ``data_dir`` fixture (directly or through another fixture) is marked
``needs_data``, one that drives chromium through Playwright ``browser``. When the selected tests
need the data and it is missing, the run stops once with the variable to set, rather than skip,
so a misconfigured run cannot pass silently; ``make test-fast`` deselects them instead.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import types
import unittest
from pathlib import Path

import pytest

from NoduleMalignancyLib.core.settings import CACHE_ENV, DATA_ENV


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory) -> Path:
    """Point ``NODULE_MALIGNANCY_CACHE`` at a per-session temporary folder.

    Why: tests must not write decoded CTs into the user's home; the folder is shared by the
    whole session (one decode per sample) and removed at the end (the CTs are ~44 MB each).
    """
    folder = tmp_path_factory.mktemp("nodule_malignancy_cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous
    shutil.rmtree(folder, ignore_errors=True)


def _data_problem() -> str | None:
    """Why the data folder cannot be used (what to set), or None when it can."""
    value = os.environ.get(DATA_ENV, "")
    if not value:
        return (
            f"{DATA_ENV} is not set: point it at the data folder that contains lidc_ct/ and "
            f"lidc_vois/ (e.g. {DATA_ENV}=../shared/data); `make test` sets it when ../shared/data "
            "exists; `make test-fast` runs the tests that need no data"
        )
    folder = Path(value).expanduser()
    if not (folder / "lidc_ct").is_dir():
        return (
            f"{DATA_ENV}={value}: {folder / 'lidc_ct'} does not exist; point {DATA_ENV} at the "
            "data folder that contains lidc_ct/ and lidc_vois/"
        )
    return None


def _drives_a_browser(item: pytest.Item) -> bool:
    try:
        return "sync_playwright" in inspect.getsource(item.obj)
    except (AttributeError, OSError, TypeError):
        return False


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark the tiers: ``needs_data`` (uses the data folder), ``browser`` (Playwright)."""
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)
        if _drives_a_browser(item):
            item.add_marker(pytest.mark.browser)


def pytest_collection_finish(session):
    """Selected tests need the data and it is missing: stop once, saying what to set."""
    if any(item.get_closest_marker("needs_data") for item in session.items):
        problem = _data_problem()
        if problem:
            pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The LIDC data folder from ``NODULE_MALIGNANCY_DATA``; fails when unset or missing."""
    problem = _data_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    return Path(os.environ[DATA_ENV]).expanduser()


@pytest.fixture(scope="session")
def ct_0001_path(data_dir, _session_cache) -> Path:
    """Cached, checksum-verified NRRD of LIDC-IDRI-0001 (decoded once per session)."""
    from NoduleMalignancyLib.files import samples

    return samples.sample_path("LIDC-IDRI-0001", data_dir=data_dir)


@pytest.fixture(scope="session")
def slicer_runtime(tmp_path_factory):
    """The ``slicer`` module with the headless runtime (scene, app, modules) installed."""
    from NoduleMalignancyLib.mrml.runtime import ensure_slicer_runtime

    return ensure_slicer_runtime(cache_dir=tmp_path_factory.mktemp("slicer_cache"))


@pytest.fixture
def mrml_scene(slicer_runtime):
    """A cleared ``slicer.mrmlScene`` for one test (as a Slicer test's ``setUp``)."""
    from NoduleMalignancyLib.mrml.runtime import reset_scene

    scene = reset_scene()
    yield scene
    reset_scene()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random 2-fold ensemble folder (real manifest and sha256), written once."""
    from NoduleMalignancyLib.core.model.ensemble import write_random_ensemble

    folder = tmp_path_factory.mktemp("tiny_ensemble")
    write_random_ensemble(folder)
    return folder


@pytest.fixture
def module_file(slicer_runtime, monkeypatch):
    """Import NoduleMalignancy.py with stand-ins for what only the Slicer application has."""
    import importlib.util

    fake = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    fake.ScriptedLoadableModule = _Base
    fake.ScriptedLoadableModuleWidget = _Base
    fake.ScriptedLoadableModuleTest = unittest.TestCase
    qt_stub = types.ModuleType("qt")
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", fake)
    monkeypatch.setitem(sys.modules, "qt", qt_stub)
    spec = importlib.util.spec_from_file_location(
        "NoduleMalignancy",
        Path(__file__).resolve().parent.parent / "NoduleMalignancy" / "NoduleMalignancy.py",
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(slicer_runtime, "ScriptedLoadableModule"):
        monkeypatch.delattr(slicer_runtime, "ScriptedLoadableModule")
    return module
