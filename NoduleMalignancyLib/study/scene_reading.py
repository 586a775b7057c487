"""A reader's study session on the MRML scene: the Slicer module's study panel without Qt.

Why here: the panel in ``NoduleMalignancy/NoduleMalignancy.py`` (a collapsible "Reading study"
section) must do what the browser station's study mode does, with the same study file, database
and rules (docs/DESIGN.md §14): sign in with a reader token, open the next case (its CT as a
scalar volume node, its points as a markups point list), say whether the model's output may be
shown, submit the form, skip a case whose CT did not load, show progress. Every step is a method
here, tested headless on slicer-core; the panel's handlers are one line each. The rules stay in
``study/store/`` through ``study/session.py``; this module only adds the scene.

It sits on the application floor because it joins the study (floor 3) and the MRML layer
(``mrml/ct_loading.py``, floor 2; docs/DESIGN.md §1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..core.errors import AccessDeniedError
from ..core.geometry import lps_to_ras
from ..mrml.ct_loading import CTLoadError, load_ct_volume
from ..mrml.identity import volume_identity
from .form import choice_titles, entries_from_form, form_from_entries
from .session import FormStep, StudySession, open_store
from .store import Assignment, StudyStore, WashoutError

__all__ = ["POINTS_NAME", "SceneReading"]

POINTS_NAME = "Study points"


class SceneReading:
    """One reader's study session in a scene. Signed out until :meth:`sign_in`.

    :param clock: the store's clock (tests step a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.store: StudyStore | None = None
        self.session: StudySession | None = None
        self.volume = None  # the current case's CT (vtkMRMLScalarVolumeNode)
        self.markups = None  # its points (vtkMRMLMarkupsFiducialNode)
        self.message = "Pick the study file and its database, then sign in with your token."

    # Signing in and cases ------------------------------------------------------------------
    @property
    def signed_in(self) -> bool:
        return self.session is not None

    def sign_in(self, study_file: str | Path, db_path: str | Path, token: str) -> Assignment | None:
        """Open the study (checking that the database is this study file's), sign the reader in
        and open their next case.

        :raises FileNotFoundError, StudyFileError, ValueError: the study file or database.
        :raises PermissionError: a token the store does not know.
        """
        if not str(study_file).strip() or not str(db_path).strip():
            raise ValueError("pick the study file and its database first")
        store = open_store(study_file, db_path, clock=self.clock)
        session = StudySession(store, str(token).strip())
        self.close_case()
        self.store, self.session = store, session
        return self.open_next()

    def open_next(self) -> Assignment | None:
        """Load the reader's next step; ``None`` when every case is done or the washout runs
        (:attr:`message` says which, or names the CT that did not load)."""
        session = self._session()
        previous = session.assignment
        try:
            assignment = session.open_next()
        except WashoutError as exc:
            self.close_case()
            self.message = f"{exc}; sign in again then."
            return None
        if assignment is None:
            self.close_case()
            self.message = "Every case is rated. Thank you."
            return None
        if previous is None or previous.case != assignment.case or self.volume is None:
            self._load(assignment)
        if not session.load_error:
            self.message = self._case_line(assignment)
        return assignment

    def _load(self, assignment: Assignment) -> None:
        self.close_case()
        try:
            self.volume = load_ct_volume(assignment.ct_path, assignment.case, check_ct=True)
        except CTLoadError as exc:
            self.session.ct_failed(str(exc))
            self.message = f"Case {assignment.case}: {exc} Skip it to go on."
            return
        scene = self.volume.GetScene()
        self.markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", POINTS_NAME)
        self.markups.CreateDefaultDisplayNodes()
        for point in assignment.points:
            self.markups.AddControlPoint(*lps_to_ras(point["point"]), point["name"])
        if assignment.points:  # the slice views through the case's (first) nodule
            import slicer

            ras = lps_to_ras(assignment.points[0]["point"])
            slicer.vtkMRMLSliceNode.JumpAllSlices(
                scene, *map(float, ras), slicer.vtkMRMLSliceNode.DefaultJumpSlice
            )

    def close_case(self) -> None:
        """Remove the case's CT and point list from the scene (analysis outputs stay)."""
        for node in (self.markups, self.volume):
            if node is not None and node.GetScene() is not None:
                node.GetScene().RemoveNode(node)
        self.volume = self.markups = None

    # What the panel shows ------------------------------------------------------------------
    @property
    def model_visible(self) -> bool:
        """Whether the model's output may be shown now (outside a study: always)."""
        return self.session is None or self.session.model_visible()

    @property
    def can_submit(self) -> bool:
        """A case is open and its CT loaded: the form can be filled and committed."""
        return (
            self.session is not None and self.session.assignment is not None and not self.can_skip
        )

    @property
    def can_skip(self) -> bool:
        """Only a case whose CT did not load can be skipped."""
        return self.session is not None and bool(self.session.load_error)

    @property
    def fields(self) -> list[dict]:
        """The rating form's fields (``study/form.py``); empty until signed in."""
        return [] if self.session is None else self.session.fields

    @staticmethod
    def choice_titles(field: dict) -> list[str]:
        return choice_titles(field)

    def start_entries(self) -> dict:
        """The form's start entries (drop-down indexes and texts): empty, or at the sequential
        aided step the reader's locked unaided rating."""
        session = self._session()
        return entries_from_form(session.fields, session.initial_values())

    def progress_text(self) -> str:
        if self.session is None:
            return "Not signed in."
        p = self.session.progress()
        skipped = sum(p["skipped"].values())
        more = f" ({skipped} skipped)" if skipped else ""
        return f"Reader {self.session.reader}: {p['done']} of {p['total']} steps done{more}."

    # Acting ----------------------------------------------------------------------------------
    @property
    def step(self) -> FormStep | None:
        """The step shown now (case, modality, nonce; None: nothing to rate or skip): the panel
        keeps the one its form was built for and hands it back with a submit or skip."""
        if self.session is None or self.session.assignment is None:
            return None
        return self.session.step

    def submit(self, entries: Mapping, step: FormStep | Mapping | None) -> Assignment | None:
        """Commit the rating of the step ``step`` names (the one the form was built for, see
        :attr:`step`) from the form's entries (a drop-down's index, a text box's text), with the
        shown CT's identity, and open the next step. The rating is locked once this returns.

        Why the step: the second click of a double click reaches the panel after the first
        opened the next step; without it the same entries were stored as the next step's rating
        (issue 28). A step that is not the one open now (``None`` included) raises
        :class:`~.session.StaleFormError` and nothing is written.
        """
        session = self._session()
        session.submit(
            form_from_entries(session.fields, entries),
            FormStep.from_value(step),
            volume_identity(self.volume),
        )
        return self.open_next()

    def skip(self, step: FormStep | Mapping | None) -> Assignment | None:
        """Skip the current case, whose CT did not load (recorded with the message), and open
        the next step; ``step`` as for :meth:`submit` (a repeated skip must not skip the next
        case too)."""
        self._session().skip(FormStep.from_value(step))
        return self.open_next()

    def _session(self) -> StudySession:
        if self.session is None:
            raise AccessDeniedError("sign in with your reader token first")
        return self.session

    def _case_line(self, a: Assignment) -> str:
        hidden = (
            " The model may be shown (Analyze)."
            if self.model_visible
            else " The model's output is hidden until you commit."
        )
        return (
            f"Case {a.order_index + 1} of {a.total} ({a.case}), {a.modality} reading, "
            f"session {a.session}.{hidden}"
        )
