"""Grading speed: the Dask engine against itself (1 and 2 workers) and against plain nbgrader.

Three measurements, in one run:

1. **Engine overhead per student** on a trivial assignment (one answer, one test cell):
   the class is graded with one worker, so students follow each other; the overhead is the
   time between two consecutive results arriving at the client minus the grading time the
   worker measured for the second (task dispatch, the bundle, result transfer, storing it
   in the gradebook and writing the files). Goal (issue 12): at most 50 ms.
2. **hw1 with 1 and 2 workers** (``--jobs``), ``--copies`` copies of the instructor's
   notebook (full marks each); one-time costs (``nbgrader generate_assignment``) are timed
   apart; the local cluster's start is part of the grading time. Goal: speed-up >= 1.8x.
3. **Plain ``nbgrader autograde``** on the same class of hw1 notebooks, in a scratch nbgrader
   course (``generate_assignment`` timed apart, as above). Goals: ``--jobs 1`` at least as
   fast as plain nbgrader, ``--jobs 2`` at least 1.8x faster than it.

Also printed: CPU seconds per notebook (all processes) and the load average, since on a
machine shared with other work wall-clock ratios understate what free cores give.

Usage::

    python benchmarks/bench_grading.py [--copies 20] [--trivial 30] [--assignments hw1]
"""

import argparse
import itertools
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nbformat

from dnncourse.grading.course import prepare
from dnncourse.grading.engine import grade_class
from dnncourse.grading.protocol import Limits, Status
from dnncourse.homework import nbgrader

ROOT = Path(__file__).resolve().parents[1]


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def synthetic_class(source: Path, copies: int, folder: Path) -> dict[str, Path]:
    """``copies`` students, each handing in the notebooks of ``source``."""
    students = {}
    for i in range(copies):
        student = folder / f"student{i:03d}"
        shutil.copytree(source, student)
        students[student.name] = student
    return students


def trivial_course(root: Path) -> Path:
    """A course with the assignment ``trivial``: one answer cell, one test cell (1 point)."""
    root.mkdir(parents=True)
    shutil.copy2(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    nb = nbformat.v4.new_notebook()
    meta = {"grade": False, "solution": True, "locked": False, "task": False}
    answer = "def one():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"
    nb.cells.append(nbformat.v4.new_code_cell(answer))
    nb.cells[-1].metadata["nbgrader"] = {**meta, "grade_id": "one", "schema_version": 3}
    probe = "from dnncourse.grading.probe import probe\nprobe('one', one)"
    test = f"assert one() == 1\n### BEGIN HIDDEN TESTS\n{probe}\n### END HIDDEN TESTS\n"
    nb.cells.append(nbformat.v4.new_code_cell(test))
    meta = {"grade": True, "solution": False, "locked": True, "task": False, "points": 1}
    nb.cells[-1].metadata["nbgrader"] = {**meta, "grade_id": "test_one", "schema_version": 3}
    (root / "solutions" / "trivial").mkdir(parents=True)
    nbformat.write(nb, root / "solutions" / "trivial" / "trivial.ipynb")
    return root


def overhead(copies: int, tmp: Path) -> dict:
    root = trivial_course(tmp / "trivial-course")
    students = synthetic_class(root / "solutions" / "trivial", copies, tmp / "trivial-subs")
    course = prepare(root, "trivial", tmp / "trivial-out")
    start = time.perf_counter()
    results = grade_class(course, students, jobs=1, limits=Limits(), progress=False)
    total = time.perf_counter() - start
    arrived = sorted(
        (p.stat().st_mtime, p.stem) for p in (tmp / "trivial-out" / "results").glob("*.json")
    )
    seconds = {r.student: r.seconds for r in results}
    gaps = [(t1 - t0) - seconds[s1] for (t0, _), (t1, s1) in itertools.pairwise(arrived)]
    return {
        "overhead_ms": 1000 * statistics.median(gaps),
        "overhead_mean_ms": 1000 * statistics.mean(gaps),
        "grading_s": statistics.median(seconds.values()),
        "total_s": total,
        "ok": sum(r.status == Status.OK and r.score == r.max_score for r in results),
    }


def bench_engine(assignment: str, copies: int, jobs: int, tmp: Path) -> dict:
    students = synthetic_class(
        ROOT / "solutions" / assignment, copies, tmp / f"{assignment}-{jobs}-subs"
    )
    start = time.perf_counter()
    course = prepare(ROOT, assignment, tmp / f"{assignment}-{jobs}-out")
    prepared = time.perf_counter()
    cpu = cpu_children()
    results = grade_class(course, students, jobs=jobs, limits=Limits(), progress=False)
    graded = time.perf_counter()
    return {
        "prepare_s": prepared - start,
        "grade_s": graded - prepared,
        "cpu_per_notebook_s": (cpu_children() - cpu) / copies,
        "full_marks": sum(r.score == r.max_score and r.status == Status.OK for r in results),
    }


def bench_nbgrader(assignment: str, copies: int, tmp: Path) -> dict:
    """Plain ``nbgrader autograde`` of the same class in a scratch nbgrader course."""
    course = tmp / f"{assignment}-nbgrader"
    (course / "solutions").mkdir(parents=True)
    shutil.copy2(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copytree(ROOT / "solutions" / assignment, course / "solutions" / assignment)
    start = time.perf_counter()
    nbgrader(course, "generate_assignment", assignment, "--force")
    prepared = time.perf_counter()
    for i in range(copies):
        shutil.copytree(
            ROOT / "solutions" / assignment, course / "submitted" / f"student{i:03d}" / assignment
        )
    cpu = cpu_children()
    t0 = time.perf_counter()
    nbgrader(course, "autograde", assignment, "--create", "--force", timeout=3600)
    graded = time.perf_counter()
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "dnncourse") as gb:
        full = sum(s.score == s.max_score for s in gb.find_assignment(assignment).submissions)
    return {
        "prepare_s": prepared - start,
        "grade_s": graded - t0,
        "cpu_per_notebook_s": (cpu_children() - cpu) / copies,
        "full_marks": full,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=20, help="hw students (default 20)")
    p.add_argument("--trivial", type=int, default=30, help="trivial students (default 30)")
    p.add_argument("--assignments", nargs="*", default=["hw1"])
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        r = overhead(args.trivial, tmp)
        print(
            f"engine overhead per student (trivial assignment, {args.trivial} students, "
            f"1 worker): median {r['overhead_ms']:.0f} ms, mean {r['overhead_mean_ms']:.0f} ms "
            f"(grading itself {r['grading_s']:.2f} s each; {r['ok']} full marks; "
            f"{r['total_s']:.1f} s in all)",
            flush=True,
        )
        print(
            f"{'assignment':<11}{'grader':<14}{'prepare s':>10}{'grade s':>9}{'s/nb':>7}"
            f"{'full':>9}{'vs 1 job':>10}{'vs nbgrader':>13}{'CPU s/nb':>10}"
        )
        for name in args.assignments:
            runs = {"nbgrader": bench_nbgrader(name, args.copies, tmp)}
            for jobs in (1, 2):
                runs[f"dnncourse -j{jobs}"] = bench_engine(name, args.copies, jobs, tmp)
            base, one = runs["nbgrader"]["grade_s"], runs["dnncourse -j1"]["grade_s"]
            for label, r in runs.items():
                print(
                    f"{name:<11}{label:<14}{r['prepare_s']:>10.1f}{r['grade_s']:>9.1f}"
                    f"{r['grade_s'] / args.copies:>7.2f}{r['full_marks']:>5}/{args.copies:<3}"
                    f"{one / r['grade_s']:>9.2f}x{base / r['grade_s']:>12.2f}x"
                    f"{r['cpu_per_notebook_s']:>10.2f}",
                    flush=True,
                )
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
