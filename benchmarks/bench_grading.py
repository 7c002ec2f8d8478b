"""Grading speed: a synthetic class of correct notebooks, graded with 1 and with 2 jobs.

For each assignment (default: all of solutions/), the class is ``--copies`` copies of the
instructor's notebook (full marks each). It is graded twice with ``dnncourse.grading.grade``,
``--jobs 1`` then ``--jobs 2``, into fresh output folders; the one-time preparation
(nbgrader generate_assignment, and the reference run of the instructor's solution) is timed
apart from the grading of the students. Prints seconds
per notebook, the speed-up, and the CPU seconds per notebook (workers and kernels: on a
machine shared with other work the wall-clock speed-up understates what 2 free cores give,
the CPU time does not depend on the load).

Goal (issue 6): speed-up >= 1.7x from 1 to 2 jobs on a 2-core machine, < 5 s per notebook.

Usage::

    python benchmarks/bench_grading.py [--copies 40] [--assignments hw1 hw3] [--jobs 1 2]
"""

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from dnncourse.grading import reference
from dnncourse.grading.course import prepare
from dnncourse.grading.execute import Limits
from dnncourse.grading.pool import grade_class
from dnncourse.homework import assignments

ROOT = Path(__file__).resolve().parents[1]


def synthetic_class(assignment: str, copies: int, folder: Path) -> dict[str, Path]:
    """``copies`` students, each handing in the instructor's (correct) notebooks."""
    students = {}
    for i in range(copies):
        student = folder / f"student{i:03d}"
        shutil.copytree(ROOT / "solutions" / assignment, student)
        students[student.name] = student
    return students


def bench(assignment: str, copies: int, jobs: int, tmp: Path) -> dict:
    students = synthetic_class(assignment, copies, tmp / f"{assignment}-{jobs}-subs")
    start = time.perf_counter()
    course = prepare(ROOT, assignment, tmp / f"{assignment}-{jobs}-out")
    reference.prepare(course, Limits())  # the reference run of the solution, once
    prepared = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = grade_class(course, students, jobs=jobs, limits=Limits(), progress=False)
    graded = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    full = sum(r["score"] == r["max_score"] and r["status"] == "ok" for r in rows)
    return {
        "prepare_s": prepared - start,
        "grade_s": graded - prepared,
        "per_notebook_s": (graded - prepared) / copies,
        "cpu_per_notebook_s": cpu_s / copies,
        "full_marks": full,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=40, help="students per class (default 40)")
    p.add_argument("--assignments", nargs="*", default=None, help="default: all")
    p.add_argument("--jobs", type=int, nargs="*", default=[1, 2])
    args = p.parse_args()
    names = args.assignments or assignments(ROOT)
    print(f"{os.cpu_count()} CPUs, {args.copies} copies per assignment")
    print(
        f"{'assignment':<12}{'jobs':>5}{'prepare s':>11}{'grade s':>10}{'s/notebook':>12}"
        f"{'full marks':>12}{'speed-up':>10}{'CPU s/nb':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            base = None
            for jobs in args.jobs:
                r = bench(name, args.copies, jobs, Path(tmp))
                base = base or r["grade_s"]
                print(
                    f"{name:<12}{jobs:>5}{r['prepare_s']:>11.1f}{r['grade_s']:>10.1f}"
                    f"{r['per_notebook_s']:>12.2f}{r['full_marks']:>8}/{args.copies:<3}"
                    f"{base / r['grade_s']:>9.2f}x{r['cpu_per_notebook_s']:>10.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
