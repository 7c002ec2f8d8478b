"""Grade one student on a worker machine: bytes and a bundle in, a :class:`Result` out.

Two halves, in two processes:

* :func:`grade_task` runs inside a Dask worker (the task of :mod:`~.engine`). It unpacks the
  assignment's :class:`~.protocol.Bundle` once per worker into a temporary folder named by
  its hash, writes the student's files into a fresh temporary folder, and hands the student
  to a *grading process* it keeps warm (``python -m dnncourse.grading.worker``). If that
  process does not answer within the task's hard timeout it is killed with everything it
  started (kernel and sandbox) and replaced; the Dask worker lives on.
* The grading process (:func:`serve`) reads one :class:`Job` per line on a private pipe
  and answers with one :class:`~.protocol.Result` line on another, both through the codec
  of :mod:`~.protocol`: find and read the notebook, rebuild it on the released
  notebook, nbgrader's sanitizers with the instructor's cells from the bundle (never the
  gradebook), execute, the trusted verdict (the kernel's probe records against the
  bundle's reference run, :func:`verdict_of`), feedback page. Student code never runs in either
  process: it runs in the kernel, a child of the grading process with its own limits. While
  a notebook runs, the kernel of the next one (the student's next notebook, else the next
  student's first) is launched in a sandbox of its own (:mod:`.warm`); a ``warm`` job
  launches one ahead of the first task. When the worker is gone (the task pipe hangs up),
  the grading process kills its kernels and exits, even mid-student.

Nothing here writes outside its temporary folders; the client stores the result.
"""

import dataclasses
import json
import os
import queue
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import nbformat
import psutil
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearOutput,
    DeduplicateIds,
    LimitOutput,
    OverwriteCells,
)
from nbgrader.preprocessors.base import NbGraderPreprocessor
from traitlets import Dict

from . import rules, sanitize, timings, verdict, warm
from .execute import execute
from .feedback import feedback_page, notice_page
from .processes import kill_tree
from .protocol import (
    Bundle,
    Check,
    Limits,
    Result,
    Status,
    Task,
    decode,
    encode,
    failed,
    zero_checks,
)
from .safe_html import safe_cells

RESULT_PREFIX = "@@dnncourse-result "
NO_SANDBOX = "graded without a sandbox (--no-sandbox)"


# -- in the grading process ---------------------------------------------------------------------
class BundleCells(OverwriteCells):
    """nbgrader's ``OverwriteCells`` reading the instructor's cells from the bundle.

    Restores cell types, ``locked`` and ``points``, and the source of every locked cell (the
    test cells with their hidden tests), exactly as nbgrader does from the gradebook.
    """

    cells = Dict(help="the bundle's gradebook.json entry of this notebook")

    def preprocess(self, nb, resources):
        self.notebook_id = resources["nbgrader"]["notebook"]
        self.assignment_id = resources["nbgrader"]["assignment"]
        self.gradebook = self  # the find_* methods below
        return NbGraderPreprocessor.preprocess(self, nb, resources)

    def find_source_cell(self, grade_id, notebook, assignment):
        if grade_id not in self.cells["source_cells"]:
            raise MissingEntry()
        return SimpleNamespace(name=grade_id, **self.cells["source_cells"][grade_id])

    def find_graded_cell(self, grade_id, notebook, assignment):
        if grade_id not in self.cells["grade_cells"]:
            raise MissingEntry()
        return SimpleNamespace(name=grade_id, max_score=self.cells["grade_cells"][grade_id])


@dataclass(frozen=True)
class Job:
    """One line to the grading process: a student's task, where its bundle is unpacked, and
    the nonce its answer must carry. With ``warm``, only launch a kernel for the task's
    assignment (its first notebook, its limits and sandbox) ahead of a task to come; no
    answer."""

    task: Task
    bundle_dir: str
    nonce: str
    warm: bool = False


def verdict_of(bundle: Path, name: str, nb, run) -> list[Check]:
    """The trusted verdict on an executed notebook: one :class:`Check` per graded cell.

    Compares the probe records in ``nb`` with the bundle's reference run of the instructor's
    solution (:mod:`~.reference`, made by the client), then marks the test cells' outputs so
    that the graded notebook agrees with the scores.
    """
    expected = json.loads((bundle / "reference" / f"{name}.json").read_text())
    stopped = run.status if run.stopped_at is not None else ""
    checks = verdict.decide(nb, expected, name, stopped)
    # the statement's rules, from the student's code (the kernel's recorders are evidence)
    timings.lap("verdict: rules")
    checks = rules.apply(checks, rules.analyze(nb, expected, modules=_data_modules(bundle)))
    timings.lap("verdict: comparisons")
    verdict.mark(nb, checks)
    return checks


def _data_modules(bundle: Path) -> set[str]:
    """Modules the assignment's own files provide (a student may import them)."""
    data = bundle / "data"
    if not data.is_dir():
        return set()
    return {p.stem for p in data.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}


def _released_tests(release) -> dict[str, str]:
    return {c.metadata.nbgrader["grade_id"]: c.source for c in release.cells if verdict.is_test(c)}


@dataclass
class Graded:
    """One notebook of a student, graded (or not): what :func:`grade_student` adds up."""

    status: Status
    notes: list[str]
    checks: list[Check]
    page: str
    graded: bytes | None = None  # the graded notebook; None where none ran


def grade_notebook(
    bundle: Path,
    task: Task,
    folder: Path,
    name: str,
    kernels: warm.Kernels | None = None,
    after: str | None = None,
) -> Graded:
    """Grade notebook ``name`` of one student: status, notes, checks, page, graded bytes.

    With ``kernels``, the notebook runs in the kernel launched ahead for it (if one waits),
    and the kernel of notebook ``after`` (the next one to grade) is launched meanwhile.
    """
    timings.lap("read and rebuild")
    assignment, limits = task.assignment, task.limits
    cells = json.loads((bundle / "gradebook.json").read_text())[name]
    release = nbformat.read(bundle / "release" / f"{name}.ipynb", as_version=4)
    title = f"{assignment}: {name}"
    expected = {p.stem for p in (bundle / "release").glob("*.ipynb")}
    try:
        path, renamed = sanitize.find_notebook(folder, name, expected)
        student_nb = sanitize.read_notebook(path)
    except sanitize.Rejected as rejected:
        return Graded(
            rejected.status,
            [rejected.detail],
            zero_checks(name, cells["grade_cells"]),
            notice_page(title, rejected.status, rejected.detail),
        )
    nb, notes = sanitize.rebuild(student_nb, release)
    if renamed:
        notes.insert(0, renamed)
    timings.lap("nbgrader preprocessors")
    resources = {
        "nbgrader": {"student": task.student, "assignment": assignment, "notebook": name},
        "metadata": {},
    }
    for pp in (ClearOutput, DeduplicateIds):
        nb, resources = pp().preprocess(nb, resources)
    kernelspec = json.loads(cells["kernelspec"] or "null")
    if kernelspec:  # nbgrader's OverwriteKernelspec, from the bundle
        nb.metadata["kernelspec"] = kernelspec
    nb, resources = BundleCells(cells=cells).preprocess(nb, resources)
    nb, resources = CheckCellMetadata().preprocess(nb, resources)
    data = bundle / "data" if (bundle / "data").is_dir() else None
    kernel = None
    if kernels is not None:
        timings.lap("sandbox")  # the next kernel's launch is charged there
        key = warm.Key.of(bundle, name, limits, task.sandbox)
        kernel = kernels.take(key)
        kernels.prepare(dataclasses.replace(key, notebook=after or name))
    # sandboxed, the data files are bound read-only into the kernel's working folder (no
    # copy); without a sandbox it runs as the grader in a fresh folder holding a copy
    run = execute(nb, None, limits, sandbox=task.sandbox, data=data, kernel=kernel)
    timings.lap("verdict: comparisons")
    checks = verdict_of(bundle, name, nb, run)
    timings.lap("limit output")
    nb, resources = LimitOutput().preprocess(nb, resources)
    safe_cells(nb)  # the graded notebook is rendered unsanitized by nbgrader's formgrader
    timings.lap("feedback page")
    page = feedback_page(nb, _released_tests(release), checks, resources)
    timings.lap("graded notebook")
    status = Status.RENAMED if renamed and run.status == Status.OK else run.status
    return Graded(status, notes + run.details, checks, page, nbformat.writes(nb).encode())


def grade_student(
    bundle: Path, task: Task, folder: Path, kernels: warm.Kernels | None = None
) -> Result:
    """The result of one student, every notebook of the assignment.

    With ``kernels`` (:mod:`.warm`), each notebook's kernel is launched while the one before
    runs: the next notebook's, and after the last one the first notebook's of the next
    student (the same assignment, limits and sandbox: the likeliest next task).
    """
    start = time.perf_counter()
    statuses, details, checks, pages, graded = [], [], [], {}, {}
    names = sorted(p.stem for p in (bundle / "release").glob("*.ipynb"))
    with timings.record("read and rebuild") as laps:  # for the benchmark only
        for index, name in enumerate(names):
            after = names[(index + 1) % len(names)]
            try:
                one = grade_notebook(bundle, task, folder, name, kernels, after)
            except Exception as error:  # a bug of ours or nbgrader's: this notebook only
                traceback.print_exc(file=sys.stderr)
                cells = json.loads((bundle / "gradebook.json").read_text())[name]
                one = Graded(
                    Status.GRADER_ERROR,
                    [f"{name}: {error!r}"],
                    zero_checks(name, cells["grade_cells"]),
                    notice_page(name, Status.GRADER_ERROR, "the grader failed"),
                )
            statuses.append(one.status)
            details += one.notes
            checks += one.checks
            pages[name] = one.page
            if one.graded is not None:
                graded[name] = one.graded
    if not task.sandbox:
        details.append(NO_SANDBOX)
    return Result(
        student=task.student,
        assignment=task.assignment,
        status=Status.worst(statuses),
        score=sum(c.points for c in checks),
        max_score=sum(c.max_points for c in checks),
        detail="; ".join(details),
        seconds=round(time.perf_counter() - start, 2),
        checksum=task.checksum,
        bundle=task.bundle,
        checks=tuple(checks),
        feedback=pages,
        graded=graded,
        timings=laps.rounded(),
    )


def serve() -> None:
    """Serve jobs; the protocol pipes get private descriptors the kernels do not inherit."""
    tasks = os.fdopen(os.dup(0), "r")
    threading.Thread(target=_watch_the_worker, args=(tasks.fileno(),), daemon=True).start()
    results = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # a kernel reading stdin must not eat the next task
    os.dup2(2, 1)  # nor write fake results: fd 1 is now the log
    sys.stdout = sys.stderr
    kernels = warm.Kernels()  # the next kernel, launched while a student runs
    try:
        for line in tasks:
            if _worker_gone(tasks.fileno()):  # a task left in the pipe by a worker since killed
                _end_with_the_worker()
            job = decode(Job, line)
            if job.warm:
                _warm_up(kernels, Path(job.bundle_dir), job.task)
                continue
            result = _grade_job(job, kernels)
            results.write(f"{RESULT_PREFIX}{job.nonce} {encode(result)}\n")
            results.flush()
    finally:
        kernels.close()


def _grade_job(job: Job, kernels: warm.Kernels) -> Result:
    task = job.task
    folder = Path(tempfile.mkdtemp(prefix="submitted-"))  # in our TMPDIR, see GradingProcess
    try:
        _write_files(folder, task.files)
        return grade_student(Path(job.bundle_dir), task, folder, kernels)
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        return failed(task.student, task.assignment, repr(error))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _warm_up(kernels: warm.Kernels, bundle: Path, task: Task) -> None:
    """Launch a kernel for the first notebook of ``bundle`` with the task's limits."""
    names = sorted(p.stem for p in (bundle / "release").glob("*.ipynb"))
    if names:
        kernels.prepare(warm.Key.of(bundle, names[0], task.limits, task.sandbox))


def _worker_gone(tasks: int, wait: bool = False) -> bool:
    """Has the task pipe hung up (its one writer, the Dask worker, is gone)? With ``wait``,
    block until it does."""
    poller = select.poll()
    poller.register(tasks, 0)  # no event asked for: only a hang-up or an error is reported
    return bool(poller.poll(None if wait else 0))


def _end_with_the_worker() -> None:
    """Kill our kernel and its sandbox, then exit: the worker is gone and its student will
    be graded again by the queue."""
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(1)


def _watch_the_worker(tasks: int) -> None:
    """End this process, its kernel and the sandbox as soon as the Dask worker is gone, even
    while the main thread is grading.

    ``PR_SET_PDEATHSIG`` cannot do this: set by this process once it has started, it is
    never delivered if the worker was killed meanwhile (a restarted service saw this
    process, reparented to init, read the task already in its pipe and grade it in full).
    """
    _worker_gone(tasks, wait=True)
    _end_with_the_worker()


# -- in the Dask worker ---------------------------------------------------------------------------
class GradingProcess:
    """The warm grading process of this Dask worker, and the lines it answers."""

    def __init__(self, home: Path):
        from ..homework import tool_env

        self.log_path = home / "grader.log"
        self.log = open(self.log_path, "a")
        env = tool_env()
        # its temporary folders (kernel folders, the sandbox's stub package) in a folder of
        # ours, removed when it stops even if it was killed (then its atexit never ran)
        self.tmp = Path(tempfile.mkdtemp(prefix="g-", dir=home))
        env["TMPDIR"] = str(self.tmp)
        threads = os.environ.get("DNNCOURSE_KERNEL_THREADS")
        if threads:  # the kernels' share of this machine's cores (set by the engine)
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dnncourse.grading.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=home,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(RESULT_PREFIX):
                self.lines.put(line[len(RESULT_PREFIX) :])
        self.lines.put(None)  # the process is gone

    def grade(self, task: Task, bundle_dir: Path) -> Result | None:
        """The result, or None if the process did not answer within the task's timeout or
        died.

        An answer counts only with the job's nonce and the task's student: nothing a kernel
        might write to the grading process's pipes can pass for a result.
        """
        nonce = secrets.token_hex(16)
        timeout = task.limits.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.proc.stdin.write(encode(Job(task, str(bundle_dir), nonce)) + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died since the last student (killed from outside)
            return None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            got, _, text = line.partition(" ")
            if got != nonce:
                continue
            try:
                result = decode(Result, text)
            except (ValueError, TypeError, KeyError):
                continue
            if result.student == task.student:
                return result

    def warm(self, bundle_dir: Path, limits: Limits, sandbox: bool = True) -> bool:
        """Have the grading process launch a kernel for the bundle's first notebook with
        these limits, ahead of the first task (it answers nothing); False if it is gone."""
        task = Task(student="", assignment="", files={}, bundle="", limits=limits, sandbox=sandbox)
        try:
            self.proc.stdin.write(encode(Job(task, str(bundle_dir), "", warm=True)) + "\n")
            self.proc.stdin.flush()
        except OSError:
            return False
        return True

    def stop(self):
        kill_tree(self.proc.pid)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


_STATE = {"grader": None, "bundles": {}, "home": None}
_LOCK = threading.Lock()


HOME_PREFIX = "dnncourse-worker-"


def _sweep_homes() -> None:
    """Remove the temporary folders of workers that were killed (their pid is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}*-*"):
        owner = folder.name[len(HOME_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)


def _home() -> Path:
    """This process's own temporary folder (removed when it exits; a killed worker's, by
    the next worker that starts on the machine)."""
    if _STATE["home"] is None:
        import atexit

        _sweep_homes()
        home = Path(tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-"))
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        _STATE["home"] = home
    return _STATE["home"]


def _safe_path(root: Path, name: str) -> Path:
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ValueError(f"unsafe path {name!r}")
    return root.joinpath(*parts)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = _safe_path(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def unpack(bundle: Bundle) -> Path:
    """The bundle's files in a folder of this worker, written once per bundle hash."""
    key = bundle.hash
    if key not in _STATE["bundles"]:
        folder = _home() / f"bundle-{key[:16]}"
        shutil.rmtree(folder, ignore_errors=True)
        _write_files(folder, bundle.files)
        _STATE["bundles"][key] = folder
    return _STATE["bundles"][key]


def stop_grader() -> None:
    """Stop this worker's grading process (before the worker closes: a fast shutdown)."""
    with _LOCK:
        if _STATE["grader"] is not None:
            _STATE["grader"].stop()
            _STATE["grader"] = None


def kill_grader() -> None:
    """Kill this worker's grading process now, even mid-task (that task ends as a grader
    error): for a client that shuts down and will grade again what was under way.

    Run it with ``client.run``: on the worker's event loop, not behind the task's lock.
    """
    grader = _STATE["grader"]
    if grader is not None:
        kill_tree(grader.proc.pid)


def _grader() -> GradingProcess:
    """This worker's grading process, a new one if there is none or it died (hold _LOCK)."""
    if _STATE["grader"] is not None and _STATE["grader"].proc.poll() is not None:
        _STATE["grader"].stop()  # it died between two students: start another
        _STATE["grader"] = None
    if _STATE["grader"] is None:
        _STATE["grader"] = GradingProcess(_home())
    return _STATE["grader"]


def warm_task(bundle: Bundle, limits: Limits, sandbox: bool = True) -> bool:
    """Have a kernel ready on this worker for the bundle's first notebook (an idle service).

    Run it on each worker with ``client.run`` (:meth:`.engine.Session.warm`). A worker that is
    grading is left alone (False): its grading process launches the next kernel itself.
    """
    if not _LOCK.acquire(blocking=False):
        return False
    try:
        return _grader().warm(unpack(bundle), limits, sandbox)
    finally:
        _LOCK.release()


def grade_task(task: Task, bundle: Bundle) -> Result:
    """The Dask task: grade one student on this worker (the client stores the result)."""
    with _LOCK:  # one student at a time per worker process (threads_per_worker is 1)
        start, cpu = time.perf_counter(), time.process_time()
        bundle_dir = unpack(bundle)
        grader = _grader()
        result = grader.grade(task, bundle_dir)
        if result is None:
            alive = grader.proc.poll() is None
            grader.stop()
            _STATE["grader"] = None
            if alive:
                detail = f"grading took longer than {task.limits.timeout:g} s: stopped"
                result = failed(task.student, task.assignment, detail, Status.TIMEOUT)
            else:
                detail = f"the grading process died (see {grader.log_path})"
                result = failed(task.student, task.assignment, detail)
            seconds = round(time.perf_counter() - start, 2)
            if not task.sandbox:  # the rows made here say so too
                detail = "; ".join([result.detail, NO_SANDBOX])
                result = dataclasses.replace(result, detail=detail)
            result = dataclasses.replace(result, seconds=seconds)
        return dataclasses.replace(
            result,
            checksum=task.checksum,
            bundle=bundle.hash,
            timings=_with_dispatch(result.timings, start, cpu),
        )


def _with_dispatch(laps: dict, start: float, cpu: float) -> dict:
    """The grading process's laps and this worker's own share (:mod:`.timings`): the wall
    time it took beyond them (the bundle, the pipe, the codec) and its CPU time."""
    wall = time.perf_counter() - start - sum(lap[0] for lap in laps.values())
    spent = (round(wall, 4), round(time.process_time() - cpu, 4), 0.0)
    return {**laps, "dispatch: worker": spent}


if __name__ == "__main__":
    serve()
