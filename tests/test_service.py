"""The submission service, for real: ``dnncourse serve`` on 127.0.0.1, httpx and chromium.

One server for the module (hw1 only, two jobs, at most 2 hand-ins per hour, a 1 MiB upload
cap). Each attack is shown to reach the service and to fail: routes without a session,
with another student's ids, without a CSRF token; oversized, non-notebook and ``../``
uploads; a ``<script>`` in a notebook's outputs (the graded notebook holds it, a control
proves it runs when shown as HTML; the feedback page shows outputs as text only and is
served sandboxed); an exception whose text is HTML (the trusted check message says what was
raised, never its text); the hourly limit. The browser test is the student's whole path: sign
in, hand in a notebook with one wrong answer, read the failing hidden check's message, hand
in a correct one, see full marks; then the instructor downloads grades.csv. hw1's points:
test_cubic_gradients 3, test_central_difference 3, test_gradient_descent_step 2,
test_fit_cubic 2.
"""

import csv
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from service_harness import HW, NAME, ROOT, Client, free_port, instructor_link, start
from test_grading_corpus import ALL, RELEASE, code, hidden_test_lines, insert_after, notebook

from dnncourse.service import grades
from dnncourse.service.app import ROUTES
from dnncourse.service.grader import safe_name
from dnncourse.service.models import Assignment, Submission
from dnncourse.service.student import checked_notebook

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# cubic_gradients in float32 whatever the input: the visible test (float32) passes, the
# hidden one (float64 coeffs) fails on the dtype, and fit_cubic's hidden trajectory with it.
FLOAT32 = (
    "def cubic_gradients(x, y, coeffs):\n"
    "    a, b, c, d = coeffs\n"
    "    r = 2.0 * (a + b * x + c * x**2 + d * x**3 - y)\n"
    "    out = torch.stack([r.sum(), (r * x).sum(), (r * x**2).sum(), (r * x**3).sum()])\n"
    "    return out.float()\n"
)
# the trusted verdict's words: the reference's probe "float64, 7 points" (what=...)
HIDDEN_MESSAGE = "expected dtype float64, got float32 (the gradient at 7 random points)"
PAYLOAD = (
    "<script>console.log('PWNED-RAN'); document.title = 'PWNED';"
    "try { parent.document.title = 'PWNED'; } catch (e) {}</script><b id='xss'>bold</b>"
)
XSS_CELL = f"from IPython.display import HTML, display\ndisplay(HTML({PAYLOAD!r}))"
IMG_MESSAGE = "<img src=x onerror=console.log('PWNED-MSG')>"
RAISES = f"def cubic_gradients(x, y, coeffs):\n    raise ValueError({IMG_MESSAGE!r})\n"


# -- pieces without a server -------------------------------------------------------------------
def _sub(i, created, score, state="graded", finished=None):
    finished = (state == "graded") if finished is None else finished
    return Submission(
        id=i,
        user_id=1,
        created_at=created,
        score=score,
        state=state,
        finished=int(finished),
        checks_json="[]",
    )


def test_policy_last_or_best_and_the_late_penalty():
    deadline = datetime(2026, 12, 1, 12, 0)
    a = Assignment(name=HW, deadline=deadline, policy="last", late_penalty=None)
    early = _sub(1, deadline - timedelta(hours=2), 9.0)
    on_time = _sub(2, deadline, 4.0)
    late = _sub(3, deadline + timedelta(hours=30), 10.0)  # 2 started days late
    pending = _sub(4, deadline - timedelta(hours=1), 0.0, state="queued")
    subs = [early, on_time, late, pending]
    assert grades.late_days(late.created_at, deadline) == 2
    assert grades.late_days(on_time.created_at, deadline) == 0
    assert grades.pick(subs, a).submission is on_time  # late does not count, queued neither
    a.policy = "best"
    assert grades.pick(subs, a).submission is early
    a.late_penalty = 0.25  # 10 * (1 - 0.25 * 2) = 5 < 9
    chosen = grades.pick(subs, a)
    assert (chosen.submission, chosen.score) == (early, 9.0)
    a.late_penalty = 0.01  # 10 * 0.98 = 9.8 > 9
    assert grades.pick(subs, a).score == pytest.approx(9.8)
    a.policy = "last"
    assert grades.pick(subs, a).submission is late
    a.late_penalty = 0.6  # never below zero
    assert grades.pick(subs, a).score == 0.0


def test_a_regrade_takes_the_submissions_that_count_or_could():
    deadline = datetime(2026, 12, 1, 12, 0)
    a = Assignment(name=HW, deadline=deadline, policy="last", late_penalty=None)
    first = _sub(1, deadline - timedelta(hours=5), 9.0)
    on_time = _sub(2, deadline - timedelta(hours=1), 4.0)
    late = _sub(3, deadline + timedelta(hours=1), 10.0)
    subs = [first, on_time, late]
    # control: the old rule regraded each student's last submission, a late one that does
    # not count; the one that counts kept the old tests' score
    assert max(subs, key=lambda s: s.created_at) is late
    assert grades.pick(subs, a).submission is on_time
    assert grades.to_regrade(subs, a) == [on_time]
    a.late_penalty = 0.1  # now the late one counts under "last"; the on-time one counted
    assert grades.to_regrade(subs, a) == [late]
    a.policy = "best"  # any may turn out best
    assert grades.to_regrade(subs, a) == [first, on_time, late]
    a.late_penalty = None
    assert grades.to_regrade(subs, a) == [first, on_time]
    a.policy = "last"  # the last that may count is not graded yet: it and the counting one
    pending = _sub(4, deadline - timedelta(minutes=5), 0.0, state="queued")
    assert grades.to_regrade([*subs, pending], a) == [pending, on_time]


def test_a_manual_grade_counts_only_for_the_submission_the_gradebook_holds():
    from types import SimpleNamespace

    t = datetime(2026, 12, 1, 12, 0)
    a = Assignment(name=HW, deadline=None, policy="best", late_penalty=None)
    older, newer = _sub(1, t, 9.0), _sub(2, t + timedelta(hours=1), 4.0)
    older.graded_at, newer.graded_at = t, t + timedelta(hours=1)  # the gradebook holds newer
    alice = SimpleNamespace(id=1, login="alice", name="Alice")
    (row,) = grades.rows([alice], [older, newer], a, 10.0, manual={"alice": 6.0})
    assert (row["submission"], row["score"]) == (1, 9.0)  # best: older; manual is newer's
    (row,) = grades.rows([alice], [older, newer], a, 10.0, manual={"alice": 9.5})
    assert (row["submission"], row["score"]) == (1, 9.0)  # newer's 9.5 is not picked again
    a.policy = "last"
    (row,) = grades.rows([alice], [older, newer], a, 10.0, manual={"alice": 6.0})
    assert (row["submission"], row["score"], row["raw_score"]) == (2, 6.0, 6.0)


def test_the_service_adds_its_mathjax_to_a_stored_page():
    from dnncourse.service.web import OWN_MATHJAX, with_mathjax

    scrubbed = "<html><head><title>x</title></head><body><p>$x^2$</p></body></html>"
    assert with_mathjax(scrubbed).index(OWN_MATHJAX) < with_mathjax(scrubbed).index("</head>")
    old = (
        '<head><script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/latest.js?'
        'config=TeX-AMS_CHTML-full,Safe"> </script><script type="text/x-mathjax-config">'
        "init_mathjax()</script></head>"
    )
    assert with_mathjax(old) == f"<head>{OWN_MATHJAX}</head>"


def test_histogram_counts_each_score_once():
    svg = grades.histogram_svg([0, 0, 5, 9.99, 10, 10], 10.0, bins=10)
    counts = [int(n) for n in re.findall(r": (\d+)</title>", svg)]
    assert counts == [2, 0, 0, 0, 0, 1, 0, 0, 0, 3]  # 10 falls in the last bin


def test_names_and_notebook_checks():
    for bad in ("../x.ipynb", "a/b.ipynb", "..", ".hidden.ipynb", "a\\b.ipynb", "/etc/passwd"):
        assert not safe_name(bad), bad
    assert safe_name("my homework (1).ipynb")
    ok = json.dumps({"cells": [], "nbformat": 4, "metadata": {}}).encode()
    assert checked_notebook("x.ipynb", ok, 100) is None
    assert "not JSON" in checked_notebook("x.ipynb", b"\x89PNG\r\n", 100)
    assert "not a Jupyter notebook" in checked_notebook("x.ipynb", b"[1, 2]", 100)
    assert "larger than" in checked_notebook("x.ipynb", ok, 10)
    assert "plain notebook file name" in checked_notebook("../x.ipynb", ok, 100)


def test_serve_arguments_and_a_clear_error_for_a_scheduler(tmp_path, capsys):
    from dnncourse.cli import main, parser

    args = parser().parse_args(["serve", "--data", str(tmp_path)])
    assert (args.host, args.port, args.per_hour, args.policy) == ("127.0.0.1", 8000, 10, "last")
    assert args.late_penalty is None and args.max_upload_mb == 5
    assert main(["serve", "--data", str(tmp_path), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "Dask grading engine" in capsys.readouterr().err
    assert main(["serve", "--data", str(tmp_path), "--assignments", "hw99"]) == 2
    assert "unknown assignments ['hw99']" in capsys.readouterr().err


# -- the server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("service") / "data"
    port = free_port()
    link = instructor_link(data, port)
    srv = start(
        data,
        *("--jobs", "2", "--per-hour", "2", "--max-upload-mb", "1"),
        *("--cell-timeout", "60", "--timeout", "300"),
        port=port,
    )
    srv.instructor = link
    yield srv
    srv.stop()


def query(server, sql: str, *args):
    with sqlite3.connect(server.data / "service.db") as db:
        return db.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def people(server):
    """The instructor signed in, the roster imported; alice has handed in the stub."""
    prof = Client(server.url)
    prof.signin(server.instructor)
    links = prof.roster([("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol"), ("mallory", "M")])
    clients = {"prof": prof, "links": links}
    for name in ("alice", "bob", "mallory"):
        clients[name] = Client(server.url)
        clients[name].signin(links[name], password=f"{name} hands in notebooks")
    clients["alice_sub"] = clients["alice"].submission_id(
        clients["alice"].upload(RELEASE.read_bytes())
    )
    yield clients
    for client in clients.values():
        if isinstance(client, Client):
            client.http.close()


def test_sign_in_links_work_once_and_passwords_are_argon2_hashes(server, people):
    again = Client(server.url)
    cookie = again.get("/login").headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert again.get(people["links"]["alice"][len(server.url) :]).status_code == 404
    assert again.login("alice", "wrong password").status_code == 401
    assert again.login("nobody", "alice hands in notebooks").status_code == 401
    assert again.login("alice", "alice hands in notebooks").status_code == 303
    assert again.get("/assignments").status_code == 200
    hashes = [h for (h,) in query(server, "SELECT password_hash FROM users")]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes if h)
    assert not any("alice hands in" in (h or "") for h in hashes)


def test_no_secret_in_the_log_and_the_data_folder_is_private(server, people):
    people["alice"].wait(people["alice_sub"])  # graded: feedback and gradebook written
    log = server.log.read_text()
    assert "GET /login HTTP/1.1" in log, "control: the access log is on"
    assert "/signin/[hidden]" in log, "the sign-in requests were logged"
    tokens = [link.rsplit("/", 1)[1] for link in people["links"].values()]
    tokens.append(server.instructor.rsplit("/", 1)[1])
    assert len(tokens) == 5 and not [t for t in tokens if t in log]
    assert "hands in notebooks" not in log  # nor a password
    # The data folder was made by the test (world-readable under its umask 022) and by the
    # service: now nothing in it is open to another user of the machine.
    control = server.data.parent / "made-by-the-test"
    control.mkdir(exist_ok=True)
    assert control.stat().st_mode & 0o077 == 0o055
    assert server.data.stat().st_mode & 0o777 == 0o700
    names = ["service.db", "secret_key", "gradebook.db", "submissions", "feedback"]
    for name in names:
        assert (server.data / name).stat().st_mode & 0o077 == 0, name
    for folder in ("submissions", "feedback"):
        for path in (server.data / folder).rglob("*"):
            assert path.stat().st_mode & 0o077 == 0, path


def test_a_service_that_cannot_listen_changes_nothing(tmp_path):
    import socket
    import subprocess

    from service_harness import serve_command

    from dnncourse.homework import tool_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        out = subprocess.run(
            serve_command(data, port), cwd=ROOT, env=tool_env(), capture_output=True,
            text=True, timeout=600,  # the CLI imports torch: slow on a loaded machine
        )  # fmt: skip
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert not data.exists(), "nothing was created"
    assert "signin" not in out.stdout + out.stderr


def _paths(server, people) -> list[tuple[str, str]]:
    uid = query(server, "SELECT id FROM users WHERE login = 'alice'")[0][0]
    values = {
        "name": HW, "id": str(people["alice_sub"]), "uid": str(uid),
        "notebook": NAME, "token": "not-a-token", "file": f"{NAME}.ipynb",
    }  # fmt: skip
    out = []
    for route in ROUTES:
        path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values[m.group(1)], route.path)
        out += [(method, path) for method in sorted(route.methods) if method != "HEAD"]
    return out


def test_every_route_refuses_a_visitor_without_a_session(server, people):
    people["alice"].wait(people["alice_sub"])  # graded: its feedback exists
    visitor = Client(server.url)
    paths = _paths(server, people)
    assert len(paths) >= len(ROUTES)
    public = {("GET", "/login"), ("GET", "/")}
    for method, path in paths:
        response = visitor.http.request(method, path, data={})
        if (method, path) in public:
            assert response.status_code in (200, 303)
            continue
        if path.startswith("/signin/"):
            assert response.status_code in (403, 404), (method, path)
        elif method == "GET":
            assert response.status_code in (303, 401), (method, path, response.status_code)
            if response.status_code == 303:
                assert response.headers["location"] == "/login"
        else:
            assert response.status_code in (401, 403), (method, path, response.status_code)
        assert "alice" not in response.text.lower() and "Alice" not in response.text


def test_students_reach_only_their_own_submissions(server, people):
    bob, alice, sub = people["bob"], people["alice"], people["alice_sub"]
    assert alice.get(f"/submissions/{sub}").status_code == 200
    assert alice.get(f"/submissions/{sub}/feedback/{NAME}").status_code == 200
    for path in (
        f"/submissions/{sub}",
        f"/submissions/{sub}.json",
        f"/submissions/{sub}/feedback/{NAME}",
        f"/submissions/{sub}/files/{NAME}.ipynb",
    ):
        response = bob.get(path)
        assert response.status_code == 404, path
        assert "alice" not in response.text.lower()
    for method, path in _paths(server, people):
        if path.startswith("/instructor"):
            bob.get("/assignments")  # a valid CSRF token: refused for the role, not the token
            response = bob.post(path) if method == "POST" else bob.get(path)
            assert response.status_code == 403, (method, path)
    assert people["prof"].get(f"/submissions/{sub}").status_code == 200  # instructors may


def test_posts_without_the_csrf_token_are_refused(server, people):
    alice, prof = people["alice"], people["prof"]
    before = query(server, "SELECT count(*) FROM submissions")[0][0]
    data = RELEASE.read_bytes()
    files = {NAME: (f"{NAME}.ipynb", data)}
    assert alice.post(f"/assignments/{HW}/submit", files=files, csrf=False).status_code == 403
    forged = dict(csrf=people["bob"].csrf)  # another session's token
    assert (
        alice.http.post(f"/assignments/{HW}/submit", data=forged, files=files).status_code == 403
    )
    assert query(server, "SELECT count(*) FROM submissions")[0][0] == before
    roster = {"roster": ("r.csv", "student_id,name\neve,Eve\n", "text/csv")}
    assert prof.post("/instructor/roster", files=roster, csrf=False).status_code == 403
    assert not query(server, "SELECT id FROM users WHERE login = 'eve'")
    assert alice.post("/logout", csrf=False).status_code == 403
    assert alice.get("/assignments").status_code == 200  # still signed in
    assert (
        Client(server.url)
        .post("/login", {"login": "alice", "password": "alice hands in notebooks"}, csrf=False)
        .status_code
        == 403
    )


def test_uploads_that_are_not_notebooks_are_refused(server, people):
    alice = people["alice"]
    before = query(server, "SELECT count(*) FROM submissions")[0][0]
    stored = sorted(p.name for p in (server.data / "submissions").iterdir())
    big = json.loads(RELEASE.read_text())
    big["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "x" * 2**21})
    cases = [
        (json.dumps(big).encode(), f"{NAME}.ipynb", NAME, 413, "larger than 1 MiB"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, f"{NAME}.ipynb", NAME, 400, "not JSON"),
        (b'{"cells": "no"}', f"{NAME}.ipynb", NAME, 400, "not a Jupyter notebook"),
        (RELEASE.read_bytes(), "../../../../evil.ipynb", NAME, 400, "plain notebook file name"),
        (RELEASE.read_bytes(), "..\\..\\evil.ipynb", NAME, 400, "plain notebook file name"),
        (RELEASE.read_bytes(), f"{NAME}.ipynb", "../../evil", 400, "has no notebook"),
    ]
    for data, filename, field, status, message in cases:
        response = alice.upload(data, filename=filename, field=field)
        assert response.status_code == status, (filename, field, response.text[-500:])
        assert message in response.text.replace("&#39;", "'"), response.text[-500:]
    assert query(server, "SELECT count(*) FROM submissions")[0][0] == before
    assert sorted(p.name for p in (server.data / "submissions").iterdir()) == stored
    for folder in (server.data, server.data.parent, server.data.parent.parent, ROOT):
        assert not list(folder.rglob("evil*")), folder


def test_script_in_outputs_and_html_in_messages_never_run(server, people, driver):
    mallory = people["mallory"]
    nb = insert_after(notebook(correct=ALL[1:], replace={"cubic_gradients": RAISES}), "setup",
                      code(XSS_CELL, "xss"))  # fmt: skip
    sub = mallory.submission_id(mallory.upload(nb))
    view = mallory.wait(sub)
    assert view["score"] == 5.0  # cubic_gradients (3) and fit_cubic (2) fail
    # the student's exception was raised, but its text never reaches a message (the verdict
    # is written outside the student's process)
    assert any("raised ValueError" in c["message"] for c in view["checks"]), view["checks"]
    assert not any("PWNED" in c["message"] for c in view["checks"])
    page = mallory.get(f"/submissions/{sub}").text
    assert "raised ValueError" in page and "PWNED-MSG" not in page
    assert '<iframe sandbox="allow-scripts"' in page  # without allow-same-origin
    # The attack ran: the graded notebook (stored for formgrader) holds the display's output;
    # its HTML was dropped before storing (grading.safe_html), only the text form is left.
    graded = server.data / "grading" / HW / "course" / "autograded" / "mallory" / HW
    outputs = [
        o for c in json.loads((graded / f"{NAME}.ipynb").read_text())["cells"]
        for o in c.get("outputs", [])
    ]  # fmt: skip
    shown = ["".join(o.get("data", {}).get("text/plain", "")) for o in outputs]
    assert "<IPython.core.display.HTML object>" in shown, "the attack ran"
    assert not any("text/html" in o.get("data", {}) for o in outputs)
    fb = mallory.get(f"/submissions/{sub}/feedback/{NAME}")
    assert "<script>console.log('PWNED-RAN')" not in fb.text, "outputs shown as text only"
    assert "<b id='xss'>" not in fb.text
    assert "&lt;script&gt;console.log('PWNED-RAN')" in fb.text  # the cell's source, escaped
    csp = dict(d.strip().split(" ", 1) for d in fb.headers["content-security-policy"].split(";"))
    assert csp["sandbox"] == "allow-scripts" and csp["default-src"] == "'none'"
    scripts = csp["script-src"].split()  # the service's MathJax only: no inline, no other
    assert scripts == [f"{server.url}/mathjax/", f"{server.url}/static/mathjax-config.js"]
    if driver is None:
        pytest.skip("chromium not installed: the headers and markup were checked")
    # Control: the HTML the notebook displayed, shown as HTML, runs (and the log shows it).
    driver.get("about:blank")
    driver.execute_script(
        "document.open(); document.write(arguments[0]); document.close();", PAYLOAD
    )
    time.sleep(0.5)
    assert any("PWNED-RAN" in e["message"] for e in driver.get_log("browser")), "control"
    # The service's pages: neither the feedback frame nor the message table runs anything.
    _browser_login(driver, server, "mallory", "mallory hands in notebooks")
    driver.get(f"{server.url}/submissions/{sub}")
    _wait(driver, lambda: driver.execute_script(
        "const f = document.querySelector('iframe.feedback');"
        "return f && f.getAttribute('src') && performance.getEntriesByType('resource')"
        ".some(e => e.name.includes('/feedback/'));"))  # fmt: skip
    time.sleep(1.0)
    messages = [e["message"] for e in driver.get_log("browser")]
    assert not any("PWNED" in m and "Blocked" not in m for m in messages), messages
    assert driver.title != "PWNED"
    assert not driver.find_elements("css selector", "#checks img")
    assert "raised ValueError" in driver.find_element("id", "checks").text
    _browser_logout(driver)


def test_the_hourly_limit_says_when_to_come_back(server, people):
    mallory = people["mallory"]  # one hand-in so far (the test above, or none if it skipped)
    while query(server, "SELECT count(*) FROM submissions s JOIN users u ON s.user_id = u.id "
                "WHERE u.login = 'mallory'")[0][0] < 2:  # fmt: skip
        assert mallory.upload(RELEASE.read_bytes()).status_code == 303
    response = mallory.upload(RELEASE.read_bytes())
    assert response.status_code == 429
    assert (
        "the limit is 2 per hour" in response.text and "You can hand in again at" in response.text
    )
    count = query(server, "SELECT count(*) FROM submissions s JOIN users u ON s.user_id = u.id "
                  "WHERE u.login = 'mallory'")[0][0]  # fmt: skip
    assert count == 2


def _grades(prof) -> dict[str, dict]:
    response = prof.get(f"/instructor/assignments/{HW}/grades.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    return {r["student_id"]: r for r in csv.DictReader(response.text.splitlines())}


def test_deadline_penalty_and_policy_reach_grades_csv(server, people):
    prof, mallory = people["prof"], people["mallory"]
    ids = [i for (i,) in query(server, "SELECT s.id FROM submissions s JOIN users u ON "
                               "s.user_id = u.id WHERE u.login = 'mallory'")]  # fmt: skip
    views = [mallory.wait(i) for i in ids]  # the hand-ins above ended (none still queued)
    graded = [v for v in views if v["state"] == "graded"]
    best = max(v["score"] for v in graded)  # 5.0: the notebook with the <script>
    assert best == 5.0
    prof.get(f"/instructor/assignments/{HW}")
    past = (datetime.now(UTC) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    settings = {"deadline": past, "per_hour": "2", "policy": "best", "late_penalty": "0.5"}
    url = f"/instructor/assignments/{HW}/settings"
    assert prof.post(url, settings).status_code == 303
    row = _grades(prof)["mallory"]  # handed in under 30 min late: 1 started day, half off
    assert (float(row["score"]), float(row["raw_score"]), row["late_days"]) == (2.5, 5.0, "1")
    assert prof.post(url, {**settings, "late_penalty": ""}).status_code == 303
    row = _grades(prof)["mallory"]  # no penalty set: late hand-ins do not count
    assert (float(row["score"]), row["submission"], row["status"]) == (0.0, "", "missing notebook")
    for bad in ({"per_hour": "-1"}, {"late_penalty": "2"}, {"deadline": "tomorrow"},
                {"policy": "median"}):  # fmt: skip
        assert prof.post(url, {**settings, **bad}).status_code == 400, bad
    restore = {"deadline": "", "per_hour": "2", "policy": "last", "late_penalty": ""}
    assert prof.post(url, restore).status_code == 303
    assert float(_grades(prof)["mallory"]["score"]) in {v["score"] for v in graded}


# -- the browser -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("DNNCOURSE_REQUIRE_BROWSER") == "1":  # set by .ci/run
            pytest.fail(f"DNNCOURSE_REQUIRE_BROWSER=1 but {CHROMIUM} is not installed")
        yield None
        return
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dnncourse-chromium-")
    downloads = Path(profile) / "downloads"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1600",
                f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(60)
    drv.downloads = downloads
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(f"waited {timeout} s on {driver.current_url}")


def _browser_login(driver, server, login, password):
    driver.get(f"{server.url}/login")
    driver.find_element("id", "login").send_keys(login)
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("id", "signin").click()
    _wait(driver, lambda: "/login" not in driver.current_url, 30)


def _browser_logout(driver):
    driver.find_element("id", "logout").click()
    _wait(driver, lambda: driver.current_url.endswith("/login"), 30)


def _hand_in(driver, server, nb: dict, folder: Path) -> str:
    path = folder / f"{NAME}.ipynb"
    path.write_text(json.dumps(nb))
    driver.get(f"{server.url}/assignments/{HW}")
    driver.find_element("id", f"file-{NAME}").send_keys(str(path))
    driver.find_element("id", "handin").click()
    _wait(driver, lambda: re.search(r"/submissions/\d+$", driver.current_url), 60)
    driver.execute_script("window.notReloaded = true;")  # a reload would forget it
    seen = {driver.find_element("id", "state").text}
    _wait(driver, lambda: seen.add(driver.find_element("id", "state").text) or "graded" in seen)
    assert seen & {"queued", "grading"}, f"the page showed only {seen}"
    assert driver.execute_script("return window.notReloaded === true;"), "the page reloaded"
    return driver.find_element("id", "score").text


@pytest.mark.browser
@pytest.mark.slow
def test_a_student_hands_in_in_the_browser_and_the_instructor_downloads_grades(
    server, people, driver, tmp_path
):
    if driver is None:
        pytest.skip(
            f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        )
    driver.get(people["links"]["carol"])
    driver.find_element("id", "password").send_keys("carol hands in notebooks")
    driver.find_element("id", "again").send_keys("carol hands in notebooks")
    driver.find_element("id", "setpassword").click()
    _wait(driver, lambda: driver.current_url.endswith("/assignments"), 30)
    assert HW in driver.find_element("tag name", "table").text

    wrong = notebook(correct=ALL[1:], replace={"cubic_gradients": FLOAT32})
    assert _hand_in(driver, server, wrong, tmp_path) == "5 / 10"
    rows = driver.find_elements("css selector", "#checks tbody tr.fail")
    failing = {r.find_elements("tag name", "td")[0].text: r.text for r in rows}
    assert set(failing) == {"test_cubic_gradients", "test_fit_cubic"}
    assert HIDDEN_MESSAGE in failing["test_cubic_gradients"]
    written = "random points"  # the words of the hidden probe
    assert written in (ROOT / "solutions" / HW / f"{NAME}.ipynb").read_text()
    assert written not in RELEASE.read_text(), "the message is the hidden test's"
    text = driver.find_element("tag name", "body").text
    shown = [line for line in hidden_test_lines() if line in text]
    assert not shown, f"hidden test source shown: {shown[:2]}"

    assert _hand_in(driver, server, notebook(correct=ALL), tmp_path) == "10 / 10"
    assert not driver.find_elements("css selector", "#checks tbody tr.fail")
    driver.get(f"{server.url}/assignments/{HW}")
    assert "10 / 10" in driver.find_element("id", "history").text
    _browser_logout(driver)

    _instructor_in_browser(driver, server)
    driver.get(f"{server.url}/instructor/assignments/{HW}")
    driver.find_element("id", "grades-csv").click()
    target = driver.downloads / f"{HW}-grades.csv"
    _wait(driver, target.is_file, 30)
    with open(target) as f:
        table = {r["student_id"]: r for r in csv.DictReader(f)}
    assert set(table) == {"alice", "bob", "carol", "mallory"}
    assert float(table["carol"]["score"]) == 10.0 and table["carol"]["status"] == "ok"
    assert float(table["bob"]["score"]) == 0.0 and table["bob"]["submission"] == ""

    from nbgrader.api import Gradebook  # formgrader and nbgrader export read this

    with Gradebook(f"sqlite:///{server.data / 'gradebook.db'}", "dnncourse") as gb:
        assert gb.find_submission(HW, "carol").score == 10.0


def _instructor_in_browser(driver, server):
    link = instructor_link(server.data, int(server.url.rsplit(":", 1)[1]), "ta")
    driver.get(link)
    driver.find_element("id", "password").send_keys("ta hands in notebooks")
    driver.find_element("id", "again").send_keys("ta hands in notebooks")
    driver.find_element("id", "setpassword").click()
    _wait(driver, lambda: driver.current_url.endswith("/instructor"), 30)


@pytest.mark.browser
def test_in_the_browser_a_new_password_signs_out_other_browsers_and_guessing_is_paused(
    server, people, driver
):
    if driver is None:
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}")
    bob = people["bob"]  # bob's other browser (httpx), signed in
    assert bob.get("/assignments").status_code == 200
    _browser_login(driver, server, "bob", "bob hands in notebooks")
    driver.find_element("id", "account").click()
    _wait(driver, lambda: driver.current_url.endswith("/account"), 30)
    for field, text in (("current", "bob hands in notebooks"), ("password", "12345678"),
                        ("again", "12345678")):  # fmt: skip
        driver.find_element("id", field).send_keys(text)
    driver.find_element("id", "change").click()
    _wait(driver, lambda: "too easy to guess" in driver.page_source, 30)
    new = "bob grades in the browser"
    for field, text in (("current", "bob hands in notebooks"), ("password", new), ("again", new)):
        driver.find_element("id", field).clear()
        driver.find_element("id", field).send_keys(text)
    driver.find_element("id", "change").click()
    _wait(driver, lambda: driver.find_elements("id", "changed"), 30)
    assert bob.get("/assignments").status_code == 303, "the other browser is signed out"
    assert bob.login("bob", new).status_code == 303
    _browser_logout(driver)
    for i in range(5):  # five wrong passwords for one account, then the right one
        driver.get(f"{server.url}/login")
        driver.find_element("id", "login").send_keys("bob")
        driver.find_element("id", "password").send_keys(f"wrong {i}")
        driver.find_element("id", "signin").click()
        _wait(driver, lambda: "Wrong id or password" in driver.page_source, 30)
    driver.get(f"{server.url}/login")
    driver.find_element("id", "login").send_keys("bob")
    driver.find_element("id", "password").send_keys(new)
    driver.find_element("id", "signin").click()
    _wait(driver, lambda: "Too many wrong passwords for bob" in driver.page_source, 30)
    assert driver.current_url.endswith("/login")
    query(server, "DELETE FROM signin_failures")  # bob may sign in again (for later tests)


def test_regrading_one_student_grades_again(server, people):
    prof, alice, sub = people["prof"], people["alice"], people["alice_sub"]
    alice.wait(sub)
    assert query(server, "SELECT finished FROM submissions WHERE id = ?", sub) == [(1,)]
    prof.get(f"/instructor/assignments/{HW}")
    response = prof.post(f"/instructor/assignments/{HW}/regrade", {"student": "alice"})
    assert response.status_code == 303 and "regrading+1" in response.headers["location"]
    deadline = time.monotonic() + 300
    while query(server, "SELECT finished FROM submissions WHERE id = ?", sub) != [(2,)]:
        assert time.monotonic() < deadline, "the regrade did not finish"
        time.sleep(1)
    assert alice.wait(sub)["score"] == 0.0  # the stub, again
    assert query(server, "SELECT version FROM assignments WHERE name = ?", HW) == [(2,)]
    dash = prof.get(f"/instructor/assignments/{HW}").text
    assert "<svg" in dash and "histogram" in dash


@pytest.mark.browser
def test_the_new_pages_in_the_browser(server, people, driver, tmp_path):
    """Math typeset in the feedback; a student's hand-ins left and their own file; then
    extensions, the per-question table, the audit log, links as CSV, dropping a student."""
    if driver is None:
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}")
    people["alice"].wait(people["alice_sub"])  # graded: it counts, with its checks
    _browser_login(driver, server, "alice", "alice hands in notebooks")
    # the math of the statement is typeset, by the service's own MathJax, in the frame
    stored = (server.data / "feedback" / str(people["alice_sub"]) / f"{NAME}.html").read_text()
    assert r"$\hat y = a + bx" in stored and "<script" not in stored  # control: TeX, no script
    driver.get(f"{server.url}/submissions/{people['alice_sub']}")
    driver.switch_to.frame(driver.find_element("css selector", "iframe.feedback"))
    _wait(driver, lambda: driver.execute_script(
        "return document.querySelectorAll('.MathJax, .MathJax_Display').length"), 60)  # fmt: skip
    assert r"$\hat y" not in driver.find_element("tag name", "body").text
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert any("/mathjax/MathJax.js" in u for u in loaded) and not any(
        "cdnjs" in u for u in loaded
    )
    driver.switch_to.default_content()
    driver.get(f"{server.url}/assignments/{HW}")
    assert driver.find_element("id", "left").text.endswith("left")
    mine = driver.find_element("css selector", "a.own-file")
    assert mine.text == f"{NAME}.ipynb"
    mine.click()
    stored = driver.downloads / f"{NAME}.ipynb"
    _wait(driver, stored.is_file, 30)
    assert stored.read_bytes() == RELEASE.read_bytes()  # alice handed in the release
    _browser_logout(driver)

    _instructor_in_browser(driver, server)
    driver.get(f"{server.url}/instructor/assignments/{HW}")
    questions = driver.find_element("id", "questions").text
    assert "test_cubic_gradients" in questions and "test_fit_cubic" in questions
    driver.find_element("id", "extension-student").send_keys("alice")
    driver.find_element("id", "extension-deadline").send_keys("2030-01-02T03:04")
    driver.find_element("id", "extension-save").click()
    _wait(driver, lambda: "extension saved" in driver.page_source, 30)
    assert "alice 2030-01-02 03:04 UTC" in driver.find_element("id", "extensions").text
    driver.get(f"{server.url}/instructor")
    roster = tmp_path / "roster.csv"
    roster.write_text("student_id,name,email\ndave,Dave,dave@example.org\n")
    driver.find_element("css selector", "#roster input[type=file]").send_keys(str(roster))
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "links-as")).select_by_value("csv")
    driver.find_element("css selector", "#roster button").click()
    links = driver.downloads / "links.csv"
    _wait(driver, links.is_file, 30)
    with open(links) as f:
        (row,) = list(csv.DictReader(f))
    assert row["student_id"] == "dave" and "/signin/" in row["link"]
    driver.get(f"{server.url}/instructor")
    driver.find_element("id", "drop-dave").click()
    _wait(driver, lambda: "dave dropped" in driver.page_source, 30)
    assert not driver.find_elements("id", "drop-dave")
    driver.find_element("id", "audit").click()
    _wait(driver, lambda: driver.find_elements("id", "audit-log"), 30)
    log = driver.find_element("id", "audit-log").text
    assert "extension" in log and "drop dave" in log and "sign-in links for dave" in log
    assert row["link"].rsplit("/", 1)[1] not in log
    _browser_logout(driver)


def test_a_manual_grade_of_the_submission_that_counts_reaches_grades_csv(server, people):
    """An instructor grades by hand in formgrader (nbgrader's gradebook) after the grading."""
    from nbgrader.api import Gradebook

    prof, alice = people["prof"], people["alice"]
    sub = alice.wait(people["alice_sub"])
    assert sub["score"] == 0.0  # the stub, graded again by the regrade above
    before = _grades(prof)["alice"]
    assert (float(before["score"]), before["submission"]) == (0.0, str(people["alice_sub"]))
    with Gradebook(f"sqlite:///{server.data / 'gradebook.db'}", "dnncourse") as gb:
        grade = gb.find_grade("test_cubic_gradients", NAME, HW, "alice")
        grade.manual_score = 2.5  # of 3
        gb.db.commit()
    # control: the service's own record of the submission still says 0
    assert query(server, "SELECT score FROM submissions WHERE id = ?", people["alice_sub"]) == [
        (0.0,)
    ]
    row = _grades(prof)["alice"]
    assert (float(row["score"]), float(row["raw_score"])) == (2.5, 2.5)
    assert "2.5 / 10" in prof.get(f"/instructor/assignments/{HW}").text
