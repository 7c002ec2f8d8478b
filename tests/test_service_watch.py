"""The submission page hears of its feedback the moment it is stored (a long poll), in
process: the service's application with Starlette's TestClient, the queue not started.

The page asks for its submission's JSON naming the view it shows (``since``, the view's
tag) and a ``wait``; the queue wakes the request when the submission changes. The test
finishes a grading while a long poll waits and times the answer; the control takes the
queue's wake-up away and sees the answer come only at the end of the wait. Bad ``wait``
values get an answer at once, never an error.
"""

import threading
import time
import warnings

import pytest
from sqlalchemy import select, update

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from service_harness import CSRF, HW, NAME, ROOT

from dnncourse.grading.protocol import Check, Result, Status
from dnncourse.service import auth
from dnncourse.service.app import create_app
from dnncourse.service.config import ServiceConfig
from dnncourse.service.models import GRADING, Assignment, Submission, User

PASSWORD = "alice hands in notebooks"
WAIT = 6.0  # the long poll's wait: far longer than an answer on a change takes


@pytest.fixture
def handed_in(tmp_path):
    """The app, alice signed in, and her submission (queued: the queue does not run)."""
    app = create_app(ServiceConfig(data=tmp_path / "data", root=ROOT, assignments=[HW]))
    service = app.state.service
    with service.sessions() as db:
        alice = User(login="alice", name="Alice", password_hash=auth.hash_password(PASSWORD))
        db.add(alice)
        db.commit()
        sub = service.jobs.submit(db, alice, db.get(Assignment, HW), {f"{NAME}.ipynb": b"{}"})
        sub_id = sub.id
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = TestClient(app, follow_redirects=False)
    token = CSRF.search(c.get("/login").text).group(1)
    r = c.post("/login", data={"login": "alice", "password": PASSWORD, "csrf": token})
    assert r.status_code == 303
    return service, c, sub_id


def _graded_while_waiting(service, c, sub_id) -> tuple[dict, float]:
    """Long-poll the view "grading"; 0.5 s in, the queue stores the result. Returns the
    answer and how long after the result was stored it came."""
    with service.sessions() as db:  # the queue's claim (its own statement, as _claim does)
        db.execute(update(Submission).where(Submission.id == sub_id).values(state=GRADING))
        db.commit()
    view = c.get(f"/submissions/{sub_id}.json").json()
    assert view["state"] == "grading"
    stored = []

    def grade():
        time.sleep(0.5)
        check = Check(NAME, "test_a", 3.0, 3.0, True, "")
        result = Result("alice", HW, Status.OK, 3.0, 3.0, checks=(check,), feedback={NAME: "<p>"})
        service.jobs._finish(sub_id, result)
        stored.append(time.monotonic())

    thread = threading.Thread(target=grade)
    thread.start()
    answer = c.get(f"/submissions/{sub_id}.json", params={"since": view["tag"], "wait": WAIT})
    heard = time.monotonic()
    thread.join()
    assert answer.status_code == 200
    return answer.json(), heard - stored[0]


def test_the_page_hears_of_the_feedback_as_it_is_stored(handed_in):
    service, c, sub_id = handed_in
    view, late = _graded_while_waiting(service, c, sub_id)
    assert view["state"] == "graded" and view["score"] == 3.0
    assert late < 1.0, f"the answer came {late:.2f} s after the feedback was stored"


def test_without_the_queue_s_wake_up_the_answer_waits_control(handed_in, monkeypatch):
    service, c, sub_id = handed_in
    monkeypatch.setattr(type(service.jobs.changed), "__call__", lambda *args, **kwargs: None)
    view, late = _graded_while_waiting(service, c, sub_id)
    assert view["state"] == "graded"  # read again at the end of the wait
    assert late > WAIT - 0.5 - 1.0


def test_a_long_poll_answers_a_changed_view_at_once_and_bad_waits_plainly(handed_in):
    service, c, sub_id = handed_in
    url = f"/submissions/{sub_id}.json"
    start = time.monotonic()
    view = c.get(url, params={"since": "not-the-tag", "wait": WAIT}).json()
    assert view["state"] == "queued" and time.monotonic() - start < WAIT / 2
    for wait in ("abc", "nan", "-1", "inf", "0", ""):
        start = time.monotonic()
        r = c.get(url, params={"since": view["tag"], "wait": wait})
        assert r.status_code == 200 and r.json()["tag"] == view["tag"], wait
        assert time.monotonic() - start < WAIT / 2, wait
    with service.sessions() as db:  # another's submission: "not found", not a wait
        bob = User(login="bob", name="Bob")
        db.add(bob)
        db.commit()
        other = service.jobs.submit(db, bob, db.get(Assignment, HW), {f"{NAME}.ipynb": b"{}"})
        assert db.scalar(select(Submission.state).where(Submission.id == other.id)) == "queued"
    r = c.get(f"/submissions/{other.id}.json", params={"since": "x", "wait": WAIT})
    assert r.status_code == 404 and "error" in r.json()
