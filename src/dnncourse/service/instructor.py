"""The instructor's pages: roster and sign-in links, dashboards, settings, regrades, exports.

Every change an instructor makes (settings, links issued, regrades, extensions, sign-outs,
dropped students) is written to the audit log with who and when (never a link's token).
Exports are CSV with cells safe for spreadsheets (:func:`dnncourse.service.grades.cell`).
"""

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
from .models import GRADED, Assignment, AuditEntry, Extension, Submission, User
from .web import LOGIN, MAX_ID, MAX_ROSTER_BYTES, Problem, audit, find_assignment, page

DROPPED = "dropped"


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
        message=request.query_params.get("message"),
        students=students,
        assignments=assignments,
        counts=counts,
        waiting=waiting,
    )


def _links(service, request, db, user, users) -> list[tuple[User, str]]:
    made = [(u, auth.new_link(db, u)) for u in users]
    if users:
        audit(db, user, "links", "sign-in links for " + ", ".join(u.login for u in users))
    db.commit()
    base = service.config.base_url or str(request.base_url).rstrip("/")
    return [(u, f"{base}/signin/{token}") for u, token in made]


def _show_links(service, request, form, links, **context):
    """The links on a page, or (``as=csv``) as a CSV file to mail-merge."""
    if form is not None and form.get("as") == "csv":
        table = [
            {"student_id": u.login, "name": u.name, "email": u.email, "link": link}
            for u, link in links
        ]
        return _csv(grades.to_csv(table, ["student_id", "name", "email", "link"]), "links.csv")
    return service.render(request, "links.html", links=links, **context)


def _csv(text: str, filename: str) -> PlainTextResponse:
    return PlainTextResponse(
        text,
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


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
        elif found.role == DROPPED:  # back in the course
            found.role = "student"
        found.name = (record.get("name") or "").strip()[:200]
        found.email = (record.get("email") or "").strip()[:200]
    db.flush()
    audit(db, user, "roster", f"{len(new)} new, {len(records) - len(new)} updated")
    links = _links(service, request, db, user, new)
    return _show_links(service, request, form, links, updated=len(records) - len(new))


def _person(db, request) -> User:
    uid = int(request.path_params["uid"])
    person = db.get(User, uid) if 0 < uid <= MAX_ID else None
    if person is None:
        raise Problem(404, "No such person.")
    return person


@page(role="instructor")
def new_link(service, request, db, user, form):
    person = _person(db, request)
    return _show_links(service, request, form, _links(service, request, db, user, [person]))


@page(role="instructor")
def sign_out_everywhere(service, request, db, user, form):
    """End every session of a person (a lost laptop, a shared computer)."""
    person = _person(db, request)
    ended = auth.end_sessions(db, person.id)
    audit(db, user, "sign-out", f"{person.login}: {ended} sessions ended")
    db.commit()
    return RedirectResponse(
        f"/instructor?message={person.login}+signed+out+({ended}+sessions)", 303
    )


@page(role="instructor")
def drop(service, request, db, user, form):
    """Drop a student: signed out, off the roster and the exports; their work is kept."""
    person = _person(db, request)
    if person.role != "student":
        raise Problem(400, f"{person.login} is not a student of the course.")
    person.role = DROPPED
    auth.end_sessions(db, person.id)
    audit(db, user, "drop", person.login)
    db.commit()
    return RedirectResponse(f"/instructor?message={person.login}+dropped", 303)


@page(role="instructor")
def audit_log(service, request, db, user, form):
    entries = db.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(500)).all()
    return service.render(request, "audit.html", entries=entries)


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
    max_score = grades.max_score(service.config.root, a.name)
    extensions = _extensions(db, a.name)
    manual = grades.manual_scores(service.config.gradebook, a.name)
    table = grades.rows(_students(db), list(subs), a, max_score, extensions, manual)
    return a, subs, max_score, table


def _extensions(db, name: str) -> dict[int, datetime]:
    found = db.scalars(select(Extension).where(Extension.assignment == name)).all()
    return {e.user_id: e.deadline for e in found}


def decided_by(subs) -> dict[str, list[str]]:
    """The graded cells by what decided them ("probe": outside; "assert": inside the
    student's process, forgeable as in plain nbgrader), from the graded submissions."""
    kinds = {}
    for sub in (s for s in subs if s.state == GRADED):
        for c in sub.checks or []:
            kinds[f"{c['notebook']}/{c['name']}"] = c.get("kind", "probe")
    return {k: sorted(n for n, v in kinds.items() if v == k) for k in ("probe", "assert")}


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
        questions=grades.questions(table, subs),
        extensions=db.scalars(select(Extension).where(Extension.assignment == a.name)).all(),
        decided=decided_by(subs),
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
    a.opens_at = _parse_deadline(str(form.get("opens_at", "")))
    a.closes_at = _parse_deadline(str(form.get("closes_at", "")))
    if a.closes_at and a.deadline and a.closes_at < a.deadline:
        raise Problem(400, "The hard close must not come before the deadline.")
    if a.closes_at and a.opens_at and a.closes_at <= a.opens_at:
        raise Problem(400, "The hard close must come after the release.")
    try:
        a.per_hour = int(form.get("per_hour") or 0)
        penalty = str(form.get("late_penalty", "")).strip()
        a.late_penalty = float(penalty) if penalty else None
    except ValueError:
        raise Problem(400, "The hourly limit is a whole number, the penalty a fraction.") from None
    if not 0 <= a.per_hour <= 10000 or (
        a.late_penalty is not None and not 0 <= a.late_penalty <= 1
    ):
        raise Problem(400, "The hourly limit must be 0 to 10000 and the penalty 0 to 1.")
    policy = form.get("policy")
    if policy not in ("last", "best"):
        raise Problem(400, "The policy is last or best.")
    a.policy = policy
    when = lambda t: t.isoformat(timespec="minutes") if t else "none"  # noqa: E731
    audit(db, user, "settings", f"{a.name}: opens {when(a.opens_at)}, deadline "
          f"{when(a.deadline)}, closes {when(a.closes_at)}, {a.per_hour}/hour, {a.policy}, "
          f"penalty {a.late_penalty}")  # fmt: skip
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
    by_student: dict[int, list[Submission]] = {}
    for s in subs:
        by_student.setdefault(s.user_id, []).append(s)
    subs = [s for mine in by_student.values() for s in grades.to_regrade(mine, a)]
    audit(db, user, "regrade", f"{a.name}: {login or 'everyone'}, {len(subs)} submissions")
    count = service.jobs.regrade(db, a, [s.id for s in subs])
    return RedirectResponse(
        f"/instructor/assignments/{a.name}?message=regrading+{count}+submissions", 303
    )


@page(role="instructor")
def extension(service, request, db, user, form):
    """Give one student their own deadline (empty: take it back)."""
    a = find_assignment(service, db, request.path_params["name"])
    login = str(form.get("student", "")).strip()
    person = db.scalar(select(User).where(User.login == login, User.role == "student"))
    if person is None:
        raise Problem(404, f"There is no student {login[:64]!r}.")
    deadline = _parse_deadline(str(form.get("deadline", "")))
    found = db.scalar(
        select(Extension).where(Extension.user_id == person.id, Extension.assignment == a.name)
    )
    if deadline is None:
        if found is not None:
            db.delete(found)
    elif found is None:
        db.add(Extension(user_id=person.id, assignment=a.name, deadline=deadline))
    else:
        found.deadline = deadline
    shown = deadline.isoformat(timespec="minutes") if deadline else "none"
    audit(db, user, "extension", f"{a.name}: {login} until {shown}")
    db.commit()
    return RedirectResponse(f"/instructor/assignments/{a.name}?message=extension+saved", 303)


@page(role="instructor")
def grades_csv(service, request, db, user, form):
    a, _, _, table = _grades_table(service, request, db)
    return _csv(grades.to_csv(table), f"{a.name}-grades.csv")


@page(role="instructor")
def lms_csv(service, request, db, user, form):
    """One column of scores under the assignment's name, keyed by student id and e-mail."""
    a, _, max_score, table = _grades_table(service, request, db)
    emails = {u.login: u.email for u in _students(db)}
    column = f"{a.name} ({max_score:g} points)"
    rows = [
        {"student_id": r["student_id"], "email": emails.get(r["student_id"], ""),
         "name": r["name"], column: r["score"]}
        for r in table
    ]  # fmt: skip
    return _csv(grades.to_csv(rows, ["student_id", "email", "name", column]), f"{a.name}-lms.csv")


@page(role="instructor")
def questions_csv(service, request, db, user, form):
    a, subs, _, table = _grades_table(service, request, db)
    return _csv(
        grades.to_csv(grades.questions(table, subs), grades.QUESTION_COLUMNS),
        f"{a.name}-questions.csv",
    )
