"""The grading queue's promises, on SQLite and on PostgreSQL (pgserver), with a fake grader.

No kernel runs here: the grader is replaced by a recorder (the one adapter makes that
possible), so the queue's logic is checked fast: each submission graded exactly once, never
two of one student's submissions of one assignment at once, work left ``grading`` by a crash
redone at start, a regrade asked during a grading honoured after it, stored bytes checked
against their checksum, and the hourly limit.
"""

import threading
import time
import warnings

import pytest
from sqlalchemy import select

from dnncourse.grading.protocol import Check, Result, Status
from dnncourse.service.config import ServiceConfig
from dnncourse.service.jobs import Jobs, RateLimited
from dnncourse.service.models import GRADED, GRADING, Assignment, Submission, User, open_db

NB = "hw1_polynomial_gradients.ipynb"


class FakeGrader:
    """Records what it grades; fails the test if a student is graded twice at once."""

    def __init__(self, seconds: float = 0.05):
        self.seconds, self.calls, self.active = seconds, [], set()
        self.lock, self.overlap = threading.Lock(), []
        self.gate = threading.Event()
        self.gate.set()

    def grade(self, assignment, student, files, version=1) -> Result:
        with self.lock:
            if (student, assignment) in self.active:
                self.overlap.append(student)
            self.active.add((student, assignment))
            self.calls.append((student, files[NB], version))
        self.gate.wait(30)
        if files[NB] == b"crash" and sum(c[1] == b"crash" for c in self.calls) == 1:
            return Result(student, assignment, Status.GRADER_ERROR, 0.0, 10.0, "worker died")
        time.sleep(self.seconds)
        with self.lock:
            self.active.discard((student, assignment))
        score = float(len(files[NB]) % 11)
        check = Check(NB[:-6], "test_a", score, 10.0, score == 10.0, "" if score == 10 else "no")
        return Result(student, assignment, Status.OK, score, 10.0, checks=(check,))

    def warm(self, assignment, version=1):
        pass

    def close(self):
        pass


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'service.db'}"
        return
    pgserver = pytest.importorskip(
        "pgserver",
        reason="pgserver has no wheel for this Python (the lock installs it below 3.13)",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri().replace("postgresql://", "postgresql+psycopg://")
    server.cleanup()


@pytest.fixture
def setup(db_url, tmp_path):
    sessions = open_db(db_url)
    with sessions() as db:  # a clean slate per test (the database is the module's)
        for table in (Submission, Assignment, User):
            for row in db.scalars(select(table)):
                db.delete(row)
            db.commit()
        db.add(Assignment(name="hw1", per_hour=3, policy="last"))
        for login in ("ann", "ben", "cal"):
            db.add(User(login=login))
        db.commit()
    grader = FakeGrader()
    config = ServiceConfig(data=tmp_path, root=tmp_path, db_url=db_url, jobs=3, poll_seconds=0.1)
    jobs = Jobs(config, sessions, grader)
    yield sessions, jobs, grader
    jobs._stop.set()
    jobs._wake.set()
    for thread in jobs._threads:
        thread.join(timeout=10)


def hand_in(sessions, jobs, login: str, data: bytes) -> int:
    with sessions() as db:
        user = db.scalar(select(User).where(User.login == login))
        return jobs.submit(db, user, db.get(Assignment, "hw1"), {NB: data}).id


def wait_graded(sessions, ids, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as db:
            subs = [db.get(Submission, i) for i in ids]
            if all(s.state == GRADED for s in subs):
                return {s.id: s for s in subs}
        time.sleep(0.05)
    raise TimeoutError(ids)


def test_each_submission_is_graded_once_and_a_student_one_at_a_time(setup):
    sessions, jobs, grader = setup
    ids = [
        hand_in(sessions, jobs, login, b"x" * n)
        for n in (10, 5)
        for login in ("ann", "ben", "cal")
    ]
    jobs.start()
    subs = wait_graded(sessions, ids)
    assert sorted(data for _, data, _ in grader.calls) == sorted(
        b"x" * n for n in (10, 5) for _ in range(3)
    )
    assert len(grader.calls) == 6 and grader.overlap == []
    assert all(s.finished == 1 and s.attempts == 1 for s in subs.values())
    assert {s.score for s in subs.values()} == {10.0, 5.0}
    assert all(s.checks[0]["name"] == "test_a" for s in subs.values())


def test_a_grading_interrupted_by_a_crash_is_redone_at_start(setup):
    sessions, jobs, grader = setup
    first = hand_in(sessions, jobs, "ann", b"y" * 10)
    with sessions() as db:  # what a SIGKILL during its grading leaves behind
        sub = db.get(Submission, first)
        sub.state, sub.attempts = GRADING, 1
        db.commit()
    jobs.start()
    sub = wait_graded(sessions, [first])[first]
    assert (sub.attempts, sub.finished, sub.score) == (2, 1, 10.0)
    assert len(grader.calls) == 1


def test_a_grader_error_is_tried_once_more(setup):
    sessions, jobs, grader = setup
    sub_id = hand_in(sessions, jobs, "cal", b"crash")
    jobs.start()
    sub = wait_graded(sessions, [sub_id])[sub_id]
    assert (sub.attempts, sub.finished, sub.status) == (2, 1, Status.OK)
    assert len(grader.calls) == 2


def test_a_regrade_asked_during_a_grading_runs_after_it(setup):
    sessions, jobs, grader = setup
    grader.gate.clear()  # hold the grading
    sub_id = hand_in(sessions, jobs, "ben", b"z" * 10)
    jobs.start()
    deadline = time.monotonic() + 30
    while not grader.calls:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with sessions() as db:
        assert jobs.regrade(db, db.get(Assignment, "hw1"), [sub_id]) == 1
    grader.gate.set()
    deadline = time.monotonic() + 30
    while len(grader.calls) < 2 or wait_graded(sessions, [sub_id])[sub_id].finished < 2:
        assert time.monotonic() < deadline, grader.calls
        time.sleep(0.05)
    assert [version for *_, version in grader.calls] == [1, 2]  # the new tests the 2nd time


def test_stored_bytes_are_checked_before_grading(setup):
    sessions, jobs, grader = setup
    sub_id = hand_in(sessions, jobs, "cal", b"w" * 10)
    with sessions() as db:
        folder = db.get(Submission, sub_id).folder
    (jobs.store / folder / NB).write_bytes(b"tampered!!")
    jobs.start()
    sub = wait_graded(sessions, [sub_id])[sub_id]
    assert sub.status == Status.GRADER_ERROR and "checksum" in sub.detail
    assert grader.calls == []


def test_the_hourly_limit_counts_hand_ins_and_says_when(setup):
    sessions, jobs, _ = setup
    for _ in range(3):
        hand_in(sessions, jobs, "ann", b"v")
    with pytest.raises(RateLimited, match=r"limit is 3 per hour.*again at \d\d:\d\d UTC"):
        hand_in(sessions, jobs, "ann", b"v")
    hand_in(sessions, jobs, "ben", b"v")  # another student is not limited
    with sessions() as db:
        assert len(db.scalars(select(Submission)).all()) == 4
