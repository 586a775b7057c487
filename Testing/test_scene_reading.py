"""The Slicer module's study panel without Qt (``study/scene_reading.py``, docs/DESIGN.md §14) on
the real slicer-core MRML scene: a study made here from two LIDC VOIs and a missing CT.

Why: the panel's handlers are one line each; what they call must load each case's CT as a
scalar volume and its point as a markups point list, keep the model hidden until the unaided
commit, take the form as the panel holds it, skip a CT that will not load, and say when the
washout ends.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from stepping import FakeClock

from NoduleMalignancyLib.study.ratings import RatingError
from NoduleMalignancyLib.study.store import StudyStateError, StudyStore, create_study

VOIS = ("LIDC-IDRI-0001_R_1", "LIDC-IDRI-0003_R_2")


def voi_cases(data_dir) -> list[dict]:
    """A case per VOI: its image and the nodule's world LPS centre from metadata.csv."""
    with open(data_dir / "lidc_vois" / "metadata.csv", newline="") as f:
        rows = {f"{r['patient_id']}_R_{r['nodule_id']}": r for r in csv.DictReader(f)}
    return [
        {
            "id": name,
            "ct": str(data_dir / "lidc_vois" / "image" / f"{name}.nii.gz"),
            "points": [{"name": "n1", "point": [float(rows[name][f"coord{a}"]) for a in "XYZ"]}],
            "truth": 1,
        }
        for name in VOIS
    ]


def make_study(tmp_path, data_dir, **extra) -> tuple:
    cases = [*voi_cases(data_dir), {"id": "lost", "ct": "lost.nrrd", "truth": 0}]
    study_file = tmp_path / "study.json"
    required = ["malignancy", "confidence"]
    study = {"name": "panel", "seed": 5, "required": required, "cases": cases, **extra}
    study_file.write_text(json.dumps(study))
    db = tmp_path / "study.db"
    owner = create_study(db, study_file)
    return study_file, db, owner


def entries(reading, malignancy: int, confidence: str) -> dict:
    """What the panel's widgets hold: drop-down indexes (0: not given) and texts."""
    out = {f["name"]: (0 if f["choices"] else "") for f in reading.fields}
    return out | {"malignancy": malignancy, "confidence": confidence, "lung_rads": 5}


def test_a_sequential_study_in_the_scene(slicer_runtime, mrml_scene, tmp_path, data_dir):
    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.study.scene_reading import POINTS_NAME, SceneReading

    study_file, db, owner = make_study(tmp_path, data_dir, design="sequential")
    token = StudyStore(db).add_reader(owner, "alice")
    reading = SceneReading()
    assert reading.model_visible and not reading.fields, "outside a study nothing is hidden"
    with pytest.raises(PermissionError):
        reading.sign_in(study_file, db, "not-a-token")
    with pytest.raises(ValueError, match="pick the study file"):
        reading.sign_in("", db, token)
    reading.sign_in(study_file, db, token)
    cases = {c["id"]: c for c in voi_cases(data_dir)}
    seen, skipped = [], []
    while reading.signed_in and reading.session.assignment is not None:
        case = reading.session.assignment.case
        if reading.can_skip:
            assert reading.volume is None and "No CT at" in reading.message
            assert "lost.nrrd" in reading.message
            with pytest.raises(RatingError, match="did not load"):
                reading.submit(entries(reading, 2, "10"), reading.step)
            skipped.append(case)
            reading.skip(reading.step)
            continue
        volume, markups = reading.volume, reading.markups
        assert volume.IsA("vtkMRMLScalarVolumeNode") and volume.GetScene() is mrml_scene
        assert markups.GetName() == POINTS_NAME and markups.GetNumberOfControlPoints() == 1
        expected = lps_to_ras(cases[case]["points"][0]["point"])
        assert np.allclose(markups.GetNthControlPointPosition(0), expected)
        assert not reading.model_visible and "hidden" in reading.message
        with pytest.raises(StudyStateError, match="only a case whose CT did not load"):
            reading.skip(reading.step)
        with pytest.raises(RatingError, match="malignancy"):
            reading.submit(entries(reading, 0, "10"), reading.step)  # not given
        reading.submit(entries(reading, 4, "70"), reading.step)
        assert reading.session.assignment.modality == "aided" and reading.model_visible
        assert reading.volume is volume, "the aided step keeps the case's nodes"
        start = reading.start_entries()
        assert start["malignancy"] == 4 and start["confidence"] == "70"
        assert reading.choice_titles(reading.fields[-2])[start["lung_rads"]] == "4B"
        reading.submit(start | {"malignancy": 5}, reading.step)
        assert volume.GetScene() is None, "the next case replaces the nodes"
        seen.append(case)
    assert sorted(seen) == sorted(VOIS) and skipped == ["lost"]
    assert reading.message == "Every case is rated. Thank you." and reading.volume is None
    assert reading.progress_text() == "Reader alice: 6 of 6 steps done (2 skipped)."
    rows = StudyStore(db).my_ratings(token)
    assert [(r["modality"], r["malignancy"], r["model_visible"]) for r in rows[:2]] == [
        ("unaided", 4, False),
        ("aided", 5, True),
    ]
    assert {r["lung_rads"] for r in rows} == {"4B"}
    assert StudyStore(db).snapshot(owner).skips[0]["case"] == "lost"


def test_the_panel_says_when_the_washout_ends(slicer_runtime, mrml_scene, tmp_path, data_dir):
    from NoduleMalignancyLib.study.scene_reading import SceneReading

    clock = FakeClock()
    clock.now = 1_800_000_000.0
    study_file, db, owner = make_study(tmp_path, data_dir, design="independent", washout_days=2)
    token = StudyStore(db).add_reader(owner, "bob")
    reading = SceneReading(clock=clock)
    reading.sign_in(study_file, db, token)
    for _ in range(3):
        if reading.can_skip:
            reading.skip(reading.step)
        else:
            assert reading.session.assignment.modality == "unaided" and not reading.model_visible
            reading.submit(entries(reading, 3, "50"), reading.step)
    assert reading.session.assignment is None and reading.volume is None
    assert "session 2 (aided) opens on 2027-01-17" in reading.message
    clock.now += 2 * 86400.0
    reading.open_next()
    assignment = reading.session.assignment
    assert (assignment.session, assignment.modality) == (2, "aided") and reading.model_visible


def one_case_study(tmp_path, ct_path) -> tuple:
    """A sequential study of LIDC-IDRI-0001 (the cached NRRD keeps its DICOM tags)."""
    study_file = tmp_path / "study.json"
    case = {"id": "c1", "ct": str(ct_path), "truth": 1}
    required = ["malignancy", "confidence"]
    study = {"name": "double", "seed": 3, "design": "sequential", "required": required}
    study["cases"] = [case]
    study_file.write_text(json.dumps(study))
    db = tmp_path / "study.db"
    owner = create_study(db, study_file)
    return study_file, db, StudyStore(db).add_reader(owner, "dora")


def test_a_double_submit_is_refused_and_nothing_reaches_the_next_step(
    slicer_runtime, mrml_scene, tmp_path, ct_0001_path
):
    """Issue 28: the second click of a double click on "Commit rating" names the step its form
    was built for; that step is committed, so it is refused with a message and the sequential
    aided step stays open, empty. The rating keeps the CT it was made on."""
    from NoduleMalignancyLib.study.scene_reading import SceneReading
    from NoduleMalignancyLib.study.session import StaleFormError

    study_file, db, token = one_case_study(tmp_path, ct_0001_path)
    reading = SceneReading()
    reading.sign_in(study_file, db, token)
    step, form = reading.step, entries(reading, 4, "70")
    assert step.modality == "unaided"
    reading.submit(form, step)
    assert reading.session.assignment.modality == "aided" and reading.step != step
    with pytest.raises(StaleFormError, match=r"case c1 \(unaided\), which is no longer open"):
        reading.submit(form, step)  # the double click's second
    with pytest.raises(StaleFormError, match="does not name its case, step and form"):
        reading.submit(form, None)
    with pytest.raises(StaleFormError):
        reading.skip(step)
    rows = StudyStore(db).my_ratings(token)
    assert [(r["modality"], r["malignancy"]) for r in rows] == [("unaided", 4)]
    assert rows[0]["patient_id"] == "LIDC-IDRI-0001"
    assert rows[0]["series_uid"].startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001.")
    assert reading.session.assignment.modality == "aided", "the aided step is still open"
    reading.submit(reading.start_entries() | {"malignancy": 5}, reading.step)
    assert [r["modality"] for r in StudyStore(db).my_ratings(token)] == ["unaided", "aided"]


# The module file's panel: its handlers reach SceneReading (stand-ins for the Qt widgets only) --
class _Box:
    """A stand-in for a Qt widget: the attributes the panel reads and writes."""

    def __init__(self, text: str = "", **attributes) -> None:
        self.text, self.enabled, self.currentIndex, self.node = text, True, 0, None
        self.__dict__.update(attributes)

    def addItems(self, items) -> None:  # noqa: N802 (Qt names)
        self.items = list(items)

    def setCurrentNode(self, node) -> None:  # noqa: N802 (Qt names)
        self.node = node


class _FormLayout:
    def __init__(self) -> None:
        self.rows: list = []

    def rowCount(self) -> int:  # noqa: N802 (Qt names)
        return len(self.rows)

    def removeRow(self, row: int) -> None:  # noqa: N802 (Qt names)
        self.rows.pop(row)

    def addRow(self, label: str, box) -> None:  # noqa: N802 (Qt names)
        self.rows.append((label, box))


def test_the_module_panel_wires_every_handler_to_scene_reading(
    module_file, mrml_scene, tmp_path, data_dir, monkeypatch
):
    import contextlib
    import types

    study_file, db, owner = make_study(tmp_path, data_dir, design="sequential")
    token = StudyStore(db).add_reader(owner, "carol")
    qt = sys.modules["qt"]
    monkeypatch.setattr(qt, "QComboBox", type("QComboBox", (_Box,), {}), raising=False)
    monkeypatch.setattr(qt, "QLineEdit", type("QLineEdit", (_Box,), {}), raising=False)
    errors = []

    @contextlib.contextmanager
    def shown(message, **_):  # slicer.util.tryWithErrorDisplay without its dialog
        try:
            yield
        except Exception as exc:
            errors.append(str(exc))

    monkeypatch.setattr(module_file.slicer.util, "tryWithErrorDisplay", shown)
    form = _FormLayout()
    widget = module_file.NoduleMalignancyWidget()
    widget.ui = types.SimpleNamespace(
        studyFilePathLineEdit=_Box(currentPath=str(study_file)),
        studyDatabasePathLineEdit=_Box(currentPath=str(db)),
        studyTokenLineEdit=_Box(token),
        studyRatingWidget=_Box(layout=lambda: form),
        **{
            name: _Box()
            for name in (
                "studyProgressLabel",
                "studyMessageLabel",
                "studySubmitButton",
                "studySkipButton",
                "analyzeButton",
                "inputVolumeSelector",
                "markupsWidget",
            )
        },
    )
    widget._ensureLogic = lambda: True  # the logic and its dependencies: not this test's subject
    widget.onStudySignIn()
    ui, reading = widget.ui, widget.studyReading
    assert (
        errors == [] and reading.signed_in and ui.studyProgressLabel.text.startswith("Reader carol")
    )
    while reading.can_skip:
        assert ui.studySkipButton.enabled and not ui.studySubmitButton.enabled and not form.rows
        widget.onStudySkip()
    assert (
        ui.inputVolumeSelector.node is reading.volume and ui.markupsWidget.node is reading.markups
    )
    assert not ui.analyzeButton.enabled, "no analysis while the model is hidden"
    boxes = dict((label.rstrip(" *"), box) for label, box in form.rows)
    malignancy = next(box for label, box in boxes.items() if label == "Malignancy")
    malignancy.currentIndex = 4
    widget.onStudySubmit()
    assert errors and "confidence" in errors[-1], "the refused submit is shown"
    assert next(b for label, b in form.rows if label.startswith("Malignancy")) is malignancy
    next(b for label, b in form.rows if label.startswith("Confidence")).text = "65"
    widget.onStudySubmit()
    assert len(errors) == 1 and reading.session.assignment.modality == "aided"
    assert ui.analyzeButton.enabled and "Analyze" in ui.studyMessageLabel.text
    assert next(b for label, b in form.rows if label.startswith("Malignancy")).currentIndex == 4
    assert [r["malignancy"] for r in StudyStore(db).my_ratings(token)] == [4]
    # A double click: its second click is delivered while the first one's events are drained
    # (the button is off then; were it delivered, its form's step is committed: refused).
    second = []

    def queued_click() -> None:
        if not second:
            second.append(ui.studySubmitButton.enabled)
            widget.onStudySubmit()

    monkeypatch.setattr(module_file.slicer.app, "processEvents", queued_click)
    widget.onStudySubmit()
    assert second == [False], "the button is off while the queued clicks are delivered"
    assert len(errors) == 2 and "no longer open" in errors[-1], errors
    rows = StudyStore(db).my_ratings(token)
    assert [(r["modality"], r["malignancy"]) for r in rows] == [("unaided", 4), ("aided", 4)]
    assert reading.step is not None and reading.step == widget._studyFormFor, "the next step"
