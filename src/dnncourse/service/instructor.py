"""The instructor's pages: roster and sign-in links, dashboards, settings, regrades, grades.csv."""

import csv
import io
from datetime import datetime

from sqlalchemy import func, select
from starlette.datastructures import UploadFile
from starlette.responses import (
    PlainTextResponse,
    RedirectResponse,
)

from . import auth, grades
from .models import GRADED, Assignment, Submission, User
from .web import LOGIN, MAX_ROSTER_BYTES, Problem, find_assignment, page


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


def _grades_table(service, request, db):
    """The assignment of the URL, its submissions, the top score, each student's grade."""
    a = find_assignment(service, db, request.path_params["name"])
    subs = _subs(db, a.name)
    max_score = max((s.max_score for s in subs if s.state == GRADED), default=0.0)
    return a, subs, max_score, grades.rows(_students(db), list(subs), a, max_score)


@page(role="instructor")
def dashboard(service, request, db, user, form):
    a, subs, max_score, table = _grades_table(service, request, db)
    counted = [r["score"] for r in table if r["submission"] != ""]
    states = {
        state: sum(s.state == state for s in subs) for state in ("queued", "grading", "graded")
    }
    look = grades.needs_a_look(subs)
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
    a = find_assignment(service, db, request.path_params["name"])
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
    a = find_assignment(service, db, request.path_params["name"])
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
    a, _, _, table = _grades_table(service, request, db)
    return PlainTextResponse(
        grades.to_csv(table),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="{a.name}-grades.csv"'},
    )
