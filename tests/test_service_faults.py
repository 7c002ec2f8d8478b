"""The service killed (SIGKILL) with submissions queued and one grading, then restarted.

Three students hand in (two correct: 10 points, one with a wrong ``cubic_gradients``: 5, as
its test (3) and fit_cubic's (2) fail); one job, so that one is grading and the rest wait
when the service is killed. After the restart every submission is graded exactly once
(``finished == 1``), the interrupted one was started twice, the scores are the deserved ones
in the service and in nbgrader's gradebook, and the killed service's worker is gone.
"""

import sqlite3
import time

import psutil
import pytest
from service_harness import HW, Client, free_port, instructor_link, start
from test_grading_corpus import ALL, notebook

pytestmark = pytest.mark.slow


def rows(data) -> dict[int, tuple]:
    with sqlite3.connect(data / "service.db") as db:
        found = db.execute("SELECT id, state, attempts, finished, score FROM submissions")
        return {r[0]: r[1:] for r in found.fetchall()}


def why(data) -> str:
    """Each submission's status and detail, and the end of each service log (for a failure)."""
    with sqlite3.connect(data / "service.db") as db:
        found = db.execute("SELECT id, status, detail FROM submissions").fetchall()
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(data.glob("*.log")))
    return f"{found}\n{logs}"


def test_killed_with_work_queued_then_restarted_grades_each_once(tmp_path):
    data, port = tmp_path / "data", free_port()
    link = instructor_link(data, port)
    args = ("--jobs", "1", "--per-hour", "0", "--timeout", "300")
    server = start(data, *args, port=port)
    try:
        prof = Client(server.url)
        prof.signin(link)
        links = prof.roster([(f"s{i}", f"Student {i}") for i in range(3)])
        deserved, students = {}, {}
        for i, (login, student_link) in enumerate(sorted(links.items())):
            student = Client(server.url)
            student.signin(student_link)
            good = i % 2 == 0
            nb = notebook(correct=ALL) if good else notebook(correct=ALL[1:], wrong=ALL[:1])
            sub = student.submission_id(student.upload(nb))
            deserved[sub], students[sub] = (10.0 if good else 5.0), login
        started = data / "grading" / "worker.pids"
        deadline = time.monotonic() + 300
        while not (started.is_file() and started.read_text().split()):
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.2)
        time.sleep(3.0)  # well into the grading (the worker and its kernel are running)
        pids = [int(p) for p in started.read_text().split()]
        assert any(state == "grading" for state, *_ in rows(data).values())
    finally:
        server.kill()
    before = rows(data)
    assert sorted(before) == sorted(deserved), "every hand-in was stored before the kill"
    interrupted = [s for s, (state, *_) in before.items() if state == "grading"]
    assert len(interrupted) == 1
    assert sum(state == "queued" for state, *_ in before.values()) >= 2
    assert all(finished == 0 for _, _, finished, _ in before.values())

    server = start(data, *args, port=port)
    try:
        for pid in pids:  # the killed service's worker was reaped, not left grading
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        deadline = time.monotonic() + 600
        while not all(state == "graded" for state, *_ in rows(data).values()):
            assert time.monotonic() < deadline, f"not all graded: {rows(data)}"
            time.sleep(1)
        time.sleep(2)  # nothing graded a second time afterwards
        after = rows(data)
    finally:
        server.stop()
    assert {s: r[2] for s, r in after.items()} == dict.fromkeys(deserved, 1), "each once"
    assert {s: r[3] for s, r in after.items()} == deserved, why(data)
    assert after[interrupted[0]][1] == 2, "the interrupted grading was redone"
    assert all(r[1] == 1 for s, r in after.items() if s != interrupted[0])

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{data / 'gradebook.db'}", "dnncourse") as gb:
        book = {s: gb.find_submission(HW, students[s]).score for s in deserved}
    assert book == deserved
