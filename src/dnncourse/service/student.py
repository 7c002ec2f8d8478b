"""Sign-in and the students' pages: assignments, hand-in, the submission and its feedback.

A student reaches only their own submissions (another's is "not found", as one that does
not exist). An upload must be notebook JSON under a plain ``.ipynb`` name, within the size
cap; it is stored under the released notebook's name. Feedback pages from the grader may
hold anything a notebook printed (as text: the grader keeps no HTML output): they are served
with a CSP ``sandbox allow-scripts`` (an opaque origin: no cookies, no access to the page
around it) whose only scripts are the service's own MathJax, which typesets the math of the
Markdown cells, and shown in an ``<iframe sandbox="allow-scripts">``.
"""

import asyncio
import contextlib
import hashlib
import json
import math

from sqlalchemy import select
from starlette.datastructures import UploadFile
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
)

from ..homework import layout
from . import auth, grades
from .grader import safe_name
from .jobs import RateLimited
from .models import GRADED, QUEUED, Assignment, Submission, User, utcnow
from .web import (
    Problem,
    feedback_csp,
    find_assignment,
    own_submission,
    page,
    released,
    student_rules,
    with_mathjax,
)

MAX_WAIT = 25.0  # seconds a long poll of a submission is held open (below proxies' timeouts)
MAX_DEPTH = 64  # a notebook nests about 6 deep (cells, outputs, data); widget state a few more


def depth(value) -> int:
    """How deeply ``value`` (parsed JSON) nests lists and objects, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def checked_notebook(name: str, data: bytes, cap: int) -> str | None:
    """What is wrong with an uploaded notebook file, or None."""
    if not safe_name(name) or not name.endswith(".ipynb"):
        return f"{name!r} is not a plain notebook file name (it must end in .ipynb)."
    if len(data) > cap:
        return f"{name} is larger than {cap / 2**20:g} MiB."
    if not data:
        return f"{name} is empty."
    try:
        nb = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return f"{name} is not a notebook: it is not JSON."
    except RecursionError:
        return f"{name} is not a notebook: its JSON is nested too deeply."
    if depth(nb) > MAX_DEPTH:
        return f"{name} is not a notebook: its JSON is nested more than {MAX_DEPTH} deep."
    if (
        not isinstance(nb, dict)
        or not isinstance(nb.get("cells"), list)
        or nb.get("nbformat") != 4
    ):
        return f"{name} is JSON but not a Jupyter notebook (version 4)."
    return None


def _view(sub: Submission) -> dict:
    """What the student's page and the JSON endpoint show of a submission."""
    return {
        "id": sub.id,
        "assignment": sub.assignment,
        "state": sub.state,
        "status": sub.status if sub.state == GRADED else "",
        "score": sub.score if sub.state == GRADED else None,
        "max_score": sub.max_score if sub.state == GRADED else None,
        "submitted_at": sub.created_at.isoformat(timespec="seconds") + "Z",
        "graded_at": sub.graded_at.isoformat(timespec="seconds") + "Z" if sub.graded_at else None,
        "checks": sub.checks if sub.state == GRADED else [],
        "detail": sub.detail if sub.state == GRADED else "",
        "feedback": [name[: -len(".ipynb")] for name, *_ in sub.files],
    }


# -- sign-in -------------------------------------------------------------------------------
@page(role=None)
def home(service, request, db, user, form):
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse("/instructor" if user.is_instructor else "/assignments", 303)


def _address(request) -> str:
    return request.client.host if request.client else "unknown"


@page(role=None)
def login(service, request, db, user, form):
    if request.method == "GET":
        return service.render(request, "login.html")
    name = str(form.get("login", ""))[:200]
    try:
        auth.check_throttle(db, name, _address(request))  # before any hash is computed
    except auth.Throttled as throttled:
        return service.render(request, "login.html", status=429, error=str(throttled))
    found = db.scalar(select(User).where(User.login == name))
    if not auth.verify_password(found, str(form.get("password", ""))):
        auth.failed(db, name, _address(request))
        return service.render(request, "login.html", status=401, error="Wrong id or password.")
    auth.clear_failures(db, name)
    if found.role == "dropped":
        raise Problem(403, "This account was dropped from the course: ask your instructor.")
    auth.start_session(db, request.session, found)
    return RedirectResponse("/", status_code=303)


@page(role=None)
def signin(service, request, db, user, form):
    link = auth.find_link(db, request.path_params["token"])
    if link is None or link.user.role == "dropped":
        raise Problem(404, "This sign-in link is unknown, used or expired: ask for a new one.")
    person = link.user
    if request.method == "GET":
        return service.render(request, "signin.html", person=person)
    password = str(form.get("password", ""))
    problem = auth.password_problem(password, str(form.get("again", "")), person)
    if problem:
        return service.render(request, "signin.html", status=400, person=person, error=problem)
    if not auth.consume_link(db, link):  # used meanwhile (by a second request at once)
        db.rollback()
        raise Problem(404, "This sign-in link is unknown, used or expired: ask for a new one.")
    person.password_hash = auth.hash_password(password)
    auth.end_sessions(db, person.id)  # a new password signs out every other browser
    auth.clear_failures(db, person.login)
    db.commit()
    auth.start_session(db, request.session, person)
    return RedirectResponse("/", status_code=303)


@page()
def logout(service, request, db, user, form):
    auth.end_session(db, request.session)
    return RedirectResponse("/login", status_code=303)


@page()
def account(service, request, db, user, form):
    """Change one's password: every other session of the account ends."""
    if request.method == "GET":
        return service.render(request, "account.html")
    try:
        auth.check_throttle(db, user.login, _address(request))
    except auth.Throttled as throttled:
        return service.render(request, "account.html", status=429, error=str(throttled))
    if not auth.verify_password(user, str(form.get("current", ""))):
        auth.failed(db, user.login, _address(request))
        return service.render(
            request, "account.html", status=401, error="The current password is wrong."
        )
    password = str(form.get("password", ""))
    problem = auth.password_problem(password, str(form.get("again", "")), user)
    if problem:
        return service.render(request, "account.html", status=400, error=problem)
    user.password_hash = auth.hash_password(password)
    auth.end_sessions(db, user.id)
    db.commit()
    auth.start_session(db, request.session, user)
    return service.render(
        request, "account.html", message="Password changed; other browsers are signed out."
    )


# -- students ------------------------------------------------------------------------------
@page()
def assignment_list(service, request, db, user, form):
    items = []
    for name in service.names:
        a = db.get(Assignment, name)
        if not (user.is_instructor or released(a)):
            continue
        rules = student_rules(db, user, a)
        subs = db.scalars(
            select(Submission).where(Submission.user_id == user.id, Submission.assignment == name)
        ).all()
        items.append((rules, len(subs), grades.pick(list(subs), rules)))
    return service.render(request, "assignments.html", items=items, now=utcnow())


@page()
def assignment_page(service, request, db, user, form):
    a = student_rules(db, user, find_assignment(service, db, request.path_params["name"], user))
    subs = db.scalars(
        select(Submission)
        .where(Submission.user_id == user.id, Submission.assignment == a.name)
        .order_by(Submission.id.desc())
    ).all()
    return service.render(
        request,
        "assignment.html",
        a=a,
        subs=subs,
        notebooks=service.grader.notebooks(a.name),
        counted=grades.pick(list(subs), a),
        left=service.jobs.left_this_hour(db, user, a),
        now=utcnow(),
        max_mib=service.config.max_upload_bytes / 2**20,
        error=request.query_params.get("error"),
    )


@page()
def download_release(service, request, db, user, form):
    a = find_assignment(service, db, request.path_params["name"], user)
    notebook = request.path_params["notebook"]
    if notebook not in service.grader.notebooks(a.name):
        raise Problem(404, "No such notebook.")
    path = service.config.root / layout(service.config.root).release / a.name / f"{notebook}.ipynb"
    return FileResponse(path, filename=f"{notebook}.ipynb", media_type="application/x-ipynb+json")


@page(upload=True)
def submit(service, request, db, user, form):
    a = find_assignment(service, db, request.path_params["name"], user)
    if user.is_instructor:
        raise Problem(403, "Instructors do not hand in; sign in as a student to try it.")
    rules = student_rules(db, user, a)
    if rules.closes_at is not None and utcnow() > rules.closes_at:
        raise Problem(
            403, f"{a.name} closed at {rules.closes_at:%Y-%m-%d %H:%M} UTC: no more hand-ins."
        )
    expected = service.grader.notebooks(a.name)
    files = {}
    for field, value in form.multi_items():
        if not isinstance(value, UploadFile) or not value.filename:
            continue
        data = value.file.read()
        problem = checked_notebook(value.filename, data, service.config.max_upload_bytes)
        if problem:
            raise Problem(400, problem)
        if field not in expected:
            raise Problem(400, f"{a.name} has no notebook {field!r}.")
        files[f"{field}.ipynb"] = data  # stored under the released name, whatever it was called
    if not files:
        raise Problem(400, "Choose a notebook to hand in.")
    try:
        sub = service.jobs.submit(db, user, a, files)
    except RateLimited as limited:
        raise Problem(429, str(limited)) from None
    return RedirectResponse(f"/submissions/{sub.id}", status_code=303)


@page()
def submission_page(service, request, db, user, form):
    sub = own_submission(db, user, request.path_params["id"])
    return service.render(request, "submission.html", sub=sub, view=_view(sub), owner=sub.user)


@page(json_errors=True)
def submission_json(service, request, db, user, form):
    sub = own_submission(db, user, request.path_params["id"])
    view = _view(sub)
    if sub.state == QUEUED:
        view["ahead"], estimate = service.jobs.position(db, sub.id)
        view["estimate_s"] = round(estimate) if estimate is not None else None
    view["tag"] = hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:16]
    return JSONResponse(view)


def _seconds(text: str | None) -> float:
    """``?wait=S`` as seconds, at most :data:`MAX_WAIT` (anything else: 0, no wait)."""
    try:
        seconds = float(text or 0)
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_WAIT) if math.isfinite(seconds) else 0.0


async def submission_watch(request):
    """A submission's JSON (:func:`submission_json`); with ``?since=TAG&wait=S`` a long poll:
    answered as soon as the view differs from the one tagged ``TAG`` (the queue wakes it the
    moment the submission changes), or after ``S`` seconds (at most :data:`MAX_WAIT`) with
    the same view. The page learns the feedback as it is stored, not at its next poll."""
    since, wait = request.query_params.get("since"), _seconds(request.query_params.get("wait"))
    if not since or not wait:
        return await submission_json(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with request.app.state.service.jobs.changed.watch(request.path_params["id"]) as changed:
        while True:
            changed.clear()  # before reading: a change after the read wakes the wait below
            response = await submission_json(request)
            left = deadline - loop.time()
            if response.status_code != 200 or json.loads(response.body)["tag"] != since:
                return response
            if left <= 0:
                return response
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)


@page()
def submitted_file(service, request, db, user, form):
    """A file of one's own submission, as it was stored."""
    sub = own_submission(db, user, request.path_params["id"])
    name = request.path_params["file"]
    if name not in [listed for listed, *_ in sub.files]:
        raise Problem(404, "No such file in this submission.")
    return FileResponse(
        service.jobs.store / sub.folder / name,
        filename=name,
        media_type="application/x-ipynb+json",
    )


@page()
def feedback(service, request, db, user, form):
    sub = own_submission(db, user, request.path_params["id"])
    notebook = request.path_params["notebook"]
    path = service.jobs.feedback / str(sub.id) / f"{notebook}.html"
    if sub.state != GRADED or not safe_name(notebook) or not path.is_file():
        raise Problem(404, "No feedback (yet).")
    origin = str(request.base_url).rstrip("/")
    return HTMLResponse(
        with_mathjax(path.read_text(errors="replace")),
        headers={"content-security-policy": feedback_csp(origin), "x-frame-options": "SAMEORIGIN"},
    )
