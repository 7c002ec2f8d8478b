"""Accounts and bad input, in process: the service's application with Starlette's TestClient.

No grading runs here (the queue is not started), so each attack on the accounts is fast and
shown twice: against the service, where it fails, and against a control with the
protection taken away (a monkeypatched limit or function: the old behaviour), where it
succeeds, so that the test proves the protection is what stops it. The bad-input test sends
every POST route malformed forms and the student's routes malformed ids and uploads: each
gets an error page with a 4xx status, never a 500.
"""

import csv
import io
import json
import threading
import time
import warnings
from datetime import timedelta

import pytest
from sqlalchemy import select, update

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from service_harness import CSRF, HW, NAME, ROOT

from dnncourse.service import auth, grades
from dnncourse.service.app import create_app
from dnncourse.service.config import ServiceConfig
from dnncourse.service.models import LoginSession, SigninToken, User, utcnow

PASSWORD = "{} hands in notebooks"


@pytest.fixture
def app(tmp_path):
    config = ServiceConfig(data=tmp_path / "data", root=ROOT, assignments=[HW])
    app = create_app(config)  # no lifespan: the queue does not start
    with app.state.service.sessions() as db:
        for login, role in (("prof", "instructor"), ("alice", "student"), ("bob", "student")):
            db.add(User(login=login, name=login.title(), role=role))
        db.commit()
        for user in db.scalars(select(User)):
            user.password_hash = auth.hash_password(PASSWORD.format(user.login))
        db.commit()
    return app


def client(app, address: str = "10.0.0.1") -> TestClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TestClient(app, follow_redirects=False, client=(address, 50000))


def csrf(c: TestClient, path: str = "/login") -> str:
    return CSRF.search(c.get(path).text).group(1)


def login(c: TestClient, name: str, password: str):
    return c.post("/login", data={"login": name, "password": password, "csrf": csrf(c)})


def signed_in(c: TestClient) -> bool:
    return c.get("/assignments").status_code == 200


@pytest.fixture
def hashes(monkeypatch):
    """Counts the argon2 verifications (each costs the machine a hash)."""
    count, hasher = [0], auth._hasher

    class Counting:
        def verify(self, *args):
            count[0] += 1
            return hasher.verify(*args)

        def hash(self, *args):
            return hasher.hash(*args)

    monkeypatch.setattr(auth, "_hasher", Counting())
    return count


# -- throttling --------------------------------------------------------------------------------
def test_guessing_a_password_is_throttled_per_account_with_no_hash_spent(app, hashes):
    guesser = client(app)
    for i in range(auth.ACCOUNT_LIMIT):
        assert login(guesser, "alice", f"guess {i}").status_code == 401
    assert hashes[0] == auth.ACCOUNT_LIMIT  # each wrong guess was verified
    refused = login(guesser, "alice", PASSWORD.format("alice"))  # even the right one
    assert refused.status_code == 429 and not signed_in(guesser)
    assert "Too many wrong passwords for alice" in refused.text
    assert "paused until" in refused.text and "new sign-in link" in refused.text
    assert hashes[0] == auth.ACCOUNT_LIMIT, "a throttled guess costs no argon2 hash"
    # the account's throttle is the account's: bob signs in from the same address
    assert login(client(app), "bob", PASSWORD.format("bob")).status_code == 303
    # after the window, alice signs in again (the failures are older than the window)
    with app.state.service.sessions() as db:
        old = utcnow() - auth.THROTTLE_WINDOW - timedelta(seconds=1)
        db.execute(update(auth.SigninFailure).values(at=old))
        db.commit()
    assert login(guesser, "alice", PASSWORD.format("alice")).status_code == 303
    # a right password clears the account's count: as many wrong ones again are answered
    for i in range(auth.ACCOUNT_LIMIT - 1):
        assert login(client(app), "alice", f"again {i}").status_code == 401
    assert login(client(app), "alice", PASSWORD.format("alice")).status_code == 303
    for i in range(auth.ACCOUNT_LIMIT - 1):
        assert login(client(app), "alice", f"more {i}").status_code == 401


def test_without_the_throttle_guessing_goes_on_control(app, hashes, monkeypatch):
    """Control (the old service): 30 wrong guesses, then the right one, all answered."""
    monkeypatch.setattr(auth, "ACCOUNT_LIMIT", 10**6)
    monkeypatch.setattr(auth, "ADDRESS_LIMIT", 10**6)
    guesser = client(app)
    for i in range(30):
        assert login(guesser, "alice", f"guess {i}").status_code == 401
    assert login(guesser, "alice", PASSWORD.format("alice")).status_code == 303
    assert hashes[0] == 31


def test_guessing_from_one_address_is_throttled_across_accounts(app, hashes):
    guesser = client(app, "10.0.0.9")
    names = [f"user{i}" for i in range(auth.ADDRESS_LIMIT)]  # few guesses per account
    for name in names:
        assert login(guesser, name, "123456789").status_code == 401
    refused = login(guesser, "bob", PASSWORD.format("bob"))
    assert refused.status_code == 429 and "from your address" in refused.text
    assert hashes[0] == auth.ADDRESS_LIMIT
    assert login(client(app, "10.0.0.10"), "bob", PASSWORD.format("bob")).status_code == 303


# -- passwords ---------------------------------------------------------------------------------
def _link(app, login: str) -> str:
    with app.state.service.sessions() as db:
        token = auth.new_link(db, db.scalar(select(User).where(User.login == login)))
        db.commit()
    return f"/signin/{token}"


def test_common_passwords_are_refused(app):
    link = _link(app, "alice")
    c = client(app)
    for weak in ("12345678", "password1", "qwertyuiop", "alicealice", "Alice2026"):
        assert len(weak) >= 8  # control: the old rule (8 characters) accepted each of them
        token = csrf(c, link)
        r = c.post(link, data={"password": weak, "again": weak, "csrf": token})
        assert r.status_code == 400 and "too easy to guess" in r.text, weak
    assert not signed_in(c)
    token = csrf(c, link)
    strong = "grading notebooks at dawn"
    assert (
        c.post(link, data={"password": strong, "again": strong, "csrf": token}).status_code == 303
    )
    assert signed_in(c)


# -- sessions ----------------------------------------------------------------------------------
def _copy(app, c: TestClient) -> TestClient:
    """Another browser with ``c``'s cookie (stolen, or left on a shared computer)."""
    thief = client(app, "10.6.6.6")
    thief.cookies.update(c.cookies)
    return thief


def test_a_copied_cookie_stops_working_when_the_session_ends(app):
    alice = client(app)
    assert login(alice, "alice", PASSWORD.format("alice")).status_code == 303
    thief = _copy(app, alice)
    assert signed_in(thief), "control: the copied cookie works while the session is open"
    alice.post("/logout", data={"csrf": csrf(alice, "/assignments")})
    assert not signed_in(thief), "signed out: the copy is worthless"
    assert not signed_in(alice)

    # a new password (the account page) signs out every other browser
    assert login(alice, "alice", PASSWORD.format("alice")).status_code == 303
    thief = _copy(app, alice)
    assert signed_in(thief)
    new = "alice walks the gradient"
    r = alice.post(
        "/account",
        data={"current": PASSWORD.format("alice"), "password": new, "again": new,
              "csrf": csrf(alice, "/account")},
    )  # fmt: skip
    assert r.status_code == 200 and "Password changed" in r.text
    assert signed_in(alice) and not signed_in(thief)

    # a new password through a sign-in link (a reset) does the same
    thief = _copy(app, alice)
    assert signed_in(thief)
    reset, again = _link(app, "alice"), "alice resets her password"
    other = client(app)
    token = csrf(other, reset)
    assert (
        other.post(reset, data={"password": again, "again": again, "csrf": token}).status_code
        == 303
    )
    assert signed_in(other) and not signed_in(thief) and not signed_in(alice)

    # the instructor signs alice out everywhere
    thief = _copy(app, other)
    prof = client(app)
    assert login(prof, "prof", PASSWORD.format("prof")).status_code == 303
    with app.state.service.sessions() as db:
        uid = db.scalar(select(User.id).where(User.login == "alice"))
    r = prof.post(f"/instructor/students/{uid}/signout", data={"csrf": csrf(prof, "/instructor")})
    assert r.status_code == 303 and "alice+signed+out" in r.headers["location"]
    assert not signed_in(other) and not signed_in(thief) and signed_in(prof)


def test_an_idle_session_ends(app):
    alice = client(app)
    assert login(alice, "alice", PASSWORD.format("alice")).status_code == 303

    def idle(for_: timedelta) -> None:
        with app.state.service.sessions() as db:
            db.execute(update(LoginSession).values(seen_at=utcnow() - for_))
            db.commit()

    idle(auth.IDLE_LIFETIME - timedelta(minutes=5))
    assert signed_in(alice), "control: used within the idle life, it goes on"
    idle(auth.IDLE_LIFETIME + timedelta(minutes=5))
    assert not signed_in(alice)
    assert auth.IDLE_LIFETIME == timedelta(hours=2) and auth.SESSION_LIFETIME == timedelta(days=7)
    # in use all along, a session still ends after its lifetime
    assert login(alice, "alice", PASSWORD.format("alice")).status_code == 303
    with app.state.service.sessions() as db:
        old = utcnow() - auth.SESSION_LIFETIME - timedelta(minutes=1)
        db.execute(update(LoginSession).values(created_at=old, seen_at=utcnow()))
        db.commit()
    assert not signed_in(alice)


# -- one-time links ----------------------------------------------------------------------------
def _race(app, link: str) -> list[int]:
    """Two browsers post the same link at the same moment; their status codes."""
    browsers = [client(app, f"10.1.0.{i}") for i in (1, 2)]
    tokens = [csrf(b, link) for b in browsers]
    barrier, codes = threading.Barrier(2), []

    def use(b, token, password):
        barrier.wait()
        r = b.post(link, data={"password": password, "again": password, "csrf": token})
        codes.append(r.status_code)

    threads = [
        threading.Thread(target=use, args=(b, t, f"racer number {i} takes the link"))
        for i, (b, t) in enumerate(zip(browsers, tokens, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(codes)


@pytest.fixture
def slow_hash(monkeypatch):
    """Widen the window between reading the link and using it (as a loaded machine does)."""
    fast = auth.hash_password

    def slow(password):
        time.sleep(0.3)
        return fast(password)

    monkeypatch.setattr(auth, "hash_password", slow)


def test_a_link_used_twice_at_once_signs_in_once(app, slow_hash):
    assert _race(app, _link(app, "alice")) == [303, 404]
    with app.state.service.sessions() as db:
        assert db.scalar(select(LoginSession).where(LoginSession.user_id == 2)) is not None
        assert len(db.scalars(select(LoginSession)).all()) == 1


def test_without_the_atomic_use_a_link_signs_in_twice_control(app, slow_hash, monkeypatch):
    """Control (the old service: read the link, then mark it used): both browsers get in."""
    monkeypatch.setattr(auth, "consume_link", lambda db, link: True)
    monkeypatch.setattr(auth, "end_sessions", lambda db, user_id: 0)  # the old: nothing ended
    assert _race(app, _link(app, "alice")) == [303, 303]
    with app.state.service.sessions() as db:
        assert len(db.scalars(select(LoginSession)).all()) == 2
        assert db.scalar(select(SigninToken)).used_at is None  # never even marked


def test_a_service_without_an_instructor_prints_no_link(tmp_path, monkeypatch, capsys):
    import uvicorn

    from dnncourse.cli import main

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets))
    data = tmp_path / "data"
    assert main(["serve", "--data", str(data), "--port", "0", "--assignments", HW]) == 0
    assert served and served[0][0].getsockname()[1] > 0  # it would have served
    out = capsys.readouterr().out
    assert "no instructor yet: run dnncourse serve" in out and "--add-instructor" in out
    assert "/signin/" not in out
    import sqlite3

    with sqlite3.connect(data / "service.db") as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)
    served[0][0].close()


# -- bad input ---------------------------------------------------------------------------------
def _nested(levels: int) -> bytes:
    return (
        b'{"cells": [], "nbformat": 4, "metadata": {"x": ' + b"[" * levels + b"]" * levels + b"}}"
    )


def test_every_form_and_upload_gets_an_error_page_never_a_500(app):
    with pytest.raises(RecursionError):  # control: what the old check met (a 500)
        json.loads(_nested(100_000))
    prof, alice = client(app), client(app)
    assert login(prof, "prof", PASSWORD.format("prof")).status_code == 303
    assert login(alice, "alice", PASSWORD.format("alice")).status_code == 303
    token = {"prof": csrf(prof, "/instructor"), "alice": csrf(alice, "/assignments")}

    def check(c, method, path, expect, text=None, **kw):
        r = c.request(method, path, **kw)
        assert r.status_code == expect or (expect is None and 400 <= r.status_code < 500), (
            method, path, r.status_code, r.text[-300:]
        )  # fmt: skip
        assert 'id="message"' in r.text, r.text[-300:]  # the service's error page
        if text:
            assert text in r.text.replace("&#39;", "'"), (path, r.text[-300:])

    submit = f"/assignments/{HW}/submit"
    for levels, why in ((100_000, "nested too deeply"), (100, "nested more than 64 deep")):
        files = {NAME: (f"{NAME}.ipynb", _nested(levels))}
        check(alice, "POST", submit, 400, why, data={"csrf": token["alice"]}, files=files)
    many = {f"f{i}": ("x.txt", b"x") for i in range(30)}  # multipart: files, fields
    broken = {"content-type": "multipart/form-data; boundary=zz"}
    for who, path in [("alice", "/account"), ("alice", submit), ("prof", "/instructor/roster"),
                      ("prof", f"/instructor/assignments/{HW}/settings"),
                      ("prof", f"/instructor/assignments/{HW}/regrade"),
                      ("prof", "/instructor/students/2/link"), ("alice", "/logout")]:  # fmt: skip
        c = prof if who == "prof" else alice
        fields = {f"f{i}": "x" for i in range(60)}
        check(c, "POST", path, 400, "could not be read", data={**fields, "csrf": token[who]},
              files=many)  # fmt: skip
        check(c, "POST", path, None, None, content=b"--zz\r\nbad", headers=broken)
        check(c, "POST", path, 400, "NUL", data={"csrf": token[who], "student": "a\0b",
                                                 "current": "\0", "deadline": "\0"})  # fmt: skip
        check(c, "POST", path, 413, "larger than", data={"csrf": token[who], "x": "y" * 6 * 2**20})
    settings = f"/instructor/assignments/{HW}/settings"
    base = {
        "deadline": "",
        "per_hour": "2",
        "policy": "last",
        "late_penalty": "",
        "csrf": token["prof"],
    }
    for bad in ({"per_hour": "99999999999999999999999"}, {"per_hour": "1e3"},
                {"late_penalty": "nan"}, {"late_penalty": "inf"}, {"deadline": "99999-01-01"},
                {"deadline": "2026-02-30T10:00"}, {"policy": ""}):  # fmt: skip
        check(prof, "POST", settings, 400, None, data={**base, **bad})
    roster = "/instructor/roster"
    long_field = b"student_id\n" + b"a" * 200_000 + b"\n"
    for data in (b"\xff\xfe\x00bad", b"name,email\nA,a@x\n", b"student_id\n../x\n",
                 b'student_id,name\n"unclosed,x\n', long_field):  # fmt: skip
        files = {"roster": ("r.csv", data, "text/csv")}
        r = prof.post(roster, data={"csrf": token["prof"]}, files=files)
        assert 400 <= r.status_code < 500, (data[:30], r.status_code)
    huge = 2**70
    for path in (f"/submissions/{huge}", f"/submissions/{huge}.json",
                 f"/submissions/{huge}/feedback/{NAME}", "/submissions/0"):  # fmt: skip
        assert alice.get(path).status_code == 404, path
    for path in (f"/instructor/students/{huge}/link", f"/instructor/students/{huge}/signout"):
        check(prof, "POST", path, 404, "No such person", data={"csrf": token["prof"]})


def test_exported_cells_are_safe_for_spreadsheets(app):
    prof = client(app)
    assert login(prof, "prof", PASSWORD.format("prof")).status_code == 303
    names = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)"]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(
        [("student_id", "name"), *((f"s{i}", n) for i, n in enumerate(names))]
    )
    text = buffer.getvalue()
    r = prof.post("/instructor/roster", data={"csrf": csrf(prof, "/instructor")},
                  files={"roster": ("r.csv", text, "text/csv")})  # fmt: skip
    assert r.status_code == 200
    with app.state.service.sessions() as db:  # control: stored as typed, formula and all
        stored = {u.login: u.name for u in db.scalars(select(User))}
    assert [stored[f"s{i}"] for i in range(len(names))] == names
    exported = prof.get(f"/instructor/assignments/{HW}/grades.csv")
    table = {r["student_id"]: r for r in csv.DictReader(io.StringIO(exported.text))}
    assert [table[f"s{i}"]["name"] for i in range(len(names))] == ["'" + n for n in names]
    assert table["alice"]["name"] == "Alice"
    # max_score is the assignment's (hw1: 3 + 3 + 2 + 2 points), before anybody hands in;
    # control: the old rule, the best max_score among graded submissions, had none: 0
    assert grades.max_score(ROOT, HW) == 10.0
    assert {r["max_score"] for r in table.values()} == {"10.0"}
    assert max((), default=0.0) == 0.0
    assert [grades.cell(x) for x in ("\tx", "\rx", "a=b", -1.5)] == ["'\tx", "'\rx", "a=b", -1.5]
