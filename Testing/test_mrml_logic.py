"""Headless MRML logic: the module's self-test bodies on slicer-core, plus pytest-only checks.

The ``test_*`` methods of :class:`NoduleMalignancyLib.mrml.selftest.NoduleMalignancySelfTestMixin`
run here exactly as in Slicer's Reload and Test; this file adds what only makes sense outside
Slicer: the module file and its wiring (with stand-ins for Qt), the reader-consensus parser
against an independent mask, mass-conserving evidence resampling, the dependency report, the
``selftest`` sub-command and the latency figures.
"""

from __future__ import annotations

import argparse
import io
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from NoduleMalignancyLib.core.model.metrics import dice
from NoduleMalignancyLib.files.lidc_xml import reader_consensus_mask
from NoduleMalignancyLib.mrml import selftest

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "NoduleMalignancy"


@pytest.mark.needs_data  # the self-test reads LIDC-IDRI-0001 through the data folder
class TestNoduleMalignancyLogicHeadless(selftest.HeadlessSelfTestCase):
    """The shared self-test on the headless runtime (pytest collects it as unittest)."""


# Evidence on the CT grid ---------------
def test_density_to_grid_conserves_the_integral():
    from NoduleMalignancyLib.core.config import VoiConfig
    from NoduleMalignancyLib.core.geometry import ImageGeometry
    from NoduleMalignancyLib.core.nodule.evidence import integrate
    from NoduleMalignancyLib.core.nodule.voi import (
        ct_sub_grid_covering,
        density_to_grid,
        grid_points_lps,
        voi_geometry,
    )

    rng = np.random.default_rng(0)
    cfg = VoiConfig()
    voi = voi_geometry([10.3, -20.1, -115.86], cfg)
    density = (rng.normal(size=cfg.shape_zyx) + 0.5).astype(np.float32)
    spacing, size = (0.703125, 0.703125, 2.5), (512, 512, 300)
    for origin, direction in (
        ((-180.0, -200.0, -300.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
        ((180.0, -200.0, 100.0), (-1, 0, 0, 0, 1, 0, 0, 0, -1)),  # flipped x and z
        ((-180.0, -200.0, -300.0), (0, 1, 0, 1, 0, 0, 0, 0, 1)),  # i along y, j along x
    ):
        ct = ImageGeometry(origin, spacing, direction, size)
        grid = ct_sub_grid_covering(voi, ct)
        shown = density_to_grid(density, voi, grid)
        assert shown.shape == grid.shape_zyx
        expected = integrate(density, voi.voxel_volume_mm3())
        assert abs(expected) > 1.0
        assert integrate(shown, grid.voxel_volume_mm3()) == pytest.approx(expected, rel=1e-5)
        # Mass lands where it was: an off-centre blob keeps its world centroid.
        blob = np.exp(-(((grid_points_lps(voi) - [14.0, -24.0, -110.0]) ** 2).sum(-1)) / 20.0)
        moved = density_to_grid(blob.astype(np.float32), voi, grid)
        before = (grid_points_lps(voi) * blob[..., None]).sum((0, 1, 2)) / blob.sum()
        after = (grid_points_lps(grid) * moved[..., None]).sum((0, 1, 2)) / moved.sum()
        assert np.abs(after - before).max() < 0.3
    oblique = ImageGeometry(
        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1), (64, 64, 64)
    )
    assert density_to_grid(density, voi, oblique) is None


# Reader consensus parser, cross-checked against the independent lidc_vois mask -----------------
def test_reader_consensus_matches_the_lidc_voi_mask(data_dir, ct_0001_path):
    import SimpleITK as sitk

    from NoduleMalignancyLib.core.geometry import ImageGeometry
    from NoduleMalignancyLib.files import samples

    geometry = ImageGeometry.from_sitk(sitk.ReadImage(str(ct_0001_path)))
    point = samples.nodule_points_lps(selftest.SAMPLE, data_dir=data_dir)[0][1]
    xml = samples.reader_xml_path(selftest.SAMPLE, data_dir=data_dir)
    consensus, readers = reader_consensus_mask(xml, geometry, point, level=0.25)
    assert readers == 4
    # lidc_vois masks are pylidc's 25 % consensus of the same readers, cropped from this CT.
    mask_image = sitk.ReadImage(
        str(data_dir / "lidc_vois" / "nodule_mask" / "LIDC-IDRI-0001_R_1.nii.gz")
    )
    crop = sitk.GetArrayFromImage(mask_image) > 0
    lo = np.rint(geometry.lps_to_index(mask_image.GetOrigin())).astype(int)
    reference = np.zeros(geometry.shape_zyx, dtype=bool)
    nz, ny, nx = crop.shape
    reference[lo[2] : lo[2] + nz, lo[1] : lo[1] + ny, lo[0] : lo[0] + nx] = crop
    assert dice(consensus, reference) > 0.85


# Dependencies ---------------
def test_dependency_report_and_policy():
    from NoduleMalignancyLib.mrml import dependencies as deps

    assert deps.missing_requirements() == []  # this environment has everything
    absent = deps.Requirement("no_such_module_xyz", "no-such-dist", "1.0", False, "testing")
    bundled = deps.Requirement("no_such_bundled_xyz", "bundled-dist", "1.0", True, "testing")
    old = deps.Requirement("numpy", "numpy", "999.0", True, "testing")
    missing = deps.missing_requirements([absent, bundled, old])
    assert [m.requirement for m in missing] == [absent, bundled, old]
    text = deps.describe_missing(missing)
    assert (
        "no-such-dist>=1.0" in text and "never reinstalled" in text and "older than 999.0" in text
    )
    assert not deps.inside_slicer()
    assert isinstance(deps.default_installer(), deps.PlainPythonInstaller)
    with pytest.raises(deps.DependencyError, match="pip install"):
        deps.ensure_dependencies(requirements=[absent])  # plain Python: report, never install
    declined = []
    with pytest.raises(deps.DependencyError, match="declined"):
        deps.ensure_dependencies(
            confirm=lambda text: declined.append(text) or False,
            installer=deps.SlicerInstaller(),
            requirements=[absent],
        )
    assert declined and "Install now?" in declined[0]
    with pytest.raises(deps.DependencyError, match="Reinstall Slicer"):
        deps.SlicerInstaller().install(missing[1:])  # bundled packages are never pip-installed


# Module file, UI and CMake wiring ---------------
def test_ui_file_has_the_widgets_the_module_uses():
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "NoduleMalignancy.ui").getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    expected = {
        "inputVolumeSelector": "qMRMLNodeComboBox",
        "markupsWidget": "qSlicerSimpleMarkupsWidget",
        "deviceComboBox": "QComboBox",
        "autoAnalyzeCheckBox": "QCheckBox",
        "analyzeButton": "QPushButton",
        "progressBar": "QProgressBar",
        "resultsTableView": "qMRMLTableView",
        "evidenceScaleComboBox": "QComboBox",
        "opacitySliderWidget": "ctkSliderWidget",
        "exportButton": "QPushButton",
        "exportDicomButton": "QPushButton",
        "studyCollapsibleButton": "ctkCollapsibleButton",
        "studyFilePathLineEdit": "ctkPathLineEdit",
        "studyDatabasePathLineEdit": "ctkPathLineEdit",
        "studyTokenLineEdit": "QLineEdit",
        "studySignInButton": "QPushButton",
        "studyProgressLabel": "QLabel",
        "studyMessageLabel": "QLabel",
        "studyRatingWidget": "QWidget",
        "studySubmitButton": "QPushButton",
        "studySkipButton": "QPushButton",
    }
    for name, cls in expected.items():
        assert widgets.get(name) == cls, name
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {c for c in widgets.values() if c[0] in "qc"} <= declared
    source = (MODULE_DIR / "NoduleMalignancy.py").read_text(encoding="utf-8")
    for name in expected.keys() - {"studyCollapsibleButton"}:  # a section, not wired
        assert f"ui.{name}" in source, f"{name} is not wired in the module"
    scales = [
        i.findtext("property/string")
        for i in root.iter("widget")
        if i.get("name") == "evidenceScaleComboBox"
        for i in i.iter("item")
    ]
    assert scales == ["combined", "fine", "medium", "coarse"]


def test_cmake_lists_build_the_scripted_module():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in (
        "slicerMacroBuildScriptedModule",
        "WITH_GENERIC_TESTS",
        "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)",
        "GLOB_RECURSE _library_scripts",
        "../NoduleMalignancyLib/*.py",
        "../models/*.pt",
        "../NoduleMalignancyLib/resources/*",
        "Resources/UI/${MODULE_NAME}.ui",
        "Resources/Icons/${MODULE_NAME}.png",
        "add_subdirectory(Testing/Python)",
    ):
        assert needle in text, needle
    assert (MODULE_DIR / "Resources" / "Icons" / "NoduleMalignancy.png").stat().st_size > 1000
    assert (
        "slicer_add_python_unittest"
        in (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text()
    )


def test_module_file_reexports_the_logic_and_runs_the_self_test(module_file):
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic

    assert module_file.NoduleMalignancyLogic is NoduleMalignancyLogic
    for name in ("NoduleMalignancy", "NoduleMalignancyWidget", "NoduleMalignancyTest"):
        assert isinstance(getattr(module_file, name), type), name
    test_class = module_file.NoduleMalignancyTest
    assert issubclass(test_class, selftest.NoduleMalignancySelfTestMixin)
    # One shared body through the module's own Test class (sample from the cache: no SampleData).
    suite = unittest.TestSuite([test_class("test_invalid_inputs_leave_scene_unchanged")])
    stream = io.StringIO()
    result = unittest.TextTestRunner(verbosity=0, stream=stream).run(suite)
    assert result.wasSuccessful() and result.testsRun == 1, stream.getvalue()


def test_sample_archive_checksum_is_the_archive_in_the_data_folder(data_dir):
    """SampleData verifies the archive with this SHA256: it must be the real file's."""
    import hashlib

    from NoduleMalignancyLib.files import samples

    archive = data_dir / samples.CT_SUBFOLDER / samples.SAMPLES[selftest.SAMPLE].archive
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert digest == selftest.SAMPLE_ARCHIVE_SHA256[selftest.SAMPLE]


# selftest sub-command ---------------
def test_selftest_subcommand_runs_the_mixin(data_dir, capsys):
    parser = argparse.ArgumentParser(prog="nodule-malignancy")
    selftest.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["selftest", "--data", str(data_dir), "-k", "invalid_inputs", "-q"])
    assert args.func(args) == 0
    assert "1 self-test(s) passed" in capsys.readouterr().out
    args = parser.parse_args(["selftest", "-k", "no_such_test_name", "-q"])
    assert args.func(args) == 2  # a selection that matches nothing is refused
    assert "no self-test matches" in capsys.readouterr().err


# Latency ---------------
def test_latency_point_to_overlay(slicer_runtime, mrml_scene, ct_0001_path, data_dir, capsys):
    """Point placement -> overlays in MRML (headless, CPU, warm): printed, loosely bounded."""
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.files import samples
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic

    volume = slicer_runtime.util.loadVolume(str(ct_0001_path))
    name, point = samples.nodule_points_lps(selftest.SAMPLE, data_dir=data_dir)[0]
    markups = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
    markups.AddControlPoint(*lps_to_ras(point), name)
    lines = []
    ensembles = [("tiny random ensemble", selftest.random_test_ensemble())]
    trained, _ = selftest.trained_ensemble()
    if trained is not None:
        ensembles.append((f"trained ensemble {trained.version}", trained))
    for label, ensemble in ensembles:
        figures = selftest.measure_latency(
            NoduleMalignancyLogic(ensemble=ensemble), volume, markups
        )
        lines.append(
            f"latency {label} (CPU, warm, median of {figures['repeats']}): placement -> overlay "
            f"{figures['placement_to_overlay_s']:.2f} s (compute {figures['compute_s']:.2f} s, "
            f"MRML update {figures['mrml_update_s'] * 1000:.0f} ms)"
        )
        # The split must add up (the figures themselves are a benchmark, not a test).
        total = figures["compute_s"] + figures["mrml_update_s"]
        assert abs(figures["placement_to_overlay_s"] - total) < 0.25 * total + 0.05
    with capsys.disabled():
        print("\n" + "\n".join(lines))
