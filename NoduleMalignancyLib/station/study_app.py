"""The station in reading-study mode: token sign-in, the reader's next case, the rating form.

Why a subclass of the single-CT page: the views, the analysis and the results panel are the
same; the study adds a panel above them and decides, through the store, which case is shown
and whether the model's output may be (docs/DESIGN.md §14, §15). The rules live in
``study/store`` and ``study/session.py``; this module only wires them to the page.

One process serves one reader: trame's state is shared by every browser connected to the same
server, so the first reader who signs in owns the process (another reader's token is refused)
and only the connection they signed in on may act (``study serve`` starts one such process per
reader, already signed in). The token never enters the shared state: the page hands it to the
sign-in trigger and forgets it. Every submit names its case, step and form nonce
(``study.session.FormStep``): a double-click or a repeat is refused, never stored as the next
step's rating. A failure the reader must know about (a read-only or full database, a revoked
token) is said on the page: "rating NOT saved: <reason>", the form kept.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from ..mrml.ct_loading import CTLoadError
from ..study.form import rating_form
from ..study.ratings import RatingError
from ..study.session import StaleFormError, StudySession, open_store
from ..study.store import StudyStateError, StudyStore, WashoutError
from .access import current_client
from .app import StationApp

__all__ = ["StudyStationApp"]

# Reads ?token= once, hands it to the sign-in trigger (never to the shared state) and removes
# it from the address bar.
_TOKEN_FROM_URL = """
(function () {
  const params = new URLSearchParams(window.location.search);
  const token = params.get('token');
  if (!token) { return; }
  window.history.replaceState(null, '', window.location.pathname);
  const send = () => (window.trame && window.trame.state)
    ? window.trame.trigger('study_sign_in', [token]) : setTimeout(send, 100);
  send();
})();
"""

# What the store's database can fail with while a reader works (read-only, full, locked, gone).
_STORAGE_ERRORS = (sqlite3.Error, OSError)
TOKEN_CHECK_S = 5.0  # how often an idle page checks that its reader's token still works


class StudyStationApp(StationApp):
    """The station for one reader of a study (``--study FILE --db PATH``).

    :param study_file: the study file (checked against the database); ``None``: the study the
        database records (``study serve``).
    :param reader_token: sign this reader in now and serve only them (``study serve``).
    """

    def __init__(
        self,
        study_file: str | Path | None,
        db_path: str | Path,
        *,
        reader_token: str | None = None,
        **kwargs,
    ):
        self.store = open_store(study_file, db_path) if study_file else StudyStore(db_path)
        self.session: StudySession | None = None
        self._shown: dict = {}  # the session's last snapshot (kept while the database fails)
        self.reader: str | None = None  # the reader this process serves, once one signed in
        self.client: str | None = None  # the connection they signed in on (None: any)
        self.fields = rating_form(self.store.required)
        super().__init__(**kwargs)
        self.controller.model_allowed = False
        self.controller.set_status("empty", "Sign in with your reader token.")
        state = self.server.state
        state.trame__title = f"Reading study {self.store.name}".strip()
        state.study = self._study_state()
        state.form_fields = self.fields
        state.form = {}
        state.committing = False
        state.token_input = ""
        state.client_only("token_input")  # a typed token stays in the page
        ctrl = self.server.controller
        ctrl.trigger("study_sign_in")(self.sign_in)
        ctrl.trigger("study_submit")(self._submit_from_page)
        ctrl.trigger("study_skip")(self._skip_from_page)
        ctrl.on_server_ready.add(lambda **_: asyncio.ensure_future(self._watch_token()))
        if reader_token is not None and not self.sign_in(reader_token):
            raise PermissionError(self.server.state.study["error"])
        self._push()

    # Sign-in and cases -----------------------------------------------------------------------
    def sign_in(self, token: str | None = None) -> bool:
        """Start the reader's session and open their next case; ``False`` for a wrong token or
        another reader than the one this station serves."""
        token = (token if isinstance(token, str) else "").strip()
        try:
            session = StudySession(self.store, token)
        except PermissionError as exc:
            self._study_error(str(exc))
            return False
        except _STORAGE_ERRORS as exc:
            self._study_error(f"cannot sign in: the study database failed ({exc})")
            return False
        if self.reader is not None and session.reader != self.reader:
            self._study_error(f"this station serves reader {self.reader}; sign in on your own link")
            return False
        self.reader, self.session = session.reader, session
        self.client = current_client(self.server)
        self._open_next()
        return True

    def _caller_refused(self) -> bool:
        """Whether the running call comes from another connection than the signed-in one."""
        if self.session is None:
            self._study_error("Sign in first.")
            return True
        caller = current_client(self.server)
        if self.client is not None and caller is not None and caller != self.client:
            self._study_error("this reading is signed in on another page")
            return True
        return False

    async def _watch_token(self) -> None:
        """Sign out within :data:`TOKEN_CHECK_S` of the owner revoking or resetting the token,
        also while the reader does nothing (the page says so)."""
        while True:
            await asyncio.sleep(TOKEN_CHECK_S)
            if self.session is None:
                continue
            try:
                self.session.progress()
            except PermissionError as exc:
                self._signed_out(str(exc))
            except _STORAGE_ERRORS:  # said when the reader acts
                pass

    def _signed_out(self, reason: str) -> None:
        """The token stopped working (revoked or reset by the owner): sign out, say why."""
        self.session, self.client = None, None
        self.controller.model_allowed = False
        self.controller.close_ct()
        self.controller.set_status("empty", "Signed out.")
        self._push_study(f"signed out: {reason}")

    def _open_next(self) -> None:
        previous = self.session.assignment
        try:
            assignment = self.session.open_next()
        except WashoutError as exc:  # come back later: the message says when
            self.controller.close_ct()
            self.controller.set_status("empty", str(exc))
            self._push_study(str(exc))
            return
        except PermissionError as exc:
            self._signed_out(str(exc))
            return
        except _STORAGE_ERRORS as exc:
            self.controller.close_ct()
            self.controller.set_status("error", f"The study database failed: {exc}")
            self._push_study(f"cannot open the next case: the study database failed ({exc})")
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

    def submit(self, values: dict | None = None, step=None) -> bool:
        """Commit the rating of the step ``step`` names (the form's case, step and nonce) and
        open the next step. A repeat, or a form of another step, is refused with a message."""
        try:
            if self._caller_refused():
                return False
            try:
                self.session.submit(
                    values if values is not None else self.server.state.form,
                    step if step is not None else self.session.step,
                    self.controller.identity,  # the CT shown, kept with the rating
                )
            except (RatingError, StudyStateError, ValueError) as exc:
                prefix = "" if isinstance(exc, StaleFormError) else "rating NOT saved: "
                self._study_error(f"{prefix}{exc}")
                return False
            except PermissionError as exc:
                self._signed_out(f"rating NOT saved: {exc}")
                return False
            except _STORAGE_ERRORS as exc:
                self._study_error(f"rating NOT saved: the study database failed ({exc})")
                return False
            self._open_next()
            return True
        finally:
            self._committed()

    def _submit_from_page(self, values=None, step=None) -> bool:
        """The page's submit: it must name its step (``None`` is refused, not "the current")."""
        return self.submit(values if isinstance(values, dict) else {}, step or {})

    def _skip_from_page(self, step=None) -> bool:
        return self.skip(step or {})

    def skip(self, step=None) -> bool:
        """Skip the current case, whose CT did not load, and open the next step."""
        try:
            if self._caller_refused():
                return False
            try:
                self.session.skip(step)
            except (StudyStateError, ValueError) as exc:
                self._study_error(str(exc))
                return False
            except PermissionError as exc:
                self._signed_out(str(exc))
                return False
            except _STORAGE_ERRORS as exc:
                self._study_error(f"skip NOT saved: the study database failed ({exc})")
                return False
            self._open_next()
            return True
        finally:
            self._committed()

    def _committed(self) -> None:
        """Enable the commit button again (the page disabled it on the click; pushed even when
        the server never saw it set)."""
        with self.server.state as state:
            state.committing = False
            state.dirty("committing")

    # State -----------------------------------------------------------------------------------
    def _study_state(self, error: str = "") -> dict:
        snapshot = {}
        if self.session is not None:
            try:
                snapshot = self._shown = self.session.snapshot()
            except PermissionError as exc:  # revoked while signed in
                self.session, self.client = None, None
                error = f"signed out: {exc}"
            except _STORAGE_ERRORS as exc:  # the page keeps what it showed, the form too
                snapshot = self._shown
                error = error or f"the study database failed ({exc})"
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
                    v_model="token_input",
                    label="Reader token",
                    type="password",
                    density="compact",
                    id="study-token",
                )
                v3.VBtn(
                    "Sign in",
                    click="trigger('study_sign_in', [token_input]); token_input = ''",
                    color="primary",
                    id="study-sign-in",
                )
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
                            click="committing = true; trigger('study_skip', [study.step])",
                            disabled=("committing",),
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
            click="committing = true; trigger('study_submit', [form, study.step])",
            disabled=("committing || !study.step",),
            color="primary",
            classes="mt-2",
            id="study-submit",
        )
