"""Grading speed: the Dask engine against itself (1 and 2 workers) and against plain nbgrader,
and where each student's time goes (issue 24's breakdown).

Measured in one run:

1. **Engine overhead per student** on a trivial assignment (one answer, one test cell):
   the class is graded with one worker, so students follow each other; the overhead is the
   time between two consecutive results arriving at the client minus the grading time the
   worker measured for the second (task dispatch, the bundle, result transfer, storing it
   in the gradebook and writing the files). Goal (issue 12): at most 50 ms.
2. **hw1 with 1 and 2 workers** (``--jobs``), ``--copies`` copies of the instructor's
   notebook (full marks each); one-time costs (``nbgrader generate_assignment``) are timed
   apart; the local cluster's start is part of the grading time.
3. **Plain ``nbgrader autograde``** on the same class of hw1 notebooks, in a scratch nbgrader
   course (``generate_assignment`` timed apart, as above), run through a small driver that
   times nbgrader's preprocessors and its kernel's start (:func:`nbgrader_driver`).
4. **The breakdown** per student (:mod:`dnncourse.grading.timings`, carried in each
   ``Result.timings``): median wall and CPU seconds of each phase, and its share of the
   wall time per student (the mean over students; the row "dispatch: engine" is what is
   left of the class's wall time per student: the cluster's start, the scheduler, the
   client), beside nbgrader's own phases. A kernel start is split further by a
   calibration outside the sandbox (a bare ``python``; plus the kernel's preload; plus
   ipykernel's import).
5. **The goals** of issue 24 as PASS/FAIL lines: ``--jobs 1`` at least 1.5x plain nbgrader,
   ``--jobs 2`` at least 2.5x (wall time, measured side by side in this run).

CPU seconds (all processes: this one with the scheduler, the workers, the grading
processes and the kernels) and the load average are printed too: on a machine shared with
other work, wall-clock ratios understate what free cores give.

Usage::

    python benchmarks/bench_grading.py [--copies 8] [--trivial 10] [--assignments hw1]
"""

import argparse
import atexit
import itertools
import json
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
from dnncourse.grading.engine import connect, grade_class
from dnncourse.grading.kernel import PRELOAD
from dnncourse.grading.protocol import Limits, Status
from dnncourse.grading.timings import PHASES
from dnncourse.homework import tool_env

ROOT = Path(__file__).resolve().parents[1]
GOALS = {1: 1.5, 2: 2.5}  # issue 24: --jobs N at least this many times plain nbgrader
ENGINE_REST = "dispatch: engine"
CLUSTER = "cluster start (once)"
NBGRADER_PHASES = (  # the rows of nbgrader's breakdown, in its order
    "sanitize preprocessors",  # ClearOutput ... CheckCellMetadata (the first pass)
    "kernel start",  # nbclient's start of a kernel, up to its kernel_info reply
    "cells",  # Execute, less the kernel's start (its shutdown included)
    "after-run preprocessors",  # IgnorePattern, ClearMetadata, LimitOutput, SaveAutoGrades...
    "write and the rest",  # the notebook's other work: reading, writing, the exporter
    "app and database",  # the run outside the notebooks (start, gradebook), per notebook
)


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_all() -> float:
    """CPU seconds of this process (the client and the local scheduler) and its children."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + cpu_children()


class CpuMeter:
    """CPU seconds of this benchmark and all it starts, read from a cgroup of its own.

    A sandboxed kernel runs in a cgroup of its own (its CPU is in each result's timings)
    and is killed with its sandbox, never waited for by the grader: the children's
    ``getrusage`` misses it. Where no cgroup can be made (not root), ``getrusage`` stands in
    (:attr:`exact` False: the grading processes' kernels then count in part or not at all).
    """

    def __init__(self):
        self.folder, self.back = None, None
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        root = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/cpuacct")
        self.usage, self.scale = ("cpu.stat", 1e6) if v2 else ("cpuacct.usage", 1e9)
        try:
            mine = Path("/proc/self/cgroup").read_text().splitlines()
            # hierarchy-id:controllers:path, the unified one (v2) or cpuacct's (v1)
            fields = [ln.split(":", 2) for ln in mine]
            path = next(f[2] for f in fields if (f[0] == "0" if v2 else "cpuacct" in f[1]))
            self.back = root / path.lstrip("/") / "cgroup.procs"
            folder = root / f"dnncourse-bench-{os.getpid()}"
            folder.mkdir()
            (folder / "cgroup.procs").write_text(str(os.getpid()))
            self.folder = folder
        except (OSError, StopIteration):
            self.close()

    @property
    def exact(self) -> bool:
        return self.folder is not None

    def __call__(self) -> float:
        if self.folder is None:
            return cpu_all()
        text = (self.folder / self.usage).read_text()
        if self.usage == "cpu.stat":
            text = dict(line.split() for line in text.splitlines())["usage_usec"]
        return int(text) / self.scale

    def close(self) -> None:
        """Back to where this process was; the cgroup removed once its last process ended."""
        if self.folder is not None:
            try:
                self.back.write_text(str(os.getpid()))
            except OSError:
                pass
            for _ in range(50):  # processes just killed may still be in it for a moment
                try:
                    self.folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        self.folder = None


CPU = {"meter": cpu_all}  # main() puts a CpuMeter here


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
    meter = CPU["meter"]
    wall, cpu = time.perf_counter(), meter()
    with connect(jobs):  # the local cluster alone, started and stopped: a one-time cost
        pass
    cluster = (time.perf_counter() - wall, meter() - cpu)
    prepared = time.perf_counter()
    cpu = meter()
    results = grade_class(course, students, jobs=jobs, limits=Limits(), progress=False)
    graded = time.perf_counter()
    # the kernels ran in cgroups of their own: their CPU is in the timings
    kernels = sum(lap[2] for r in results for lap in r.timings.values() if len(lap) > 2)
    cpu = meter() - cpu + kernels
    # the wall time a worker spends per student, and the CPU per student, of the whole run
    per_student = (graded - prepared) * jobs / copies
    laps = [dict(r.timings) for r in results]
    for lap in laps:
        lap[CLUSTER] = (cluster[0] * jobs / copies, cluster[1] / copies, 0.0)
        lap[ENGINE_REST] = (
            per_student - sum(v[0] for v in lap.values()),
            cpu / copies - sum(v[1] for v in lap.values()),
            0.0,
        )
    return {
        "prepare_s": prepared - start,
        "grade_s": graded - prepared,
        "cpu_per_notebook_s": cpu / copies,
        "full_marks": sum(r.score == r.max_score and r.status == Status.OK for r in results),
        "laps": laps,
        "per_student_s": per_student,
    }


def nbgrader_driver(out: str, *args: str) -> None:
    """Run ``nbgrader ARGS`` in this process, timing its phases per notebook into ``out``.

    Wraps nbconvert's ``Preprocessor.__call__`` (each preprocessor, grouped as nbgrader runs
    them: the sanitizing pass, ``Execute``, the rest of the autograding pass), nbclient's
    kernel start, and ``Autograde.convert_single_notebook`` (a notebook's total). CPU is
    this process's and its reaped children's (the kernel, once shut down); a kernel's start
    adds the kernel's own CPU time so far (then taken out of the cells').
    """
    import psutil
    from nbclient import NotebookClient
    from nbclient.util import run_sync
    from nbconvert.preprocessors.base import Preprocessor
    from nbgrader.apps.nbgraderapp import NbGraderApp
    from nbgrader.converters.autograde import Autograde
    from nbgrader.preprocessors import Execute

    notebooks: list[dict] = []
    state = {"sanitizing": True}

    def add(phase: str, wall: float, cpu: float) -> None:
        if not notebooks:  # not autograde (generate_assignment): nothing to time
            return
        spent = notebooks[-1].setdefault(phase, [0.0, 0.0])
        spent[0] += wall
        spent[1] += cpu

    def timed(function, phase_of):
        def wrapper(self, *a, **kw):
            wall, cpu = time.perf_counter(), cpu_all()
            try:
                return function(self, *a, **kw)
            finally:
                add(phase_of(self), time.perf_counter() - wall, cpu_all() - cpu)

        return wrapper

    def phase_of(pp) -> str:
        if state["sanitizing"]:
            return "sanitize preprocessors"
        return "execute" if isinstance(pp, Execute) else "after-run preprocessors"

    Preprocessor.__call__ = timed(Preprocessor.__call__, phase_of)
    start_client = NotebookClient.async_start_new_kernel_client

    async def start_timed(self, *a, **kw):
        wall, cpu = time.perf_counter(), cpu_all()
        try:
            return await start_client(self, *a, **kw)
        finally:
            try:
                times = psutil.Process(self.km.provisioner.process.pid).cpu_times()
                kernel = times.user + times.system
            except Exception:
                kernel = 0.0
            add("kernel start", time.perf_counter() - wall, cpu_all() - cpu + kernel)

    NotebookClient.async_start_new_kernel_client = start_timed
    NotebookClient.start_new_kernel_client = run_sync(start_timed)  # setup_kernel's
    convert = Autograde.convert_single_notebook

    def convert_timed(self, filename):
        notebooks.append({})
        wall, cpu = time.perf_counter(), cpu_all()
        original = BaseConverter.convert_single_notebook

        def one_pass(this, name):
            state["sanitizing"] = this._sanitizing
            return original(this, name)

        BaseConverter.convert_single_notebook = one_pass
        try:
            return convert(self, filename)
        finally:
            BaseConverter.convert_single_notebook = original
            add("total", time.perf_counter() - wall, cpu_all() - cpu)

    from nbgrader.converters.base import BaseConverter

    Autograde.convert_single_notebook = convert_timed
    wall, cpu = time.perf_counter(), cpu_all()
    try:
        NbGraderApp.launch_instance(argv=list(args))
    except SystemExit as done:
        if done.code:
            raise
    finally:
        run = {"wall": time.perf_counter() - wall, "cpu": cpu_all() - cpu}
        Path(out).write_text(json.dumps({"notebooks": notebooks, "run": run}))


def nbgrader_laps(timed: dict) -> list[dict[str, tuple[float, float]]]:
    """nbgrader's phases per notebook (:data:`NBGRADER_PHASES`), from the driver's file."""
    notebooks, run = timed["notebooks"], timed["run"]
    outside = [
        (run["wall"] - sum(nb["total"][0] for nb in notebooks)) / len(notebooks),
        (run["cpu"] - sum(nb["total"][1] for nb in notebooks)) / len(notebooks),
    ]
    laps = []
    for nb in notebooks:
        zero = [0.0, 0.0]
        start, execute = nb.get("kernel start", zero), nb.get("execute", zero)
        lap = {
            "sanitize preprocessors": nb.get("sanitize preprocessors", zero),
            "kernel start": start,
            "cells": [execute[0] - start[0], execute[1] - start[1]],
            "after-run preprocessors": nb.get("after-run preprocessors", zero),
        }
        lap["write and the rest"] = [
            nb["total"][i] - sum(v[i] for v in lap.values()) for i in (0, 1)
        ]
        lap["app and database"] = outside
        laps.append({k: tuple(v) for k, v in lap.items()})
    return laps


def bench_nbgrader(assignment: str, copies: int, tmp: Path) -> dict:
    """Plain ``nbgrader autograde`` of the same class in a scratch nbgrader course."""
    course = tmp / f"{assignment}-nbgrader"
    (course / "solutions").mkdir(parents=True)
    shutil.copy2(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copytree(ROOT / "solutions" / assignment, course / "solutions" / assignment)
    start = time.perf_counter()
    run_nbgrader(course, tmp / "generate.json", "generate_assignment", assignment, "--force")
    prepared = time.perf_counter()
    for i in range(copies):
        shutil.copytree(
            ROOT / "solutions" / assignment, course / "submitted" / f"student{i:03d}" / assignment
        )
    meter = CPU["meter"]
    cpu = meter()
    t0 = time.perf_counter()
    timed = run_nbgrader(
        course, tmp / "autograde.json", "autograde", assignment, "--create", "--force"
    )
    graded = time.perf_counter()
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "dnncourse") as gb:
        full = sum(s.score == s.max_score for s in gb.find_assignment(assignment).submissions)
    laps = nbgrader_laps(timed)
    per_student = (graded - t0) / copies
    for lap in laps:  # the driver's own start (Python, imports) is part of nbgrader's run
        lap["app and database"] = (
            lap["app and database"][0] + per_student - timed["run"]["wall"] / copies,
            lap["app and database"][1],
        )
    return {
        "prepare_s": prepared - start,
        "grade_s": graded - t0,
        "cpu_per_notebook_s": (meter() - cpu) / copies,
        "full_marks": full,
        "laps": laps,
        "per_student_s": per_student,
    }


def run_nbgrader(course: Path, out: Path, *args: str) -> dict:
    """``nbgrader ARGS`` in ``course``, through :func:`nbgrader_driver`; its timings."""
    proc = subprocess.run(
        [sys.executable, __file__, "--nbgrader-driver", str(out), *args],
        cwd=course,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(out.read_text())


def calibrate_kernel_start(runs: int = 2) -> dict[str, tuple[float, float]]:
    """What a cold kernel's start is made of, outside the sandbox (best of ``runs``): a
    bare Python, the kernel's preload (:data:`~dnncourse.grading.kernel.PRELOAD`), and
    ipykernel's import; each less the step before."""
    steps = {
        "Python start": "pass",
        "preload imports": "; ".join(f"import {name}" for name in PRELOAD),
    }
    steps["ipykernel import"] = steps["preload imports"] + (
        "; from ipykernel.kernelapp import IPKernelApp"
    )
    best = {}
    for label, code in steps.items():
        times = []
        for _ in range(runs):
            wall, cpu = time.perf_counter(), cpu_children()
            subprocess.run([sys.executable, "-c", code], check=True, env=tool_env())
            times.append((time.perf_counter() - wall, cpu_children() - cpu))
        best[label] = min(times)
    previous, steps_only = (0.0, 0.0), {}
    for label, (wall, cpu) in best.items():
        steps_only[label] = (wall - previous[0], cpu - previous[1])
        previous = (wall, cpu)
    return steps_only


def _stats(laps: list[dict], phase: str) -> tuple | None:
    """Median wall, CPU and kernel CPU of ``phase``, and its mean wall over all students."""
    got = [lap[phase] for lap in laps if phase in lap]
    if not got:
        return None
    kernel = [v[2] if len(v) > 2 else 0.0 for v in got]
    return (
        statistics.median(v[0] for v in got),
        statistics.median(v[1] for v in got),
        statistics.median(kernel),
        sum(v[0] for v in got) / len(laps),
    )


def breakdown(runs: dict, calibration: dict) -> str:
    """The table of phases: median wall and CPU seconds per student (CPU: all processes;
    kernel: the kernel's part of it), each phase's share of the wall time per student."""
    ours, nbg, two = runs["dnncourse -j1"], runs["nbgrader"], runs["dnncourse -j2"]
    header = (
        f"{'dnncourse --jobs 1 phase':<26}{'wall s':>8}{'CPU s':>7}{'kernel':>7}{'share':>7}"
        f"{'CPU -j2':>8}   {'nbgrader phase':<24}{'wall s':>8}{'CPU s':>7}{'share':>7}"
    )
    lines = [header, "-" * len(header)]
    left, right = [*PHASES, ENGINE_REST, CLUSTER], list(NBGRADER_PHASES)
    for i in range(max(len(left), len(right))):
        text = ""
        if i < len(left):
            got, got2 = _stats(ours["laps"], left[i]), _stats(two["laps"], left[i])
            if got:
                wall, cpu, kernel, mean = got
                share = 100 * mean / ours["per_student_s"]
                text = f"{left[i]:<26}{wall:>8.3f}{cpu:>7.3f}{kernel:>7.3f}{share:>6.1f}%"
                text += f"{got2[1]:>8.3f}" if got2 else ""
            else:
                text = f"{left[i]:<26}{'-':>8}{'-':>7}"
        text = f"{text:<63}   "
        if i < len(right):
            got = _stats(nbg["laps"], right[i])
            if got:
                wall, cpu, _, mean = got
                share = 100 * mean / nbg["per_student_s"]
                text += f"{right[i]:<24}{wall:>8.3f}{cpu:>7.3f}{share:>6.1f}%"
        lines.append(text.rstrip())
    lines.append(
        f"{'total':<26}{ours['per_student_s']:>8.3f}{ours['cpu_per_notebook_s']:>7.3f}"
        f"{'':>7}{100:>6.1f}%{two['cpu_per_notebook_s']:>8.3f}   "
        f"{'total':<24}{nbg['per_student_s']:>8.3f}{nbg['cpu_per_notebook_s']:>7.3f}"
        f"{100:>6.1f}%"
    )
    dispatch = sorted(lap["dispatch: worker"][0] for lap in ours["laps"])
    lines.append(
        "wall s: a worker's per student (the class's wall time x jobs / students in the "
        "totals); share: of that wall time, mean over the students"
    )
    lines.append(
        "one-time: the cluster's start and stop (measured apart, spread over the students); "
        "each worker's grading process starts in its first student's 'dispatch: worker' "
        f"(longest {dispatch[-1]:.2f} s, median {statistics.median(dispatch):.2f} s)"
    )
    lines.append(
        "a cold kernel start, calibrated outside the sandbox: "
        + ", ".join(f"{k} {w:.2f} s wall / {c:.2f} s CPU" for k, (w, c) in calibration.items())
    )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--nbgrader-driver"]:
        nbgrader_driver(*sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=8, help="hw students (default 8)")
    p.add_argument(
        "--trivial", type=int, default=10, help="trivial students (default 10; 0: skip)"
    )
    p.add_argument("--assignments", nargs="*", default=["hw1"])
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()}", flush=True)
    meter = CPU["meter"] = CpuMeter()
    atexit.register(meter.close)  # also when the benchmark stops half-way
    if not meter.exact:
        print("no cgroup of our own (not root?): CPU s from getrusage, the kernels in part")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.trivial >= 2:
            r = overhead(args.trivial, tmp)
            print(
                f"engine overhead per student (trivial assignment, {args.trivial} students, "
                f"1 worker): median {r['overhead_ms']:.0f} ms, mean "
                f"{r['overhead_mean_ms']:.0f} ms (grading itself {r['grading_s']:.2f} s each; "
                f"{r['ok']} full marks; {r['total_s']:.1f} s in all)",
                flush=True,
            )
        calibration = calibrate_kernel_start()
        for name in args.assignments:
            runs = {"nbgrader": bench_nbgrader(name, args.copies, tmp)}
            for jobs in (1, 2):
                runs[f"dnncourse -j{jobs}"] = bench_engine(name, args.copies, jobs, tmp)
            print(
                f"\n{name}, {args.copies} students (wall s per student: a worker's; "
                "CPU s: all processes)"
            )
            print(breakdown(runs, calibration))
            print(
                f"\n{'assignment':<11}{'grader':<14}{'prepare s':>10}{'grade s':>9}{'s/nb':>7}"
                f"{'full':>9}{'vs 1 job':>10}{'vs nbgrader':>13}{'CPU s/nb':>10}"
            )
            base, one = runs["nbgrader"]["grade_s"], runs["dnncourse -j1"]["grade_s"]
            for label, r in runs.items():
                print(
                    f"{name:<11}{label:<14}{r['prepare_s']:>10.1f}{r['grade_s']:>9.1f}"
                    f"{r['grade_s'] / args.copies:>7.2f}{r['full_marks']:>5}/{args.copies:<3}"
                    f"{one / r['grade_s']:>9.2f}x{base / r['grade_s']:>12.2f}x"
                    f"{r['cpu_per_notebook_s']:>10.2f}",
                    flush=True,
                )
            for jobs, goal in GOALS.items():
                ratio = base / runs[f"dnncourse -j{jobs}"]["grade_s"]
                verdict = "PASS" if ratio >= goal else "FAIL"
                print(
                    f"{verdict} {name}: --jobs {jobs} is {ratio:.2f}x plain nbgrader "
                    f"(goal >= {goal}x)"
                )
    meter.close()
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
