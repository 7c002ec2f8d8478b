"""The sandbox's cost per notebook: the same class graded sandboxed and with --no-sandbox.

For each assignment (default: all of solutions/), the class is ``--copies`` copies of the
instructor's notebook (full marks each). It is graded twice with ``dnncourse.grading.grade``,
``--jobs 1`` then ``--jobs 2``, into fresh output folders; the one-time preparation
(nbgrader generate_assignment) is timed apart from the grading of the students. Prints seconds
per notebook, the speed-up, and the CPU seconds per notebook (workers and kernels: on a
machine shared with other work the wall-clock speed-up understates what 2 free cores give,
the CPU time does not depend on the load).

Goal (issue 6): speed-up >= 1.7x from 1 to 2 jobs on a 2-core machine, < 5 s per notebook.

The sandbox's cost (issue 10): every class is graded sandboxed and with ``--no-sandbox`` in
the same run, the two modes interleaved (``--rounds``) so that a change in the machine's load
hits both alike; the table gives seconds per notebook for each and the sandbox's extra in
percent (goal: at most 5 %). Two more lines time what the sandbox adds to one process alone
(``python -S -c pass`` in a fresh sandbox, its cgroup included, and without) and to one
kernel (a one-cell notebook executed ``--starts`` times in each mode, interleaved; median). The
CPU column counts the kernels' time only without a sandbox (a sandboxed kernel is reaped by
the sandbox's pid 1, whose time the worker never collects), so compare wall-clock here.

Usage::

    python benchmarks/bench_sandbox.py [--copies 40] [--assignments hw1 hw3] [--jobs 1 2]
                                       [--rounds 1] [--starts 10]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from dnncourse.grading.course import prepare
from dnncourse.grading.engine import grade_class
from dnncourse.grading.execute import Limits, execute
from dnncourse.grading.sandbox import KernelBox, Options, problem
from dnncourse.homework import assignments

sys.path.insert(0, str(Path(__file__).parent))
from bench_grading import synthetic_class  # the one definition of a class

ROOT = Path(__file__).resolve().parents[1]


def bench(assignment: str, copies: int, jobs: int, tmp: Path, sandbox: bool = True) -> dict:
    tag = f"{assignment}-{jobs}-{'sandbox' if sandbox else 'plain'}-{time.monotonic_ns()}"
    students = synthetic_class(ROOT / "solutions" / assignment, copies, tmp / f"{tag}-subs")
    start = time.perf_counter()
    course = prepare(ROOT, assignment, tmp / f"{tag}-out")
    prepared = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = grade_class(
        course, students, jobs=jobs, limits=Limits(), progress=False, sandbox=sandbox
    )
    graded = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    full = sum(r.score == r.max_score and r.status == "ok" for r in rows)
    return {
        "prepare_s": prepared - start,
        "grade_s": graded - prepared,
        "per_notebook_s": (graded - prepared) / copies,
        "cpu_per_notebook_s": cpu_s / copies,
        "full_marks": full,
    }


def sandbox_setup(starts: int) -> dict[bool, float]:
    """Median seconds of ``python -S -c pass`` in a fresh sandbox (cgroup included) and not."""
    times = {True: [], False: []}
    inner = [sys.executable, "-S", "-c", "pass"]
    for _ in range(3 * starts):
        folder = Path(tempfile.mkdtemp())
        start = time.perf_counter()
        box = KernelBox(Options(folder=folder))
        subprocess.run(box.command(inner), check=True)
        box.close()
        times[True].append(time.perf_counter() - start)
        shutil.rmtree(folder)
        start = time.perf_counter()
        subprocess.run(inner, check=True)
        times[False].append(time.perf_counter() - start)
    return {mode: statistics.median(values) for mode, values in times.items()}


def kernel_starts(starts: int, tmp: Path) -> dict[bool, float]:
    """Median seconds to start a kernel, run one cell and stop it, per mode (interleaved)."""
    times = {True: [], False: []}
    for _ in range(starts):
        for sandbox in (True, False):
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
            start = time.perf_counter()
            run = execute(nb, tmp, Limits(), sandbox=sandbox)
            times[sandbox].append(time.perf_counter() - start)
            assert run.status == "ok", run
    return {mode: statistics.median(values) for mode, values in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=40, help="students per class (default 40)")
    p.add_argument("--assignments", nargs="*", default=None, help="default: all")
    p.add_argument("--jobs", type=int, nargs="*", default=[1, 2])
    p.add_argument("--rounds", type=int, default=1, help="sandbox/plain pairs per class")
    p.add_argument("--starts", type=int, default=10, help="kernel starts per mode")
    args = p.parse_args()
    if problem():
        raise SystemExit(f"no sandbox on this machine: {problem()}")
    names = args.assignments or assignments(ROOT)
    print(f"{os.cpu_count()} CPUs, {args.copies} copies per assignment, load {os.getloadavg()}")
    print(
        f"{'assignment':<12}{'jobs':>5}{'prepare s':>11}{'grade s':>10}{'s/notebook':>12}"
        f"{'full marks':>12}{'speed-up':>10}{'CPU s/nb':>10}{'no sandbox s/nb':>17}"
        f"{'sandbox +%':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            base = None
            for jobs in args.jobs:
                boxed, plain = [], []
                for i in range(args.rounds):  # alternate which mode goes first
                    for sandbox in (True, False) if i % 2 == 0 else (False, True):
                        r = bench(name, args.copies, jobs, Path(tmp), sandbox=sandbox)
                        (boxed if sandbox else plain).append(r)
                r = min(boxed, key=lambda x: x["grade_s"])
                q = min(plain, key=lambda x: x["grade_s"])
                base = base or r["grade_s"]
                extra = 100 * (r["per_notebook_s"] / q["per_notebook_s"] - 1)
                print(
                    f"{name:<12}{jobs:>5}{r['prepare_s']:>11.1f}{r['grade_s']:>10.1f}"
                    f"{r['per_notebook_s']:>12.2f}{r['full_marks']:>8}/{args.copies:<3}"
                    f"{base / r['grade_s']:>9.2f}x{q['cpu_per_notebook_s']:>10.2f}"
                    f"{q['per_notebook_s']:>17.2f}{extra:>+11.1f}%",
                    flush=True,
                )
        if args.starts:
            times = sandbox_setup(args.starts)
            print(
                f"the sandbox alone (python -S -c pass), median of {3 * args.starts}: "
                f"sandbox {1000 * times[True]:.0f} ms, no sandbox {1000 * times[False]:.0f} ms, "
                f"sandbox +{1000 * (times[True] - times[False]):.0f} ms",
                flush=True,
            )
            times = kernel_starts(args.starts, Path(tmp))
            print(
                f"one kernel (start, one cell, stop), median of {args.starts}: "
                f"sandbox {1000 * times[True]:.0f} ms, no sandbox {1000 * times[False]:.0f} ms, "
                f"sandbox +{1000 * (times[True] - times[False]):.0f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
