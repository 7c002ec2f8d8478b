"""The web application (Starlette): the routes, the middleware and the queue's lifespan.

Every page needs a session except sign-in (:mod:`~dnncourse.service.student`); instructor
pages (:mod:`~dnncourse.service.instructor`) the role; every POST the CSRF token
(:mod:`~dnncourse.service.web`).
"""

from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .auth import SESSION_LIFETIME
from .config import ServiceConfig
from .instructor import (
    audit_log,
    dashboard,
    drop,
    extension,
    grades_csv,
    instructor,
    lms_csv,
    new_link,
    questions_csv,
    regrade,
    roster,
    settings,
    sign_out_everywhere,
)
from .student import (
    account,
    assignment_list,
    assignment_page,
    download_release,
    feedback,
    home,
    login,
    logout,
    signin,
    submission_page,
    submission_watch,
    submit,
    submitted_file,
)
from .web import HERE, MATHJAX, Headers, Service

ROUTES = [
    Route("/", home),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/signin/{token}", signin, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/account", account, methods=["GET", "POST"]),
    Route("/assignments", assignment_list),
    Route("/assignments/{name}", assignment_page),
    Route("/assignments/{name}/release/{notebook}.ipynb", download_release),
    Route("/assignments/{name}/submit", submit, methods=["POST"]),
    Route("/submissions/{id:int}", submission_page),
    Route("/submissions/{id:int}.json", submission_watch),
    Route("/submissions/{id:int}/feedback/{notebook}", feedback),
    Route("/submissions/{id:int}/files/{file}", submitted_file),
    Route("/instructor", instructor),
    Route("/instructor/roster", roster, methods=["POST"]),
    Route("/instructor/students/{uid:int}/link", new_link, methods=["POST"]),
    Route("/instructor/students/{uid:int}/signout", sign_out_everywhere, methods=["POST"]),
    Route("/instructor/assignments/{name}", dashboard),
    Route("/instructor/assignments/{name}/settings", settings, methods=["POST"]),
    Route("/instructor/assignments/{name}/regrade", regrade, methods=["POST"]),
    Route("/instructor/assignments/{name}/grades.csv", grades_csv),
    Route("/instructor/assignments/{name}/lms.csv", lms_csv),
    Route("/instructor/assignments/{name}/questions.csv", questions_csv),
    Route("/instructor/assignments/{name}/extension", extension, methods=["POST"]),
    Route("/instructor/students/{uid:int}/drop", drop, methods=["POST"]),
    Route("/instructor/audit", audit_log),
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
        routes=[
            *ROUTES,
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            Mount("/mathjax", StaticFiles(directory=MATHJAX), name="mathjax"),
        ],
        middleware=[
            Middleware(Headers),
            Middleware(
                SessionMiddleware,
                secret_key=service.secret(),
                session_cookie="dnncourse",
                same_site="lax",
                https_only=config.secure_cookies,
                max_age=int(SESSION_LIFETIME.total_seconds()),  # the server ends it sooner
            ),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app
