"""The web layer under every route: security headers, sessions, CSRF, errors, templates.

:func:`page` wraps a route: it checks the session (and the role), reads the form (an upload
only up to the size cap), checks the CSRF token of every POST, then runs the handler in a
thread with a database session. A :class:`Problem` becomes an error page (or JSON) with its
status code. :class:`Headers` puts a strict Content-Security-Policy (no inline script) and
friends on every response. Every form is read to a size cap; a form that cannot be parsed or
holds a NUL character is a 400 page, never a 500.
"""

import asyncio
import os
import re
import secrets
from functools import wraps
from pathlib import Path

import jinja2
import jupyter_server_mathjax
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)

from ..homework import assignments, layout
from . import auth, grades
from .config import ServiceConfig, private_files, private_folder
from .grader import Grader
from .jobs import Jobs
from .models import Assignment, AuditEntry, Extension, Submission, User, open_db, utcnow

HERE = Path(__file__).parent
LOGIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'; frame-ancestors 'none'"
)
MATHJAX = Path(jupyter_server_mathjax.__file__).parent / "static"  # MathJax 2.7, served
CDN_MATHJAX = re.compile(
    r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*">\s*</script>'
)
INLINE_CONFIG = re.compile(r'<script type="text/x-mathjax-config">.*?</script>', re.S)
OWN_MATHJAX = (
    '<script src="/static/mathjax-config.js"></script>'
    '<script src="/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"></script>'
)


def feedback_csp(origin: str) -> str:
    """A feedback page's policy: sandboxed (an opaque origin: no cookies, no parent), and no
    script but the service's MathJax (its config file and the files under ``/mathjax/``)."""
    return (
        f"sandbox allow-scripts; default-src 'none'; script-src {origin}/mathjax/ "
        f"{origin}/static/mathjax-config.js; style-src 'unsafe-inline'; img-src data:; "
        f"font-src data: {origin}/mathjax/; form-action 'none'; base-uri 'none'; "
        "frame-ancestors 'self'"
    )


def with_mathjax(page: str) -> str:
    """A stored feedback page (scrubbed of every script: :mod:`dnncourse.grading.safe_html`)
    with the service's MathJax added; a CDN's MathJax and nbconvert's inline configuration,
    in a page stored before the scrub, go (the policy blocks one, the other needs ``eval``)."""
    page = CDN_MATHJAX.sub("", INLINE_CONFIG.sub("", page))  # pages stored before the scrub
    head = page.find("</head>")
    return OWN_MATHJAX + page if head < 0 else page[:head] + OWN_MATHJAX + page[head:]


MAX_ROSTER_BYTES = 2 * 2**20
MAX_FORM_BYTES = 64 * 1024  # a form without a file
MAX_ID = 2**63 - 1  # ids in URLs beyond a 64-bit integer are "not found"


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
                if scope["path"].startswith("/mathjax/"):  # the same for everybody
                    extra[b"cache-control"] = b"public, max-age=86400"
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
        private_folder(config.data)
        self.config = config
        self.sessions = open_db(config.database)
        private_files(config.data)
        self.grader = Grader(config)
        self.jobs = Jobs(config, self.sessions, self.grader)
        self.env = _env()
        known = assignments(config.root)
        unknown = sorted(set(config.assignments) - set(known))
        if unknown:
            source = layout(config.root).source
            raise ValueError(f"unknown assignments {unknown}; {source}/ holds {known}")
        self.names = config.assignments or known
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
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
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
                if role and "sid" not in request.session:
                    raise Problem(401, "Please sign in.")
                form = None
                if request.method == "POST":
                    cap = service.config.max_upload_bytes if upload else MAX_FORM_BYTES
                    try:
                        form = await _read_capped(request, cap, files=20 if upload else 0)
                    except HTTPException as error:  # starlette's parser: malformed, too many
                        raise Problem(400, f"The form could not be read: {error.detail}") from None
                    sent = form.get("csrf") or request.headers.get("x-csrf-token")
                    if not auth.csrf_ok(request.session, sent):
                        raise Problem(403, "The form was stale or forged (CSRF check failed).")
                    if any("\0" in v for v in form.values() if isinstance(v, str)):
                        raise Problem(400, "A form field holds a NUL character.")
                return await run_in_threadpool(_call, fn, service, request, form, role)
            except Problem as problem:
                return _problem(service, request, problem, json_errors)

        return endpoint

    return wrap


def _call(fn, service: Service, request: Request, form, role):
    with service.sessions() as db:
        user = auth.session_user(db, request.session)
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


async def _read_capped(request: Request, cap: int, files: int):
    """The form, read to at most ``cap`` bytes (and some headroom), ``files`` files at most."""
    limit = cap + 64 * 1024
    too_big = Problem(413, f"The form is larger than {cap / 2**20:g} MiB.")
    if files:
        too_big = Problem(413, f"The upload is larger than {cap / 2**20:g} MiB.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # no more body; the parser never asks
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    return await Request(request.scope, replay).form(max_files=files, max_fields=50)


# -- helpers -------------------------------------------------------------------------------
def find_assignment(service: Service, db, name: str, user: User | None = None) -> Assignment:
    """The assignment ``name``; for a student (``user``), only once it is released."""
    found = db.get(Assignment, name) if name in service.names else None
    if found is None:
        raise Problem(404, f"There is no assignment {name!r}.")
    if user is not None and not user.is_instructor and not released(found):
        raise Problem(
            404, f"{name} is not released yet: it opens {found.opens_at:%Y-%m-%d %H:%M} UTC."
        )
    return found


def released(a: Assignment) -> bool:
    return a.opens_at is None or a.opens_at <= utcnow()


def student_rules(db, user: User, a: Assignment):
    """``a``'s rules for ``user``: their extension's deadline, if any."""
    mine = db.scalar(
        select(Extension.deadline).where(
            Extension.user_id == user.id, Extension.assignment == a.name
        )
    )
    return grades.for_student(a, mine)


def audit(db, user: User, action: str, detail: str) -> None:
    """Record what an instructor did (committed with the change)."""
    db.add(AuditEntry(who=user.login, action=action, detail=detail[:2000]))


def own_submission(db, user: User, sub_id: int) -> Submission:
    sub = db.get(Submission, sub_id) if 0 < sub_id <= MAX_ID else None
    if sub is None or (sub.user_id != user.id and not user.is_instructor):
        raise Problem(404, "There is no such submission of yours.")  # the same for others'
    return sub
