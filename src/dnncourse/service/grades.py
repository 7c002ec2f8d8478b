"""Which submission counts, with what score: the policy, the late penalty, ``grades.csv``.

Policy ``last``: the student's last graded submission counts; ``best``: the one with the
best score after the penalty. A submission handed in ``d`` started days after the deadline
keeps ``max(0, 1 - penalty * d)`` of its score; with no penalty set (``None``), late
submissions do not count at all (they are still graded, so the student sees the feedback).

A submission counts with the result of its last finished grading: while a regrade grades it
again, its previous score stands, so no grade falls back to an older submission meanwhile.
The assignment's ``max_score`` is the sum of the points of its graded cells in the
instructor's notebooks (``solutions/``), known before anybody hands in. A manual grade
entered in nbgrader's formgrader after the grading counts for the submission the gradebook
holds (the student's last graded): when that one counts, its score is the gradebook's.
"""

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy.exc import OperationalError

from ..grading.course import COURSE_ID
from ..grading.protocol import Status
from ..homework import layout
from .models import GRADED, Assignment, Submission

log = logging.getLogger("dnncourse.service")

DAY = 86400.0
COLUMNS = [
    "student_id",
    "name",
    "assignment",
    "score",
    "max_score",
    "status",
    "submission",
    "submitted_at",
    "late_days",
    "raw_score",
    "detail",
    "deadline",
    "review",
]


def late_days(created: datetime, deadline: datetime | None) -> int:
    if deadline is None or created <= deadline:
        return 0
    return math.ceil((created - deadline).total_seconds() / DAY)


def for_student(assignment: Assignment, deadline: datetime | None = None):
    """``assignment``'s rules for one student: with an extension, their own deadline (and
    hard close, if the assignment has one: it moves as far as the deadline moved)."""
    if deadline is None:
        return assignment
    close = assignment.closes_at
    if close is not None and assignment.deadline is not None:
        close = max(close, close + (deadline - assignment.deadline))
    elif close is not None:
        close = max(close, deadline)
    return SimpleNamespace(
        name=assignment.name,
        deadline=deadline,
        closes_at=close,
        opens_at=assignment.opens_at,
        policy=assignment.policy,
        late_penalty=assignment.late_penalty,
        per_hour=assignment.per_hour,
    )


def max_score(root: Path, assignment: str) -> float:
    """The points of ``assignment``: its graded cells' points in the instructor's notebooks
    (the course's source folder, ``solutions/`` here)."""
    total = 0.0
    for path in sorted((root / layout(root).source / assignment).glob("*.ipynb")):
        for cell in json.loads(path.read_text()).get("cells", []):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade"):
                total += float(meta.get("points", 0) or 0)
    return total


def may_count(sub: Submission, assignment: Assignment) -> bool:
    """Whether ``sub`` can count at all: on time, or late with a penalty set."""
    return (
        assignment.late_penalty is not None or late_days(sub.created_at, assignment.deadline) == 0
    )


def effective(sub: Submission, assignment: Assignment, raw: float | None = None) -> float | None:
    """The score that counts for ``sub`` (None: it does not count: late without penalty);
    ``raw``: its score if not the stored one (a manual grade entered since)."""
    raw = sub.score if raw is None else raw
    days = late_days(sub.created_at, assignment.deadline)
    if days == 0:
        return raw
    if assignment.late_penalty is None:
        return None
    return raw * max(0.0, 1.0 - assignment.late_penalty * days)


def manual_scores(url: str, assignment: str) -> dict[str, float]:
    """From nbgrader's gradebook: the score of each student whose grades hold a manual score
    (entered in formgrader; the gradebook holds each student's last graded submission)."""
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        return {}
    scores = {}
    try:
        with Gradebook(url, COURSE_ID) as gb:
            try:
                found = gb.find_assignment(assignment)
            except MissingEntry:
                return {}
            for sub in found.submissions:
                cells = [g for notebook in sub.notebooks for g in notebook.grades]
                if any(g.manual_score is not None for g in cells):
                    scores[sub.student.id] = float(sub.score)
    except OperationalError:  # the grader held the gradebook longer than the timeout
        log.warning("gradebook busy: grades shown without the latest manual grades")
    return scores


def to_regrade(subs: list[Submission], assignment: Assignment) -> list[Submission]:
    """The submissions of one student that count, or could count once regraded.

    Under ``best`` every one that may count (its new score may be the best); under ``last``
    the last that may count (an on-time one before a late one that does not count), and the
    one counting now, if another.
    """
    eligible = sorted(
        (s for s in subs if may_count(s, assignment)), key=lambda s: (s.created_at, s.id)
    )
    if assignment.policy == "best":
        return eligible
    chosen = eligible[-1:]
    now = pick(subs, assignment).submission
    if now is not None and now not in chosen:
        chosen.append(now)
    return chosen


@dataclass
class Pick:
    submission: Submission | None
    score: float


def pick(subs: list[Submission], assignment: Assignment) -> Pick:
    """The submission that counts under the assignment's policy, and its score."""
    counted = [
        (s, e) for s in subs if s.finished > 0 and (e := effective(s, assignment)) is not None
    ]
    if not counted:
        return Pick(None, 0.0)
    if assignment.policy == "best":
        sub, score = max(counted, key=lambda p: (p[1], p[0].created_at, p[0].id))
    else:
        sub, score = max(counted, key=lambda p: (p[0].created_at, p[0].id))
    return Pick(sub, score)


def rows(
    students, subs: list[Submission], a: Assignment, max_score: float, extensions=None, manual=None
) -> list:
    """One row per student of the roster (a student with nothing counted gets 0);
    ``extensions``: user id -> their own deadline; ``manual``: login -> the gradebook's score
    with manual grades, used for the submission that counts if it is the one the gradebook
    holds (the student's last graded)."""
    by_student: dict[int, list[Submission]] = {}
    for sub in subs:
        by_student.setdefault(sub.user_id, []).append(sub)
    out = []
    for user in students:
        assignment = for_student(a, (extensions or {}).get(user.id))
        mine = by_student.get(user.id, [])
        chosen = pick(mine, assignment)
        sub = chosen.submission
        graded = [s for s in mine if s.finished > 0 and s.graded_at is not None]
        last = max(graded, key=lambda s: (s.graded_at, s.id), default=None)
        if sub is not None and sub is last and user.login in (manual or {}):
            raw = manual[user.login]
            chosen = Pick(sub, effective(sub, assignment, raw))
        out.append(
            {
                "student_id": user.login,
                "name": user.name,
                "assignment": assignment.name,
                "score": round(chosen.score, 4),
                "max_score": max_score,
                "status": sub.status if sub else Status.MISSING.value,
                "submission": sub.id if sub else "",
                "submitted_at": sub.created_at.isoformat(timespec="seconds") + "Z" if sub else "",
                "late_days": late_days(sub.created_at, assignment.deadline) if sub else "",
                "raw_score": (manual or {}).get(user.login, sub.score)
                if sub is not None and sub is last
                else (sub.score if sub else ""),
                "detail": sub.detail if sub else "no submission that counts",
                "deadline": assignment.deadline.isoformat(timespec="minutes") + "Z"
                if assignment.deadline
                else "",
                "review": review(sub) if sub else "",
            }
        )
    return out


def review(sub: Submission) -> str:
    """The cells held for the instructor to decide (``Check.review``), with the evidence."""
    return "; ".join(f"{c.get('name')}: {c['review']}" for c in sub.checks if c.get("review"))


def needs_a_look(subs: list[Submission], last: int = 50) -> list[Submission]:
    """Graded submissions with a status other than ok, or with cells held for review."""
    fine = (Status.OK.value, Status.RENAMED.value)
    return [s for s in subs if s.state == GRADED and (s.status not in fine or review(s))][-last:]


FORMULA = ("=", "+", "-", "@", "\t", "\r")


def cell(value):
    """A CSV cell a spreadsheet shows as text: a string that a spreadsheet would read as a
    formula (it starts with ``= + - @``, a tab or a carriage return) gets a leading ``'``
    (OWASP, "CSV injection"); numbers are left alone."""
    if isinstance(value, str) and value.startswith(FORMULA):
        return "'" + value
    return value


QUESTION_COLUMNS = [
    "notebook", "check", "max_points", "mean_points", "passed", "graded", "passed_fraction"
]  # fmt: skip


def questions(table: list[dict], subs: list[Submission]) -> list[dict]:
    """Per test cell, over the submissions that count: mean points and how many passed."""
    by_id = {s.id: s for s in subs}
    stats: dict[tuple, dict] = {}
    for row in table:
        sub = by_id.get(row["submission"])
        if sub is None:
            continue
        for check in sub.checks:
            key = (check["notebook"], check["name"])
            entry = stats.setdefault(key, {"max": 0.0, "points": 0.0, "passed": 0, "n": 0})
            entry["max"] = max(entry["max"], check["max_points"])
            entry["points"] += check["points"]
            entry["passed"] += bool(check["passed"])
            entry["n"] += 1
    return [
        {
            "notebook": notebook,
            "check": name,
            "max_points": e["max"],
            "mean_points": round(e["points"] / e["n"], 4),
            "passed": e["passed"],
            "graded": e["n"],
            "passed_fraction": round(e["passed"] / e["n"], 4),
        }
        for (notebook, name), e in stats.items()
    ]


def to_csv(table: list[dict], columns: list[str] = COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: cell(v) for k, v in row.items()} for row in table)
    return buffer.getvalue()


def histogram_svg(scores: list[float], max_score: float, bins: int = 10) -> str:
    """An inline SVG bar chart of ``scores`` in ``bins`` equal bins over [0, max_score].

    Only numbers go into the markup, so it is safe to include unescaped.
    """
    width, height, pad = 420, 160, 24
    counts = [0] * bins
    for score in scores:
        frac = score / max_score if max_score else 0.0
        counts[min(bins - 1, max(0, int(frac * bins)))] += 1
    top = max(counts) or 1
    bar = (width - 2 * pad) / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 2 * pad}"'
        ' role="img" aria-label="histogram of scores" class="histogram">'
    ]
    for i, count in enumerate(counts):
        h = (height - pad) * count / top
        x, y = pad + i * bar, height - h
        lo, hi = max_score * i / bins, max_score * (i + 1) / bins
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
            f'fill="#4a7ab5"><title>{lo:g} to {hi:g}: {count}</title></rect>'
        )
        if count:
            parts.append(
                f'<text x="{x + bar / 2 - 1:.1f}" y="{y - 4:.1f}" '
                f'text-anchor="middle" font-size="11">{count}</text>'
            )
    for i in (0, bins // 2, bins):
        parts.append(
            f'<text x="{pad + i * bar:.1f}" y="{height + 16}" text-anchor="middle" '
            f'font-size="11">{max_score * i / bins:g}</text>'
        )
    parts.append(
        f'<line x1="{pad}" y1="{height}" x2="{width - pad}" y2="{height}" stroke="#333"/></svg>'
    )
    return "".join(parts)
