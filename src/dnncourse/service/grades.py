"""Which submission counts, with what score: the policy, the late penalty, ``grades.csv``.

Policy ``last``: the student's last graded submission counts; ``best``: the one with the
best score after the penalty. A submission handed in ``d`` started days after the deadline
keeps ``max(0, 1 - penalty * d)`` of its score; with no penalty set (``None``), late
submissions do not count at all (they are still graded, so the student sees the feedback).
"""

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime

from ..grading.protocol import Status
from .models import GRADED, Assignment, Submission

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
    "review",
]


def late_days(created: datetime, deadline: datetime | None) -> int:
    if deadline is None or created <= deadline:
        return 0
    return math.ceil((created - deadline).total_seconds() / DAY)


def effective(sub: Submission, assignment: Assignment) -> float | None:
    """The score that counts for ``sub`` (None: it does not count: late without penalty)."""
    days = late_days(sub.created_at, assignment.deadline)
    if days == 0:
        return sub.score
    if assignment.late_penalty is None:
        return None
    return sub.score * max(0.0, 1.0 - assignment.late_penalty * days)


@dataclass
class Pick:
    submission: Submission | None
    score: float


def pick(subs: list[Submission], assignment: Assignment) -> Pick:
    """The submission that counts under the assignment's policy, and its score."""
    counted = [
        (s, e) for s in subs if s.state == GRADED and (e := effective(s, assignment)) is not None
    ]
    if not counted:
        return Pick(None, 0.0)
    if assignment.policy == "best":
        sub, score = max(counted, key=lambda p: (p[1], p[0].created_at, p[0].id))
    else:
        sub, score = max(counted, key=lambda p: (p[0].created_at, p[0].id))
    return Pick(sub, score)


def rows(students, subs: list[Submission], assignment: Assignment, max_score: float) -> list:
    """One row per student of the roster (a student with nothing counted gets 0)."""
    by_student: dict[int, list[Submission]] = {}
    for sub in subs:
        by_student.setdefault(sub.user_id, []).append(sub)
    out = []
    for user in students:
        chosen = pick(by_student.get(user.id, []), assignment)
        sub = chosen.submission
        out.append(
            {
                "student_id": user.login,
                "name": user.name,
                "assignment": assignment.name,
                "score": round(chosen.score, 4),
                "max_score": sub.max_score if sub else max_score,
                "status": sub.status if sub else Status.MISSING.value,
                "submission": sub.id if sub else "",
                "submitted_at": sub.created_at.isoformat(timespec="seconds") + "Z" if sub else "",
                "late_days": late_days(sub.created_at, assignment.deadline) if sub else "",
                "raw_score": sub.score if sub else "",
                "detail": sub.detail if sub else "no submission that counts",
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


def to_csv(table: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
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
