"""A submit names what it answers (issue 28, finding 1): case, step and the form's nonce.

Why: the station applied a submit to whatever step was current when it arrived, so a
double-click on "Commit rating" stored the unaided rating again as the aided one (0.9 s,
model_visible=1) although the reader never saw the model. These tests hold the session's
rules without a browser; ``test_study_serve.py`` repeats the attacks through the running
``study serve`` address.
"""

from __future__ import annotations

import pytest
from study_files import sequential_study

from NoduleMalignancyLib.study.session import FormStep, StaleFormError, StudySession

FORM = {"malignancy": 4, "confidence": 70}


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def session(tmp_path):
    """A signed-in reader of a two-case sequential study whose first step is open."""
    clock = Clock()
    _, owner, store = sequential_study(tmp_path, 2, clock=clock)
    token = store.add_reader(owner, "alice")
    session = StudySession(store, token)
    session.open_next()
    session.clock = clock
    return session


def ratings(session) -> list[tuple[str, str]]:
    return [(r["case"], r["modality"]) for r in session.store.my_ratings(session.token)]


def test_a_double_click_commits_once_at_the_step_shown(session):
    shown = session.step
    assert shown.modality == "unaided" and shown.nonce
    session.submit(FORM, shown.to_dict())
    with pytest.raises(StaleFormError, match="already committed|no step is open"):
        session.submit(FORM, shown.to_dict())  # the second click, before the next step opens
    session.open_next()
    with pytest.raises(StaleFormError, match=f"case {shown.case} \\(unaided\\).*aided"):
        session.submit(FORM, shown.to_dict())  # ... or after it
    assert ratings(session) == [(shown.case, "unaided")]
    assert session.step.case == shown.case and session.step.modality == "aided"


def test_three_submits_of_one_form_give_one_rating(session):
    shown = session.step.to_dict()
    outcomes = []
    for _ in range(3):
        try:
            session.submit(FORM, shown)
            outcomes.append("committed")
        except StaleFormError:
            outcomes.append("refused")
        if session.step is None:  # committed: the page opens the next step
            session.open_next()
    assert outcomes == ["committed", "refused", "refused"]
    assert ratings(session) == [(shown["case"], "unaided")]


@pytest.mark.parametrize(
    "named",
    [
        {},
        {"case": "c0", "modality": "unaided"},
        {"case": "c0", "modality": "unaided", "nonce": 7},
    ],
)
def test_a_submit_that_does_not_name_its_form_is_refused(session, named):
    with pytest.raises(StaleFormError):
        session.submit(FORM, named)
    assert ratings(session) == []


def test_a_forged_nonce_is_refused(session):
    forged = FormStep(session.step.case, session.step.modality, "guessed")
    with pytest.raises(StaleFormError, match="already committed or replaced"):
        session.submit(FORM, forged)
    assert ratings(session) == []


def test_reading_time_runs_from_when_the_step_was_shown(session):
    """The aided step's time starts when the page shows it, not at the unaided commit."""
    clock = session.clock
    clock.t += 30
    session.submit(FORM, session.step)
    clock.t += 600  # the reader's station was restarted: the aided step is shown 10 min later
    session.open_next()
    clock.t += 12
    session.submit(FORM, session.step)
    times = {r["modality"]: r["reading_time_s"] for r in session.store.my_ratings(session.token)}
    assert times == {"unaided": 30.0, "aided": 12.0}
