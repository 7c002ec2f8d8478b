"""The web application (Starlette): sign-in, hand-in, feedback, the instructor's dashboard.

Every page needs a session except sign-in; student pages check that the submission is the
student's own, instructor pages the role; every POST checks the CSRF token; uploads are
read up to a size cap and must be notebook JSON under a plain file name. Feedback pages
from the grader may hold anything a notebook printed: they are served with a CSP
``sandbox`` (no script, no same-origin) and shown in an ``<iframe sandbox>``.
"""

import asyncio
import csv
import io
import json
import logging
import re
import secrets
from contextlib import asynccontextmanager
from datetime import datetime
from functools import wraps
from pathlib import Path

import jinja2
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..grading.protocol import Status
from . import auth, grades
from .config import ServiceConfig
from .grader import Grader, safe_name
from .jobs import Jobs, RateLimited
from .models import GRADED, QUEUED, Assignment, Submission, User, open_db, utcnow

log = logging.getLogger("dnncourse.service")
HERE = Path(__file__).parent
LOGIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'; frame-ancestors 'none'"
)
FEEDBACK_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'self'"
)
MAX_ROSTER_BYTES = 2 * 2**20


class Headers:
    """Security headers on every response (a route may set its own CSP first)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def sending(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = {
                    b"content-security-policy": PAGE_CSP.encode(),
                    b"x-content-type-options": b"nosniff",
                    b"referrer-policy": b"no-referrer",
                    b"x-frame-options": b"DENY",
                    b"cache-control": b"no-store",
                }
                headers += [(k, v) for k, v in extra.items() if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


class Problem(Exception):
    """A request we refuse, with the status code and a message for the person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    env.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M UTC") if t else "none"
    env.filters["num"] = lambda x: f"{x:g}" if isinstance(x, float | int) else x
    return env


class Service:
    """The application's state: settings, database, queue, templates."""

    def __init__(self, config: ServiceConfig, start_jobs: bool = True):
        config.data.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.sessions = open_db(config.database)
        self.grader = Grader(config)
        self.jobs = Jobs(config, self.sessions, self.grader)
        self.env = _env()
        self.names = config.assignments or sorted(
            p.name for p in (config.root / "solutions").iterdir() if p.is_dir()
        )
        config.assignments = self.names
        with self.sessions() as db:
            for name in self.names:
                if db.get(Assignment, name) is None:
                    db.add(
                        Assignment(
                            name=name,
                            per_hour=config.per_hour,
                            policy=config.policy,
                            late_penalty=config.late_penalty,
                        )
                    )
            db.commit()
        self.start_jobs = start_jobs

    def secret(self) -> str:
        path = self.config.data / "secret_key"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(48))
        return path.read_text().strip()

    def render(self, request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        context.setdefault("user", getattr(request.state, "user", None))
        context["csrf"] = auth.csrf_token(request.session)
        body = self.env.get_template(name).render(request=request, **context)
        return HTMLResponse(body, status_code=status)


# -- the route decorator -----------------------------------------------------------------------
def page(role: str | None = "any", upload: bool = False, json_errors: bool = False):
    """Wrap ``fn(service, request, db, user, form)``: session, role, CSRF, then the handler.

    ``role``: None (anyone), "any" (signed in), "instructor". The handler runs in a thread
    (it talks to the database); a :class:`Problem` becomes an error page (or JSON).
    """

    def wrap(fn):
        @wraps(fn)
        async def endpoint(request: Request):
            service: Service = request.app.state.service
            try:
                if role and "uid" not in request.session:
                    raise Problem(401, "Please sign in.")
                form = None
                if request.method == "POST":
                    if upload:
                        form = await _read_capped(request, service.config.max_upload_bytes)
                    else:
                        form = await request.form(max_files=1, max_fields=50)
                    sent = form.get("csrf") or request.headers.get("x-csrf-token")
                    if not auth.csrf_ok(request.session, sent):
                        raise Problem(403, "The form was stale or forged (CSRF check failed).")
                return await run_in_threadpool(_call, fn, service, request, form, role)
            except Problem as problem:
                return _problem(service, request, problem, json_errors)

        return endpoint

    return wrap


def _call(fn, service: Service, request: Request, form, role):
    with service.sessions() as db:
        user = db.get(User, request.session.get("uid", -1))
        request.state.user = user
        try:
            if role and user is None:
                request.session.clear()
                raise Problem(401, "Please sign in.")
            if role == "instructor" and not user.is_instructor:
                raise Problem(403, "This page is for instructors.")
            return fn(service, request, db, user, form)
        except Problem as problem:
            return _problem(service, request, problem, False)


def _problem(service: Service, request: Request, problem: Problem, as_json: bool) -> Response:
    if as_json or request.url.path.endswith(".json"):
        return JSONResponse({"error": problem.message}, status_code=problem.status)
    if problem.status == 401 and request.method == "GET":
        return RedirectResponse("/login", status_code=303)
    return service.render(request, "message.html", status=problem.status, message=problem.message)


async def _read_capped(request: Request, cap: int):
    """The multipart form of an upload, read to at most ``cap`` bytes (and some headroom)."""
    limit = cap + 64 * 1024
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"The upload is larger than {cap / 2**20:g} MiB.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Problem(413, f"The upload is larger than {cap / 2**20:g} MiB.")
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # no more body; the parser never asks
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    return await Request(request.scope, replay).form(max_files=20, max_fields=20)


# -- helpers -------------------------------------------------------------------------------
def _assignment(service: Service, db, name: str) -> Assignment:
    found = db.get(Assignment, name) if name in service.names else None
    if found is None:
        raise Problem(404, f"There is no assignment {name!r}.")
    return found


def _submission(db, user: User, sub_id: int) -> Submission:
    sub = db.get(Submission, sub_id)
    if sub is None or (sub.user_id != user.id and not user.is_instructor):
        raise Problem(404, "There is no such submission of yours.")  # the same for others'
    return sub


def _checked_notebook(name: str, data: bytes, cap: int) -> str | None:
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
    a = _assignment(service, db, request.path_params["name"])
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
    a = _assignment(service, db, request.path_params["name"])
    notebook = request.path_params["notebook"]
    if notebook not in service.grader.notebooks(a.name):
        raise Problem(404, "No such notebook.")
    path = service.config.root / "exercises" / a.name / f"{notebook}.ipynb"
    return FileResponse(path, filename=f"{notebook}.ipynb", media_type="application/x-ipynb+json")


@page(upload=True)
def submit(service, request, db, user, form):
    a = _assignment(service, db, request.path_params["name"])
    if user.is_instructor:
        raise Problem(403, "Instructors do not hand in; sign in as a student to try it.")
    expected = service.grader.notebooks(a.name)
    files = {}
    for field, value in form.multi_items():
        if not isinstance(value, UploadFile) or not value.filename:
            continue
        data = value.file.read()
        problem = _checked_notebook(value.filename, data, service.config.max_upload_bytes)
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
    sub = _submission(db, user, request.path_params["id"])
    return service.render(request, "submission.html", sub=sub, view=_view(sub), owner=sub.user)


@page(json_errors=True)
def submission_json(service, request, db, user, form):
    sub = _submission(db, user, request.path_params["id"])
    view = _view(sub)
    if sub.state == QUEUED:
        view["ahead"] = db.scalar(
            select(func.count()).where(Submission.state == QUEUED, Submission.id < sub.id)
        )
    return JSONResponse(view)


@page()
def feedback(service, request, db, user, form):
    sub = _submission(db, user, request.path_params["id"])
    notebook = request.path_params["notebook"]
    path = service.jobs.feedback / str(sub.id) / f"{notebook}.html"
    if sub.state != GRADED or not safe_name(notebook) or not path.is_file():
        raise Problem(404, "No feedback (yet).")
    return HTMLResponse(
        path.read_text(errors="replace"),
        headers={"content-security-policy": FEEDBACK_CSP, "x-frame-options": "SAMEORIGIN"},
    )


# -- instructors ---------------------------------------------------------------------------
@page(role="instructor")
def instructor(service, request, db, user, form):
    students = db.scalars(select(User).where(User.role == "student").order_by(User.login)).all()
    counts = dict(
        db.execute(
            select(Submission.assignment, func.count()).group_by(Submission.assignment)
        ).all()
    )
    waiting = db.scalar(select(func.count()).where(Submission.state != GRADED))
    assignments = [db.get(Assignment, n) for n in service.names]
    return service.render(
        request,
        "instructor.html",
        students=students,
        assignments=assignments,
        counts=counts,
        waiting=waiting,
    )


def _links(service, request, db, users) -> list[tuple[User, str]]:
    made = [(u, auth.new_link(db, u)) for u in users]
    db.commit()
    base = service.config.base_url or str(request.base_url).rstrip("/")
    return [(u, f"{base}/signin/{token}") for u, token in made]


@page(role="instructor", upload=True)
def roster(service, request, db, user, form):
    upload = form.get("roster")
    if not isinstance(upload, UploadFile):
        raise Problem(400, "Choose a roster CSV file.")
    data = upload.file.read(MAX_ROSTER_BYTES + 1)
    if len(data) > MAX_ROSTER_BYTES:
        raise Problem(400, "The roster is larger than 2 MiB.")
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        records = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise Problem(400, f"The roster is not a UTF-8 CSV file ({error}).") from None
    if not reader.fieldnames or "student_id" not in reader.fieldnames:
        raise Problem(400, "The roster needs a header with a student_id column (name, email).")
    bad = [r.get("student_id") for r in records if not LOGIN.match(r.get("student_id") or "")]
    if bad:
        raise Problem(400, f"Student ids must be letters, digits and _.@- only: {bad[:5]}")
    new = []
    for record in records:
        login = record["student_id"]
        found = db.scalar(select(User).where(User.login == login))
        if found is None:
            found = User(login=login, role="student")
            db.add(found)
            new.append(found)
        found.name = (record.get("name") or "").strip()[:200]
        found.email = (record.get("email") or "").strip()[:200]
    db.flush()
    links = _links(service, request, db, new)
    return service.render(request, "links.html", links=links, updated=len(records) - len(new))


@page(role="instructor")
def new_link(service, request, db, user, form):
    person = db.get(User, int(request.path_params["uid"]))
    if person is None:
        raise Problem(404, "No such person.")
    return service.render(request, "links.html", links=_links(service, request, db, [person]))


def _students(db):
    return db.scalars(select(User).where(User.role == "student").order_by(User.login)).all()


def _subs(db, name: str):
    return db.scalars(
        select(Submission).where(Submission.assignment == name).order_by(Submission.id)
    ).all()


@page(role="instructor")
def dashboard(service, request, db, user, form):
    a = _assignment(service, db, request.path_params["name"])
    subs = _subs(db, a.name)
    max_score = max((s.max_score for s in subs if s.state == GRADED), default=0.0)
    table = grades.rows(_students(db), list(subs), a, max_score)
    counted = [r["score"] for r in table if r["submission"] != ""]
    states = {
        state: sum(s.state == state for s in subs) for state in ("queued", "grading", "graded")
    }
    fine = (Status.OK.value, Status.RENAMED.value)
    look = [s for s in subs if s.state == GRADED and s.status not in fine][-50:]
    return service.render(
        request,
        "dashboard.html",
        a=a,
        table=table,
        states=states,
        total=len(subs),
        look=look,
        histogram=grades.histogram_svg(counted, max_score or 1.0),
        max_score=max_score,
        message=request.query_params.get("message"),
    )


def _parse_deadline(text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(400, f"Deadline {text!r}: use YYYY-MM-DDTHH:MM (UTC).") from None
    if when.tzinfo is not None:
        from datetime import UTC

        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


@page(role="instructor")
def settings(service, request, db, user, form):
    a = _assignment(service, db, request.path_params["name"])
    a.deadline = _parse_deadline(str(form.get("deadline", "")))
    try:
        a.per_hour = int(form.get("per_hour") or 0)
        penalty = str(form.get("late_penalty", "")).strip()
        a.late_penalty = float(penalty) if penalty else None
    except ValueError:
        raise Problem(400, "The hourly limit is a whole number, the penalty a fraction.") from None
    if a.per_hour < 0 or (a.late_penalty is not None and not 0 <= a.late_penalty <= 1):
        raise Problem(400, "The hourly limit must be >= 0 and the penalty between 0 and 1.")
    policy = form.get("policy")
    if policy not in ("last", "best"):
        raise Problem(400, "The policy is last or best.")
    a.policy = policy
    db.commit()
    return RedirectResponse(f"/instructor/assignments/{a.name}?message=saved", 303)


@page(role="instructor")
def regrade(service, request, db, user, form):
    a = _assignment(service, db, request.path_params["name"])
    subs = list(_subs(db, a.name))
    login = str(form.get("student", "")).strip()
    if login:
        subs = [s for s in subs if s.user.login == login]
        if not subs:
            raise Problem(404, f"{login} has no submission of {a.name}.")
    if a.policy == "last":  # only the last one of each student can count
        last = {}
        for s in subs:
            last[s.user_id] = s
        subs = list(last.values())
    count = service.jobs.regrade(db, a, [s.id for s in subs])
    return RedirectResponse(
        f"/instructor/assignments/{a.name}?message=regrading+{count}+submissions", 303
    )


@page(role="instructor")
def grades_csv(service, request, db, user, form):
    a = _assignment(service, db, request.path_params["name"])
    subs = _subs(db, a.name)
    max_score = max((s.max_score for s in subs if s.state == GRADED), default=0.0)
    table = grades.rows(_students(db), list(subs), a, max_score)
    return PlainTextResponse(
        grades.to_csv(table),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="{a.name}-grades.csv"'},
    )


ROUTES = [
    Route("/", home),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/signin/{token}", signin, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/assignments", assignment_list),
    Route("/assignments/{name}", assignment_page),
    Route("/assignments/{name}/release/{notebook}.ipynb", download_release),
    Route("/assignments/{name}/submit", submit, methods=["POST"]),
    Route("/submissions/{id:int}", submission_page),
    Route("/submissions/{id:int}.json", submission_json),
    Route("/submissions/{id:int}/feedback/{notebook}", feedback),
    Route("/instructor", instructor),
    Route("/instructor/roster", roster, methods=["POST"]),
    Route("/instructor/students/{uid:int}/link", new_link, methods=["POST"]),
    Route("/instructor/assignments/{name}", dashboard),
    Route("/instructor/assignments/{name}/settings", settings, methods=["POST"]),
    Route("/instructor/assignments/{name}/regrade", regrade, methods=["POST"]),
    Route("/instructor/assignments/{name}/grades.csv", grades_csv),
]


def create_app(config: ServiceConfig) -> Starlette:
    """The ASGI application; the grading queue starts and stops with it."""
    service = Service(config)

    @asynccontextmanager
    async def lifespan(app):
        if service.start_jobs:
            service.jobs.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.jobs.stop)

    app = Starlette(
        routes=[*ROUTES, Mount("/static", StaticFiles(directory=HERE / "static"), name="static")],
        middleware=[
            Middleware(Headers),
            Middleware(
                SessionMiddleware,
                secret_key=service.secret(),
                session_cookie="dnncourse",
                same_site="lax",
                https_only=config.secure_cookies,
                max_age=14 * 86400,
            ),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app
