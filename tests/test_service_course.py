"""What a course relies on, in process (Starlette's TestClient, no grading): release dates and
a hard close, per-student extensions, per-question statistics and their export, the LMS
export, the audit log, a student's own files, the hand-ins left this hour, sign-in links as
CSV, dropping a student, and an older database brought up to date.

Graded submissions are written into the database as the queue would leave them, so the
policy's and the exports' numbers are checked against values computed here by hand.
"""

import csv
import io
import json
import sqlite3
from datetime import timedelta

import pytest
from service_harness import HW, NAME, ROOT
from sqlalchemy import select
from test_service_accounts import PASSWORD, client, csrf, login

from dnncourse.service import auth
from dnncourse.service.app import create_app
from dnncourse.service.config import ServiceConfig
from dnncourse.service.models import GRADED, Assignment, Submission, User, open_db, utcnow

RELEASE = ROOT / "exercises" / HW / f"{NAME}.ipynb"


@pytest.fixture
def app(tmp_path):
    config = ServiceConfig(data=tmp_path / "data", root=ROOT, assignments=[HW], per_hour=3)
    app = create_app(config)
    with app.state.service.sessions() as db:
        for login_, role in (("prof", "instructor"), ("alice", "student"), ("bob", "student")):
            db.add(User(login=login_, name=login_.title(), email=f"{login_}@x.org", role=role))
        db.commit()
        for user in db.scalars(select(User)):
            user.password_hash = auth.hash_password(PASSWORD.format(user.login))
        db.commit()
    return app


def people(app):
    out = {}
    for name in ("prof", "alice", "bob"):
        out[name] = client(app, f"10.2.0.{len(out) + 1}")
        assert login(out[name], name, PASSWORD.format(name)).status_code == 303
    return out


def uid(app, name: str) -> int:
    with app.state.service.sessions() as db:
        return db.scalar(select(User.id).where(User.login == name))


def graded(app, name: str, score: float, checks: list[tuple], ago: timedelta) -> int:
    """A graded submission of ``name`` handed in ``ago`` before now (as the queue leaves it)."""
    with app.state.service.sessions() as db:
        sub = Submission(
            user_id=uid(app, name), assignment=HW, folder="none", files_json="[]", checksum="",
            state=GRADED, finished=1, status="ok", score=score, max_score=10.0,
            created_at=utcnow() - ago, graded_at=utcnow(),
            checks_json=json.dumps([
                {"notebook": NAME, "name": n, "points": p, "max_points": m, "passed": p == m,
                 "message": ""} for n, p, m in checks
            ]),
        )  # fmt: skip
        db.add(sub)
        db.commit()
        return sub.id


def settings(prof, **values):
    base = {"deadline": "", "per_hour": "3", "policy": "last", "late_penalty": "",
            "opens_at": "", "closes_at": ""}  # fmt: skip
    token = csrf(prof, f"/instructor/assignments/{HW}")
    return prof.post(
        f"/instructor/assignments/{HW}/settings", data={**base, **values, "csrf": token}
    )


def minutes(delta: timedelta) -> str:
    return (utcnow() + delta).strftime("%Y-%m-%dT%H:%M")


def hand_in(c):
    token = csrf(c, f"/assignments/{HW}")
    files = {NAME: (f"{NAME}.ipynb", RELEASE.read_bytes())}
    return c.post(f"/assignments/{HW}/submit", data={"csrf": token}, files=files)


def table(response) -> dict[str, dict]:
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    return {r["student_id"]: r for r in csv.DictReader(io.StringIO(response.text))}


def test_release_date_hard_close_and_an_extension(app):
    p = people(app)
    prof, alice, bob = p["prof"], p["alice"], p["bob"]
    assert settings(prof, opens_at=minutes(timedelta(days=1))).status_code == 303
    assert HW not in alice.get("/assignments").text  # not listed before its release
    for path in (f"/assignments/{HW}", f"/assignments/{HW}/release/{NAME}.ipynb"):
        r = alice.get(path)
        assert r.status_code == 404 and "not released yet" in r.text, path
    assert hand_in(alice).status_code == 404
    assert prof.get(f"/assignments/{HW}").status_code == 200  # instructors see it
    # released, deadline an hour ago, closed ten minutes ago
    r = settings(prof, opens_at=minutes(-timedelta(days=1)), deadline=minutes(-timedelta(hours=1)),
                 closes_at=minutes(-timedelta(minutes=10)))  # fmt: skip
    assert r.status_code == 303
    assert HW in alice.get("/assignments").text
    refused = hand_in(alice)
    assert refused.status_code == 403 and "no more hand-ins" in refused.text
    bad = settings(
        prof, deadline=minutes(timedelta(hours=2)), closes_at=minutes(timedelta(hours=1))
    )
    assert bad.status_code == 400 and "hard close must not come before" in bad.text
    # alice gets two more days: her deadline and her hard close move
    token = csrf(prof, f"/instructor/assignments/{HW}")
    own = minutes(timedelta(days=2))
    r = prof.post(f"/instructor/assignments/{HW}/extension",
                  data={"student": "alice", "deadline": own, "csrf": token})  # fmt: skip
    assert r.status_code == 303
    assert hand_in(alice).status_code == 303 and hand_in(bob).status_code == 403
    assert own.replace("T", " ") in alice.get(f"/assignments/{HW}").text
    # her submission of an hour ago counts: on time for her; bob's is late (no penalty)
    graded(app, "alice", 7.0, [("test_a", 7.0, 10.0)], timedelta(minutes=30))
    graded(app, "bob", 9.0, [("test_a", 9.0, 10.0)], timedelta(minutes=30))
    rows = table(prof.get(f"/instructor/assignments/{HW}/grades.csv"))
    assert (float(rows["alice"]["score"]), rows["alice"]["late_days"]) == (7.0, "0")
    assert rows["alice"]["deadline"] == own + "Z"
    assert (float(rows["bob"]["score"]), rows["bob"]["submission"]) == (0.0, "")
    token = csrf(prof, f"/instructor/assignments/{HW}")
    r = prof.post(f"/instructor/assignments/{HW}/extension",
                  data={"student": "nobody", "deadline": own, "csrf": token})  # fmt: skip
    assert r.status_code == 404


def test_per_question_statistics_and_the_lms_export(app):
    prof = people(app)["prof"]
    hour = timedelta(hours=1)
    graded(app, "alice", 2.0, [("test_a", 0.0, 3.0), ("test_b", 2.0, 2.0)], 2 * hour)
    graded(app, "alice", 5.0, [("test_a", 3.0, 3.0), ("test_b", 2.0, 2.0)], hour)  # counts
    graded(app, "bob", 2.0, [("test_a", 0.0, 3.0), ("test_b", 2.0, 2.0)], hour)
    text = prof.get(f"/instructor/assignments/{HW}/questions.csv").text
    by_check = {r["check"]: r for r in csv.DictReader(io.StringIO(text))}
    # over the counting submissions only (alice's second, bob's): test_a 3 and 0 of 3
    assert by_check["test_a"]["mean_points"] == "1.5" and by_check["test_a"]["passed"] == "1"
    assert by_check["test_a"]["passed_fraction"] == "0.5" and by_check["test_a"]["graded"] == "2"
    assert by_check["test_b"]["mean_points"] == "2.0" and by_check["test_b"]["passed"] == "2"
    page = prof.get(f"/instructor/assignments/{HW}").text
    assert 'id="questions"' in page and "1 of 2" in page and "2 of 2" in page
    lms = prof.get(f"/instructor/assignments/{HW}/lms.csv")
    reader = list(csv.reader(io.StringIO(lms.text)))
    assert reader[0] == ["student_id", "email", "name", f"{HW} (10 points)"]
    assert {r[0]: (r[1], float(r[3])) for r in reader[1:]} == {
        "alice": ("alice@x.org", 5.0), "bob": ("bob@x.org", 2.0)
    }  # fmt: skip
    assert table(prof.get(f"/instructor/assignments/{HW}/grades.csv"))["alice"]["score"] == "5.0"


def test_own_files_hand_ins_left_links_as_csv_drop_and_the_audit_log(app):
    p = people(app)
    prof, alice, bob = p["prof"], p["alice"], p["bob"]
    assert 'id="left">3 left' in alice.get(f"/assignments/{HW}").text
    sub = int(hand_in(alice).headers["location"].rsplit("/", 1)[1])
    page = alice.get(f"/assignments/{HW}").text
    assert 'id="left">2 left' in page and f"/submissions/{sub}/files/{NAME}.ipynb" in page
    own = alice.get(f"/submissions/{sub}/files/{NAME}.ipynb")
    assert own.status_code == 200 and own.content == RELEASE.read_bytes()
    assert bob.get(f"/submissions/{sub}/files/{NAME}.ipynb").status_code == 404
    assert alice.get(f"/submissions/{sub}/files/other.ipynb").status_code == 404
    # the roster's new links as a CSV file; a link from it works
    token = csrf(prof, "/instructor")
    roster = {"roster": ("r.csv", "student_id,name,email\ncarol,=Carol,c@x.org\n", "text/csv")}
    r = prof.post("/instructor/roster", data={"csrf": token, "as": "csv"}, files=roster)
    links = table(r)
    assert links["carol"]["name"] == "'=Carol" and links["carol"]["email"] == "c@x.org"
    link = links["carol"]["link"]
    carol = client(app, "10.3.0.1")
    path = link[link.index("/signin/") :]
    strong = "carol reads the feedback"
    token = csrf(carol, path)
    assert (
        carol.post(path, data={"password": strong, "again": strong, "csrf": token}).status_code
        == 303
    )
    # dropping alice: signed out, cannot sign in, off the exports; her work stays
    token = csrf(prof, "/instructor")
    assert (
        prof.post(
            f"/instructor/students/{uid(app, 'alice')}/drop", data={"csrf": token}
        ).status_code
        == 303
    )
    assert alice.get("/assignments").status_code == 303
    refused = login(client(app, "10.3.0.2"), "alice", PASSWORD.format("alice"))
    assert refused.status_code == 403 and "dropped" in refused.text
    assert "alice" not in table(prof.get(f"/instructor/assignments/{HW}/grades.csv"))
    with app.state.service.sessions() as db:
        assert db.get(Submission, sub) is not None
    token = csrf(prof, "/instructor")
    back = {"roster": ("r.csv", "student_id,name\nalice,Alice\n", "text/csv")}
    assert prof.post("/instructor/roster", data={"csrf": token}, files=back).status_code == 200
    assert login(client(app, "10.3.0.3"), "alice", PASSWORD.format("alice")).status_code == 303
    assert "alice" in table(prof.get(f"/instructor/assignments/{HW}/grades.csv"))
    token = csrf(prof, "/instructor")
    prof.post(f"/instructor/students/{uid(app, 'bob')}/signout", data={"csrf": token})
    # the audit log: who did what, never a link's token
    token = csrf(prof, f"/instructor/assignments/{HW}")
    prof.post(f"/instructor/assignments/{HW}/regrade", data={"student": "", "csrf": token})
    assert settings(prof, per_hour="5").status_code == 303
    log = prof.get("/instructor/audit")
    assert log.status_code == 200
    for what in ("roster", "links", "drop", "regrade", "settings", "sign-in links for carol",
                 "sign-out", "bob: 1 sessions ended",
                 f"{HW}: everyone", "5/hour"):  # fmt: skip
        assert what in log.text, what
    assert link.rsplit("/", 1)[1] not in log.text
    assert alice.get("/instructor/audit").status_code in (303, 401, 403)
    assert bob.get("/instructor/audit").status_code == 303  # signed out by the instructor
    bob = client(app, "10.3.0.4")
    assert login(bob, "bob", PASSWORD.format("bob")).status_code == 303
    assert bob.get("/instructor/audit").status_code == 403


def test_an_older_database_gets_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the assignments table as the previous version made it
        db.execute(
            "CREATE TABLE assignments (name VARCHAR(64) PRIMARY KEY, deadline DATETIME, "
            "per_hour INTEGER, policy VARCHAR(8), late_penalty FLOAT, version INTEGER)"
        )
        db.execute("INSERT INTO assignments VALUES ('hw1', NULL, 10, 'last', NULL, 1)")
    sessions = open_db(f"sqlite:///{path}")
    with sessions() as db:
        a = db.get(Assignment, "hw1")
        assert (a.per_hour, a.opens_at, a.closes_at) == (10, None, None)
