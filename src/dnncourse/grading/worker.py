"""Grade one student: sanitize, run nbgrader's sanitizers, execute, decide, save, feedback.

A worker is a process of its own (``python -m dnncourse.grading.worker COURSE_JSON``) that
reads one task per line on stdin (``{"student": ..., "folder": ..., "limits": {...}}``) and
answers with one line ``@@dnncourse-result {...}`` on stdout; the pool kills it (and its
kernel) when a student takes longer than the per-student timeout. Student code never runs
in the worker: it runs in the kernel, a child process with its own limits. The verdict is
made here, from the probe records of the kernel's run against the reference run of the
instructor's solution (:func:`decide`).
"""

import json
import os
import shutil
import sys
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

from . import reference, sanitize, verdict
from .course import Course, gradebook
from .execute import Limits, execute
from .feedback import write_feedback, write_notice

RESULT_PREFIX = "@@dnncourse-result "
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


def decide(course: Course, name: str, nb, run, limits: Limits) -> list:
    """The trusted verdict on an executed notebook: one protocol.Check per graded cell.

    Compares the probe records of ``nb`` with the reference run of the instructor's
    solution (computed once, cached under ``OUT/reference/``), then marks the test cells'
    outputs so that nbgrader's SaveAutoGrades stores the same scores.
    """
    expected = reference.records(
        reference.solution_of(course, name), reference.cache_of(course), limits
    )
    stopped = run.status if run.stopped_at is not None else ""
    checks = verdict.decide(nb, expected, name, stopped)
    verdict.mark(nb, checks)
    return checks


def grade_notebook(course: Course, student: str, folder: Path, name: str, limits: Limits):
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
    source = Path(course.root) / "solutions" / course.assignment
    for extra in source.rglob("*"):  # data files of the assignment, like nbgrader autograde
        if extra.is_file() and extra.suffix != ".ipynb":
            target = work / extra.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, target)
    run = execute(nb, work, limits)
    checks = decide(course, name, nb, run, limits)
    nb, resources = LimitOutput().preprocess(nb, resources)
    with gradebook(course):
        nb, resources = SaveAutoGrades().preprocess(nb, resources)
    nbformat.write(nb, work / f"{name}.ipynb")
    try:  # nbgrader's GetGrades only reads: no need to hold the writers' lock
        write_feedback(nb, _released_tests(release), resources, feedback, checks)
    except OperationalError:  # SQLite busy past its timeout: once more, alone
        with gradebook(course):
            write_feedback(nb, _released_tests(release), resources, feedback, checks)
    status = "renamed notebook" if renamed and run.status == "ok" else run.status
    return status, details + run.details


def grade_student(course: Course, task: dict) -> dict:
    """The row of grades.csv for one student."""
    student, folder = task["student"], Path(task["folder"])
    limits = Limits(**task.get("limits", {}))
    start = time.perf_counter()
    statuses, details = [], []
    for name in course.notebooks:
        try:
            status, notes = grade_notebook(course, student, folder, name, limits)
        except Exception as error:  # a bug of ours or nbgrader's: this student only
            status, notes = "grader error", [f"{name}: {error!r}"]
            traceback.print_exc(file=sys.stderr)
            try:
                _zero(course, student, name)
            except Exception:
                pass
        statuses.append(status)
        details += notes
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
