"""The grading queue's promises, on SQLite and on PostgreSQL (pgserver), with a fake grader.

No kernel runs here: the grader is replaced by a recorder (the one adapter makes that
possible), so the queue's logic is checked fast: each submission graded exactly once, never
two of one student's submissions of one assignment at once, work left ``grading`` by a crash
redone at start, a regrade asked during a grading honoured after it (the grade staying on
its previous value meanwhile), stored bytes checked against their checksum, the hourly limit,
and fairness: one student holds no more than a fair share of the graders (with a control:
the old queue let them hold all), the order interleaves students, a student sees their
position.
"""

import threading
import time
import warnings
from collections import Counter, namedtuple
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from dnncourse.grading.protocol import Check, Result, Status
from dnncourse.service import grades
from dnncourse.service import jobs as jobs_module
from dnncourse.service.config import ServiceConfig
from dnncourse.service.grader import Graded
from dnncourse.service.jobs import Jobs, RateLimited, fair_order
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

    def run(self, assignment, student, files, version=1) -> Graded:
        return Graded(self.grade(assignment, student, files, version), time.perf_counter())

    def store(self, graded: Graded) -> Result:
        return graded.result

    def discard(self, graded: Graded) -> None:
        pass

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
    _assignments(sessions, "hw2")  # nor ann in another assignment (the limit is per assignment)
    with sessions() as db:
        ann = db.scalar(select(User).where(User.login == "ann"))
        jobs.submit(db, ann, db.get(Assignment, "hw2"), {NB: b"v"})
    with sessions() as db:
        assert len(db.scalars(select(Submission)).all()) == 5


# -- fairness ----------------------------------------------------------------------------------
def _assignments(sessions, *names):
    with sessions() as db:
        for name in names:
            db.add(Assignment(name=name, per_hour=3, policy="last"))
        db.commit()


def _held(grader, seconds=10.0) -> Counter:
    """Who holds the graders once they are all busy (the gate keeps them busy)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(grader.active) < 3:
        time.sleep(0.02)
    time.sleep(0.3)  # nobody takes a fourth
    with grader.lock:
        return Counter(student for student, _ in grader.active)


def test_one_student_holds_no_more_than_a_fair_share_of_the_graders(setup):
    sessions, jobs, grader = setup
    _assignments(sessions, "hw2", "hw3")
    grader.gate.clear()  # notebooks that sleep: each holds its grader
    for name in ("hw1", "hw2", "hw3"):  # ann first, in three assignments
        with sessions() as db:
            ann = db.scalar(select(User).where(User.login == "ann"))
            jobs.submit(db, ann, db.get(Assignment, name), {NB: b"s" * 10})
    hand_in(sessions, jobs, "ben", b"b" * 10)
    hand_in(sessions, jobs, "cal", b"c" * 10)
    jobs.start()
    assert _held(grader) == {"ann": 1, "ben": 1, "cal": 1}  # 3 graders, 3 students
    grader.gate.set()


def test_without_the_fair_share_one_student_holds_every_grader_control(setup, monkeypatch):
    """Control (the old queue: oldest first, one per student and assignment)."""
    sessions, jobs, grader = setup
    monkeypatch.setattr(jobs_module, "fair_order", lambda queued, busy: list(queued))
    monkeypatch.setattr(Jobs, "_share", lambda self, students: 10**6)
    _assignments(sessions, "hw2", "hw3")
    grader.gate.clear()
    for name in ("hw1", "hw2", "hw3"):
        with sessions() as db:
            ann = db.scalar(select(User).where(User.login == "ann"))
            jobs.submit(db, ann, db.get(Assignment, name), {NB: b"s" * 10})
    hand_in(sessions, jobs, "ben", b"b" * 10)
    jobs.start()
    assert _held(grader) == {"ann": 3}
    grader.gate.set()


def test_the_order_interleaves_students_and_a_student_sees_their_position(setup):
    sessions, jobs, _ = setup
    t0 = datetime(2026, 12, 1, 12, 0)
    Row = namedtuple("Row", "id user_id assignment queued_at")
    rows = [Row(i, user, "hw1", t0 + timedelta(seconds=i)) for i, user in
            enumerate(["ann", "ann", "ann", "ben", "cal", "ben"])]  # fmt: skip
    order = [(r.user_id, r.id) for r in fair_order(rows, Counter())]
    assert order == [("ann", 0), ("ben", 3), ("cal", 4), ("ann", 1), ("ben", 5), ("ann", 2)]
    assert [r.id for r in rows] == sorted(r.id for r in rows)  # control: the old order
    busy = [(r.user_id, r.id) for r in fair_order(rows, Counter(ann=1))]
    assert busy[:3] == [("ben", 3), ("cal", 4), ("ann", 0)]  # ann is grading: one round later

    ids = [hand_in(sessions, jobs, login, b"p" * 10) for login in ("ann", "ann", "ben")]
    with sessions() as db:
        assert [jobs.position(db, i) for i in ids] == [(0, None), (2, None), (1, None)]
        db.add(Submission(user_id=db.scalar(select(User.id).where(User.login == "cal")),
                          assignment="hw1", folder="x", files_json="[]", checksum="",
                          state=GRADED, finished=1, seconds=6.0, graded_at=t0))  # fmt: skip
        db.commit()
        # 2 ahead, 3 graders: one round of about 6 s before it, then its own
        assert jobs.position(db, ids[1]) == (2, 6.0)


def test_during_a_regrade_the_grade_stays_on_its_previous_value(setup):
    sessions, jobs, grader = setup
    first = hand_in(sessions, jobs, "ann", b"x" * 10)  # scores 10
    second = hand_in(sessions, jobs, "ann", b"x" * 5)  # scores 5: counts under "last"
    jobs.start()
    wait_graded(sessions, [first, second])

    def counted():
        with sessions() as db:
            subs = db.scalars(select(Submission)).all()
            chosen = grades.pick(list(subs), db.get(Assignment, "hw1"))
            return chosen.submission.id, chosen.score, chosen.submission.state

    assert counted() == (second, 5.0, GRADED)
    grader.gate.clear()
    with sessions() as db:
        jobs.regrade(db, db.get(Assignment, "hw1"), [second])
    deadline = time.monotonic() + 30
    while len(grader.calls) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert counted() == (second, 5.0, GRADING)  # not the older 10 while it is graded again
    with sessions() as db:  # control: the old rule (graded rows only) fell back to the first
        subs = db.scalars(select(Submission).where(Submission.state == GRADED)).all()
        assert [s.id for s in subs] == [first]
    grader.gate.set()
    wait_graded(sessions, [second])
    assert counted() == (second, 5.0, GRADED) and grader.calls[-1][2] == 2


# -- latency: no wait for a poll, no worker held by storing --------------------------------------
def test_a_hand_in_is_picked_up_at_once_not_at_the_next_poll(setup, monkeypatch):
    """The queue's threads sleep on an event that a hand-in sets: with a poll interval of a
    minute, a hand-in is graded within a second. Control: without the wake-up it waits."""
    sessions, jobs, _ = setup
    jobs.config.poll_seconds = 60.0
    jobs.start()
    time.sleep(0.3)  # the threads found nothing and sleep
    started = time.monotonic()
    first = hand_in(sessions, jobs, "ann", b"a" * 10)
    wait_graded(sessions, [first], timeout=5)
    assert time.monotonic() - started < 1.0

    asleep = threading.Event()  # control: the hand-in's wake-up taken away
    monkeypatch.setattr(jobs._wake, "set", lambda: asleep.set())
    second = hand_in(sessions, jobs, "ben", b"b" * 10)
    with pytest.raises(TimeoutError):
        wait_graded(sessions, [second], timeout=1.5)
    assert asleep.is_set()


class SlowStore(FakeGrader):
    """Stores slowly (a loaded gradebook); records when each grading and storing ran."""

    def __init__(self, store_seconds: float):
        super().__init__(seconds=0.05)
        self.store_seconds, self.times = store_seconds, {}

    def run(self, assignment, student, files, version=1) -> Graded:
        self.times[student, "run"] = time.monotonic()
        return super().run(assignment, student, files, version)

    def store(self, graded: Graded) -> Result:
        time.sleep(self.store_seconds)
        self.times[graded.result.student, "stored"] = time.monotonic()
        return graded.result


def test_storing_a_result_does_not_hold_the_worker(setup, tmp_path, monkeypatch):
    """With one grader, the next student's grading starts while the previous result is
    still being stored (gradebook, pages): the worker is fed at once, as ``grade`` feeds
    it. Control: storing in the grading thread, the next grading waits for it."""
    sessions, old, _ = setup

    def two_students(inline: bool) -> dict:
        grader = SlowStore(store_seconds=0.8)
        data = tmp_path / f"inline-{inline}"
        config = ServiceConfig(data=data, root=tmp_path, db_url=old.config.db_url, jobs=1)
        jobs = Jobs(config, sessions, grader)
        if inline:  # the old way: the grading thread stores before it claims the next
            monkeypatch.setattr(jobs._storing, "submit", lambda fn, *args: fn(*args))
        ids = [hand_in(sessions, jobs, login, b"x" * 10) for login in ("ann", "ben")]
        jobs.start()
        try:
            subs = wait_graded(sessions, ids)
        finally:
            jobs.stop()
        assert all(s.finished == 1 for s in subs.values())
        return grader.times

    times = two_students(inline=False)
    first, second = sorted(("ann", "ben"), key=lambda s: times[s, "run"])
    assert times[second, "run"] < times[first, "stored"] - 0.5
    times = two_students(inline=True)  # control
    first, second = sorted(("ann", "ben"), key=lambda s: times[s, "run"])
    assert times[second, "run"] >= times[first, "stored"]
