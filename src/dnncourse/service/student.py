"""Sign-in and the students' pages: assignments, hand-in, the submission and its feedback.

A student reaches only their own submissions (another's is "not found", as one that does
not exist). An upload must be notebook JSON under a plain ``.ipynb`` name, within the size
cap; it is stored under the released notebook's name. Feedback pages from the grader may
hold anything a notebook printed: they are served with a CSP ``sandbox`` (no script, no
same-origin) and shown in an ``<iframe sandbox>``.
"""

import json

from sqlalchemy import func, select
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
from .web import FEEDBACK_CSP, Problem, find_assignment, own_submission, page


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


@page(role=None)
def login(service, request, db, user, form):
    if request.method == "GET":
        return service.render(request, "login.html")
    found = db.scalar(select(User).where(User.login == str(form.get("login", ""))))
    if not auth.verify_password(found, str(form.get("password", ""))):
        return service.render(request, "login.html", status=401, error="Wrong id or password.")
    request.session.clear()
    request.session["uid"] = found.id
    return RedirectResponse("/", status_code=303)


@page(role=None)
def signin(service, request, db, user, form):
    link = auth.find_link(db, request.path_params["token"])
    if link is None:
        raise Problem(404, "This sign-in link is unknown, used or expired: ask for a new one.")
    if request.method == "GET":
        return service.render(request, "signin.html", person=link.user)
    password = str(form.get("password", ""))
    if len(password) < auth.MIN_PASSWORD or password != form.get("again"):
        return service.render(
            request,
            "signin.html",
            status=400,
            person=link.user,
            error=f"Type the same password twice, at least {auth.MIN_PASSWORD} characters.",
        )
    link.user.password_hash = auth.hash_password(password)
    link.used_at = utcnow()
    db.commit()
    request.session.clear()
    request.session["uid"] = link.user.id
    return RedirectResponse("/", status_code=303)


@page()
def logout(service, request, db, user, form):
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


# -- students ------------------------------------------------------------------------------
@page()
def assignment_list(service, request, db, user, form):
    items = []
    for name in service.names:
        a = db.get(Assignment, name)
        subs = db.scalars(
            select(Submission).where(Submission.user_id == user.id, Submission.assignment == name)
        ).all()
        items.append((a, len(subs), grades.pick(list(subs), a)))
    return service.render(request, "assignments.html", items=items, now=utcnow())


@page()
def assignment_page(service, request, db, user, form):
    a = find_assignment(service, db, request.path_params["name"])
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
        now=utcnow(),
        max_mib=service.config.max_upload_bytes / 2**20,
        error=request.query_params.get("error"),
    )


@page()
def download_release(service, request, db, user, form):
    a = find_assignment(service, db, request.path_params["name"])
    notebook = request.path_params["notebook"]
    if notebook not in service.grader.notebooks(a.name):
        raise Problem(404, "No such notebook.")
    path = service.config.root / layout(service.config.root).release / a.name / f"{notebook}.ipynb"
    return FileResponse(path, filename=f"{notebook}.ipynb", media_type="application/x-ipynb+json")


@page(upload=True)
def submit(service, request, db, user, form):
    a = find_assignment(service, db, request.path_params["name"])
    if user.is_instructor:
        raise Problem(403, "Instructors do not hand in; sign in as a student to try it.")
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
        view["ahead"] = db.scalar(
            select(func.count()).where(Submission.state == QUEUED, Submission.id < sub.id)
        )
    return JSONResponse(view)


@page()
def feedback(service, request, db, user, form):
    sub = own_submission(db, user, request.path_params["id"])
    notebook = request.path_params["notebook"]
    path = service.jobs.feedback / str(sub.id) / f"{notebook}.html"
    if sub.state != GRADED or not safe_name(notebook) or not path.is_file():
        raise Problem(404, "No feedback (yet).")
    return HTMLResponse(
        path.read_text(errors="replace"),
        headers={"content-security-policy": FEEDBACK_CSP, "x-frame-options": "SAMEORIGIN"},
    )
