"""Grade one student: sanitize, run nbgrader's sanitizers, execute guarded, save, feedback.

A worker is a process of its own (``python -m dnncourse.grading.worker COURSE_JSON``) that
reads one task per line on stdin (``{"student": ..., "folder": ..., "limits": {...}}``) and
answers with one line ``@@dnncourse-result {...}`` on stdout; the pool kills it (and its
kernel) when a student takes longer than the per-student timeout. Student code never runs
in the worker: it runs in the kernel, a child process in its own sandbox
(:mod:`dnncourse.grading.sandbox`) unless the task says ``"sandbox": false``.
"""

import functools
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import nbformat
from nbgrader import utils as nbutils
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearOutput,
    DeduplicateIds,
    LimitOutput,
    OverwriteCells,
    OverwriteKernelspec,
    SaveAutoGrades,
)
from sqlalchemy.exc import OperationalError

from . import sanitize
from .course import Course, gradebook
from .execute import Limits, execute
from .feedback import write_feedback, write_notice

RESULT_PREFIX = "@@dnncourse-result "
NO_SANDBOX = "graded without a sandbox (--no-sandbox)"
STATUS_ORDER = (
    "grader error",
    "invalid notebook",
    "missing notebook",
    "timeout",
    "kernel died",
    "memory limit",
    "output limit",
    "renamed notebook",
    "ok",
)


def worst(statuses: list[str]) -> str:
    return min(statuses, key=STATUS_ORDER.index) if statuses else "ok"


def _released_tests(release) -> dict[str, str]:
    return {
        c.metadata.nbgrader["grade_id"]: c.source
        for c in release.cells
        if nbutils.is_grade(c) and c.cell_type == "code"
    }


def _zero(course: Course, student: str, notebook: str) -> None:
    with gradebook(course) as gb:
        submission = gb.find_submission_notebook(notebook, course.assignment, student)
        for grade in submission.grades:
            grade.auto_score = 0
            grade.needs_manual_grade = False
        gb.db.commit()


def data_files(course: Course) -> Path | None:
    """A private copy of what the assignment ships next to its notebooks (never a notebook).

    This folder is what the sandbox copies into the kernel's working folder; the solutions
    folder itself is never shown to a kernel.
    """
    return _data_files(course.root, course.assignment)


@functools.cache
def _data_files(root: str, assignment: str) -> Path | None:
    source = Path(root) / "solutions" / assignment
    files = [p for p in source.rglob("*") if p.is_file() and p.suffix != ".ipynb"]
    if not files:
        return None
    folder = Path(tempfile.mkdtemp(prefix="dnncourse-data-"))
    for extra in files:
        target = folder / extra.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(extra, target)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def grade_notebook(
    course: Course, student: str, folder: Path, name: str, limits: Limits, sandbox: bool = True
):
    """Grade notebook ``name`` of one student; returns (status, details)."""
    resources = {
        "nbgrader": {
            "student": student,
            "assignment": course.assignment,
            "notebook": name,
            "db_url": course.db_url,
        },
        "metadata": {},
    }
    feedback = Path(course.out) / "feedback" / student / f"{name}.html"
    release = course.release_notebook(name)
    try:
        path, renamed = sanitize.find_notebook(folder, name, set(course.notebooks))
        student_nb = sanitize.read_notebook(path)
    except sanitize.Rejected as rejected:
        _zero(course, student, name)
        write_notice(feedback, f"{course.assignment}: {name}", rejected.status, rejected.detail)
        return rejected.status, [rejected.detail]
    nb, details = sanitize.rebuild(student_nb, release)
    if renamed:
        details.insert(0, renamed)
    with gradebook(course):  # nbgrader's sanitizers read the gradebook
        for pp in (ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells):
            nb, resources = pp().preprocess(nb, resources)
        nb, resources = CheckCellMetadata().preprocess(nb, resources)
    work = Path(course.root) / "autograded" / student / course.assignment
    work.mkdir(parents=True, exist_ok=True)
    data = data_files(course)
    if not sandbox and data is not None:  # the kernel runs in this folder, as the grader
        shutil.copytree(data, work, dirs_exist_ok=True)
    run = execute(nb, work, limits, sandbox=sandbox, data=data)
    nb, resources = LimitOutput().preprocess(nb, resources)
    with gradebook(course):
        nb, resources = SaveAutoGrades().preprocess(nb, resources)
    nbformat.write(nb, work / f"{name}.ipynb")
    try:  # nbgrader's GetGrades only reads: no need to hold the writers' lock
        write_feedback(nb, _released_tests(release), resources, feedback)
    except OperationalError:  # SQLite busy past its timeout: once more, alone
        with gradebook(course):
            write_feedback(nb, _released_tests(release), resources, feedback)
    status = "renamed notebook" if renamed and run.status == "ok" else run.status
    return status, details + run.details


def grade_student(course: Course, task: dict) -> dict:
    """The row of grades.csv for one student."""
    student, folder = task["student"], Path(task["folder"])
    limits = Limits(**task.get("limits", {}))
    sandbox = task.get("sandbox", True)
    start = time.perf_counter()
    statuses, details = [], []
    for name in course.notebooks:
        try:
            status, notes = grade_notebook(course, student, folder, name, limits, sandbox)
        except Exception as error:  # a bug of ours or nbgrader's: this student only
            status, notes = "grader error", [f"{name}: {error!r}"]
            traceback.print_exc(file=sys.stderr)
            try:
                _zero(course, student, name)
            except Exception:
                pass
        statuses.append(status)
        details += notes
    if not sandbox:
        details.append(NO_SANDBOX)
    with gradebook(course) as gb:
        submission = gb.find_submission(course.assignment, student)
        score, max_score = float(submission.score), float(submission.max_score)
    return {
        "student_id": student,
        "assignment": course.assignment,
        "score": score,
        "max_score": max_score,
        "status": worst(statuses),
        "detail": "; ".join(details),
        "seconds": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    """Serve tasks; the protocol pipes get private descriptors the kernels do not inherit."""
    course = Course(**json.loads(sys.argv[1]))
    tasks = os.fdopen(os.dup(0), "r")
    results = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # a kernel reading stdin must not eat the next task
    os.dup2(2, 1)  # nor write fake results: fd 1 is now the log
    sys.stdout = sys.stderr
    for line in tasks:
        task = json.loads(line)
        try:
            row = grade_student(course, task)
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            row = {"student_id": task["student"], "status": "grader error", "detail": repr(error)}
        row["nonce"] = task.get("nonce")
        results.write(RESULT_PREFIX + json.dumps(row) + "\n")
        results.flush()


if __name__ == "__main__":
    main()
