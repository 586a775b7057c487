"""The station in reading-study mode: token sign-in, the reader's next case, the rating form.

Why a subclass of the single-CT page: the views, the analysis and the results panel are the
same; the study adds a panel above them and decides, through the store, which case is shown
and whether the model's output may be (docs/DESIGN.md §14, §15). The rules live in
``study/store.py`` and ``study/session.py``; this module only wires them to the page.

One process serves one reader at a time: trame's state is shared by every browser connected
to the same server, so each reader gets their own station (own port).
"""

from __future__ import annotations

from pathlib import Path

from ..mrml.ct_loading import CTLoadError
from ..study.form import rating_form
from ..study.ratings import RatingError
from ..study.session import StudySession, open_store
from ..study.store import StudyStateError, WashoutError
from .app import StationApp

__all__ = ["StudyStationApp"]

# Reads ?token= once, hands it to the server, and removes it from the address bar.
_TOKEN_FROM_URL = """
(function () {
  const params = new URLSearchParams(window.location.search);
  const token = params.get('token');
  if (!token) { return; }
  window.history.replaceState(null, '', window.location.pathname);
  const send = () => (window.trame && window.trame.state)
    ? window.trame.state.set('url_token', token) : setTimeout(send, 100);
  send();
})();
"""


class StudyStationApp(StationApp):
    """The station for one reader of a study (``--study FILE --db PATH``)."""

    def __init__(self, study_file: str | Path, db_path: str | Path, **kwargs):
        self.store = open_store(study_file, db_path)
        self.session: StudySession | None = None
        self.fields = rating_form(self.store.required)
        super().__init__(**kwargs)
        self.controller.model_allowed = False
        self.controller.set_status("empty", "Sign in with your reader token.")
        state = self.server.state
        state.trame__title = f"Reading study {self.store.name}".strip()
        state.study = self._study_state()
        state.form_fields = self.fields
        state.form = {}
        state.token_input = ""
        state.url_token = ""
        state.change("url_token")(self._on_url_token)
        self.server.controller.trigger("study_sign_in")(self.sign_in)
        self.server.controller.trigger("study_skip")(self.skip)
        self._push()

    # Sign-in and cases -----------------------------------------------------------------------
    def _on_url_token(self, url_token, **_):
        if url_token:
            self.sign_in(url_token)

    def sign_in(self, token: str | None = None) -> bool:
        """Start the reader's session and open their next case; ``False`` for a wrong token."""
        token = (token or self.server.state.token_input or "").strip()
        try:
            self.session = StudySession(self.store, token)
        except PermissionError as exc:
            self._study_error(str(exc))
            return False
        self.server.state.token_input = ""
        self._open_next()
        return True

    def _open_next(self) -> None:
        previous = self.session.assignment
        try:
            assignment = self.session.open_next()
        except WashoutError as exc:  # come back later: the message says when
            self.controller.close_ct()
            self.controller.set_status("empty", str(exc))
            self._push_study(str(exc))
            return
        if assignment is None:
            self.controller.close_ct()
            self.controller.set_status("done", "Every case is rated. Thank you.")
            self._push_study()
            return
        visible = self.session.model_visible()
        self.controller.model_allowed = visible
        same_case = previous is not None and previous.case == assignment.case
        if same_case and self.controller.volume is not None:
            if visible:  # the sequential design's aided step: the model appears now
                self.controller.analyze()
        else:
            try:
                self.load(assignment.ct_path, assignment.case, check_ct=True)
            except CTLoadError as exc:  # the reader may skip the case (recorded with this)
                self.session.ct_failed(str(exc))
                self.controller.close_ct()
                self.controller.set_status("error", f"Case {assignment.case}: {exc}")
                self._push_study()
                return
            ids = [self.controller.add_point_lps(p["point"], p["name"]) for p in assignment.points]
            if ids:  # the views through the case's (first) nodule
                self.controller.select(ids[0])
            if not visible:
                self.controller.set_status(
                    "ready", "Rate this nodule; the model is hidden for now."
                )
        self.server.state.form = self.session.initial_values()
        self._push_study()

    def submit(self, values: dict | None = None) -> bool:
        """Commit the current step's rating (the form's values) and open the next step."""
        if self.session is None:
            self._study_error("Sign in first.")
            return False
        try:
            self.session.submit(values if values is not None else self.server.state.form)
        except (RatingError, StudyStateError, ValueError) as exc:
            self._study_error(str(exc))
            return False
        self._open_next()
        return True

    def skip(self) -> bool:
        """Skip the current case, whose CT did not load, and open the next step."""
        if self.session is None:
            self._study_error("Sign in first.")
            return False
        try:
            self.session.skip()
        except (StudyStateError, ValueError) as exc:
            self._study_error(str(exc))
            return False
        self._open_next()
        return True

    # State -----------------------------------------------------------------------------------
    def _study_state(self, error: str = "") -> dict:
        snapshot = self.session.snapshot() if self.session is not None else {}
        return {
            "name": self.store.name,
            "design": self.store.design,
            "signed_in": self.session is not None,
            "error": error,
            **snapshot,
        }

    def _study_error(self, message: str) -> None:
        with self.server.state as state:
            state.study = self._study_state(message)

    def _push_study(self, error: str = "") -> None:
        with self.server.state as state:
            state.study = self._study_state(error)
        self._push()

    # Page ------------------------------------------------------------------------------------
    def _drawer_top(self) -> None:
        from trame.widgets import client, html
        from trame.widgets import vuetify3 as v3

        client.Script(_TOKEN_FROM_URL)
        with html.Div(id="study-panel", classes="mb-3"):
            html.Div("Reading study {{ study.name }} ({{ study.design }})", classes="text-overline")
            with html.Div(v_if="!study.signed_in"):
                v3.VTextField(
                    v_model=("token_input", ""),
                    label="Reader token",
                    type="password",
                    density="compact",
                    id="study-token",
                )
                v3.VBtn("Sign in", click=self.sign_in, color="primary", id="study-sign-in")
            with html.Div(v_if="study.signed_in"):
                html.Div(
                    "Reader {{ study.reader }}: {{ study.progress.done }} of "
                    "{{ study.progress.total }} steps done"
                    "{{ study.progress.skipped.unaided + study.progress.skipped.aided "
                    "? ' (' + (study.progress.skipped.unaided + study.progress.skipped.aided) "
                    "+ ' skipped)' : '' }}",
                    id="study-progress",
                )
                v3.VProgressLinear(
                    model_value=("100 * study.progress.done / study.progress.total",),
                    color="primary",
                    classes="my-1",
                )
                with html.Div(v_if="study.case", id="study-case"):
                    html.Div(
                        "Case {{ study.case.order_index + 1 }} of {{ study.case.total }} "
                        "({{ study.case.case }}), {{ study.case.modality }} reading, "
                        "session {{ study.case.session }}",
                        classes="text-subtitle-2",
                    )
                    with html.Div(v_if="study.load_error", id="study-load-error"):
                        v3.VAlert(
                            text=("study.load_error",),
                            type="warning",
                            density="compact",
                            classes="my-2",
                        )
                        v3.VBtn(
                            "Skip this case (recorded with the message)",
                            click=self.skip,
                            color="warning",
                            id="study-skip",
                        )
                    with html.Div(v_if="!study.load_error"):
                        html.Div(
                            "The model's output is hidden until this rating is committed.",
                            v_if="!study.case.model_visible",
                            classes="text-caption",
                        )
                        self._form()
                html.Div(
                    "Every case is rated. Thank you.",
                    v_if="!study.case && study.progress.finished",
                    id="study-finished",
                )
            v3.VAlert(
                v_if="study.error",
                text=("study.error",),
                type="error",
                density="compact",
                classes="mt-2",
                id="study-error",
            )

    def _form(self) -> None:
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        with html.Div(v_for="f in form_fields", key="f.name", classes="study-field"):
            label = ("f.label + (f.required ? ' *' : '')",)
            v3.VSelect(
                v_if="f.kind === 'scale' || f.kind === 'choice'",
                v_model="form[f.name]",
                items=("f.choices",),
                item_title="title",
                item_value="value",
                label=label,
                clearable=True,
                density="compact",
                hide_details=True,
                classes="mb-1",
            )
            v3.VTextField(
                v_if="f.kind === 'number'",
                v_model="form[f.name]",
                type="number",
                min=("f.min",),
                max=("f.max",),
                label=label,
                density="compact",
                hide_details=True,
                classes="mb-1",
            )
            v3.VTextarea(
                v_if="f.kind === 'text'",
                v_model="form[f.name]",
                label=label,
                rows=2,
                density="compact",
                hide_details=True,
                classes="mb-1",
            )
        v3.VBtn(
            "Commit rating (locks it)",
            click=(self.submit, "[form]"),
            color="primary",
            classes="mt-2",
            id="study-submit",
        )
