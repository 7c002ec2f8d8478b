"""The one door to grading, on ``dask.distributed``: a :class:`Session` grades tasks.

``dnncourse grade`` (:func:`grade_class`) and the service (:mod:`dnncourse.service.grader`)
both enter grading here; nothing above this module reaches into the worker. A
:class:`Session` connects to the cluster (or starts the embedded one) once, sends each
assignment's bundle once, submits a :class:`~.protocol.Task` per student, and
:func:`store` completes (:func:`complete`: a check for every test, a page for every
notebook) and stores its :class:`~.protocol.Result`; :meth:`Session.close` ends it.

The engine is Dask's (https://distributed.dask.org): by default an embedded ``LocalCluster``
that the command starts and stops (``jobs`` worker processes with one thread each: one
student at a time per process, no set-up); with ``scheduler`` (``--scheduler
tcp://HOST:8786`` or ``DNNCOURSE_SCHEDULER``) an existing cluster, for example ``dask
worker`` on lab machines, dask-jobqueue on SLURM or a Dask cluster on Kubernetes.

* The assignment's :class:`~.protocol.Bundle` goes to the cluster once, under a key named
  by its content hash; each worker gets it once and unpacks it once
  (:func:`.worker.unpack`).
* A task is one student (:class:`~.protocol.Task`: the notebook files as bytes, no path
  the worker could share with the client); it returns a :class:`~.protocol.Result`.
* Only this process writes: each result, as it arrives, goes into the gradebook
  (:func:`.course.save_result`), ``feedback/`` and ``results/<student>.json`` (with the
  checksum of what was graded), so a class stopped half-way keeps every result received,
  and ``resume`` regrades only students without a result or with other files (the others
  keep their result, with the gradebook's score as it is now: manual grades count).
* Faults: the hard timeout per student is the worker's (:func:`.worker.grade_task`); a
  worker that dies is replaced by its nanny and the student is retried once (the
  scheduler's ``allowed-failures``, set to 1 on the embedded cluster); a student whose
  notebook takes two workers down gets ``grader error``; a scheduler that cannot be reached
  is an :class:`EngineError` at once; a scheduler lost mid-class is one after the results
  received so far are stored.
"""

import csv
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
from tqdm.auto import tqdm

from .course import Course, make_bundle, register, save_result, scores_now
from .feedback import notice_page, write_page
from .processes import kill_tree
from .protocol import (
    COLUMNS,
    Bundle,
    Limits,
    Result,
    Status,
    Task,
    failed,
    result_from_json,
    result_to_json,
    zero_checks,
)
from .sanitize import MAX_NOTEBOOK_BYTES
from .worker import grade_task, kill_grader, stop_grader, warm_task

CONNECT_TIMEOUT = 15.0  # seconds to reach a scheduler before giving up
RETRIES = 1  # a student whose worker died is graded once more, on another worker


class EngineError(RuntimeError):
    """The cluster could not be reached or was lost (results so far are stored)."""


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The scheduler to use: ``scheduler``, else ``DNNCOURSE_SCHEDULER``, else None (local)."""
    return scheduler or os.environ.get("DNNCOURSE_SCHEDULER") or None


def check_scheduler(scheduler: str | None = None) -> None:
    """Raise :class:`EngineError` now if the scheduler to use cannot be reached."""
    address = scheduler_address(scheduler)
    if address:
        with connect(1, address):
            pass


@contextmanager
def connect(jobs: int, scheduler: str | None = None):
    """A Dask client: of ``scheduler`` if given, else of an embedded LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    address = scheduler_address(scheduler)
    if address:
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise EngineError(f"cannot reach the Dask scheduler at {address}: {error}") from None
        try:
            yield client
        finally:
            client.close()
        return
    # each kernel gets its share of the cores (no oversubscription by torch's threads)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # no statistical profiler in the workers: it samples their threads every 10 ms for a
    # dashboard that the embedded cluster does not serve (about 1% of a core per worker)
    settings = {
        "distributed.scheduler.allowed-failures": RETRIES,
        "distributed.worker.profile.enabled": False,
    }
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=jobs,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            env={"DNNCOURSE_KERNEL_THREADS": str(threads)},
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        try:
            yield client
        finally:
            try:
                client.run(stop_grader)
            except Exception:  # a worker gone already: its grader died with it
                pass


def read_files(folder: Path) -> dict[str, bytes]:
    """The notebooks a student handed in, as bytes (a file past the size cap stays over it)."""
    files = {}
    for path in sorted(folder.rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if ".ipynb_checkpoints" in rel.parts or path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as f:
            files[rel.as_posix()] = f.read(MAX_NOTEBOOK_BYTES + 1)
    return files


def stored_results(out: Path) -> dict[str, Result]:
    """The results stored in ``out/results/`` (unreadable ones are ignored: regraded)."""
    results = {}
    for path in sorted((out / "results").glob("*.json")):
        try:
            result = result_from_json(path.read_text())
        except (ValueError, TypeError, KeyError):
            continue
        results[result.student] = result
    return results


def complete(course: Course, bundle: Bundle, result: Result) -> Result:
    """``result`` with a check for every test (zero, saying why, for a notebook that was not
    graded) and a page for every notebook (a notice where the worker sent none: timeout...)."""
    status, cells = result.status, bundle.grade_cells
    why = f"not graded: {status}" + (f" ({result.detail})" if result.detail else "")
    checked = {c.notebook for c in result.checks}
    checks = []
    for name in course.notebooks:
        if name in checked or name in result.graded:  # graded (maybe no test: all by hand)
            checks += [c for c in result.checks if c.notebook == name]
        elif name in cells:
            checks += zero_checks(name, cells[name], why)
    feedback = {
        name: result.feedback.get(name)
        or notice_page(f"{course.assignment}: {name}", status, result.detail)
        for name in course.notebooks
    }
    return dataclasses.replace(result, checks=tuple(checks), feedback=feedback)


def store(course: Course, bundle: Bundle, result: Result) -> Result:
    """Complete and write one result: gradebook, feedback pages, ``results/<student>.json``."""
    start, cpu = time.perf_counter(), time.process_time()
    result = complete(course, bundle, result)
    score, max_score = save_result(course, result)  # nbgrader's (manual grades count)
    result = dataclasses.replace(result, score=score, max_score=max_score)
    out = Path(course.out)
    for name in course.notebooks:
        write_page(out / "feedback" / result.student / f"{name}.html", result.feedback[name])
    path = out / "results" / f"{result.student}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(result_to_json(result, pages=False))
    tmp.replace(path)  # atomic: a run stopped mid-write leaves the old result or none
    spent = (round(time.perf_counter() - start, 4), round(time.process_time() - cpu, 4), 0.0)
    return dataclasses.replace(result, timings={**result.timings, "store": spent})


def symlink_in(folder: Path) -> str | None:
    """Why ``folder`` cannot be graded as a student's own work: a symbolic link in it.

    A linked notebook or folder may point at another student's work or at the solution;
    it is refused here, on the client, before any bytes are read through it.
    """
    if folder.is_symlink():
        return f"{folder.name} is a symbolic link: not graded"
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            return f"{path.relative_to(folder)} is a symbolic link: not graded"
    return None


def refused(course: Course, bundle: Bundle, student: str, detail: str) -> Result:
    """An ``invalid notebook`` result made on the client: zero for every test, a notice."""
    result = failed(student, course.assignment, detail, Status.INVALID)
    return complete(course, bundle, dataclasses.replace(result, bundle=bundle.hash))


def _identity(bundle: Bundle) -> Bundle:
    return bundle


def reap(pid_file: Path) -> None:
    """Kill the Dask workers a killed client left behind (their pids are in ``pid_file``).

    They die with their client (their nanny's pipe closes; the grading process and the
    kernel die with them), so this is a second line: an orphan would go on grading a
    submission that is graded again. A pid counts only for a process older than the file
    (not one that reused the pid since).
    """
    if pid_file.is_file():
        written = pid_file.stat().st_mtime
        for line in pid_file.read_text().split():
            try:
                proc = psutil.Process(int(line))
                mine = proc.pid != os.getpid() and proc.create_time() <= written + 1
            except (ValueError, psutil.Error):
                continue
            if mine:
                kill_tree(proc.pid)
    pid_file.write_text("")


class Session:
    """One grading session: a cluster connected (or the embedded one started) on first use,
    each assignment's bundle sent once, tasks submitted and their results collected.

    Thread-safe: the service grades from several queue threads through one session. With
    ``pid_file`` the embedded cluster's worker pids are written there, and the workers a
    killed session left behind are reaped at start (:func:`reap`). A cluster lost mid-way
    is connected anew at the next task.
    """

    def __init__(self, jobs: int = 1, scheduler: str | None = None, pid_file: Path | None = None):
        self.jobs, self.scheduler, self.pid_file = jobs, scheduler, pid_file
        self._lock = threading.Lock()
        self._stack: ExitStack | None = None
        self._client = None
        self._shared: dict[str, tuple[object, str, object]] = {}  # assignment -> bundle future
        self._futures: set = set()
        self._closed = False
        if pid_file is not None:
            reap(pid_file)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def local(self) -> bool:
        """Whether the cluster is the embedded one (on this machine)."""
        return not scheduler_address(self.scheduler)

    def client(self):
        """The Dask client, connected (and the embedded cluster started) on first use."""
        with self._lock:
            if self._closed:
                raise EngineError("the grading session is closed")
            if self._client is None:
                stack = ExitStack()
                self._client = stack.enter_context(connect(self.jobs, self.scheduler))
                self._stack = stack
                self._shared.clear()
                if self.pid_file is not None and self.local:
                    pids = self._client.run(os.getpid).values()
                    self.pid_file.write_text("".join(f"{p}\n" for p in pids))
            return self._client

    def _bundle_future(self, client, bundle: Bundle):
        """The bundle on the cluster, sent once per assignment and hash.

        It is a task of its own, named by its hash: the scheduler holds it once (while a
        future of it is held), each worker fetches it once from a peer, and if every worker
        holding it dies it is made again (scattered data would be lost with them).
        """
        with self._lock:
            known = self._shared.get(bundle.assignment)
            if known and known[0] is client and known[1] == bundle.hash:
                return known[2]
            key = f"dnncourse-bundle-{bundle.hash}"
            future = client.submit(_identity, bundle, key=key, pure=False)
            self._shared[bundle.assignment] = (client, bundle.hash, future)
            return future

    def warm(self, bundle: Bundle, limits: Limits, sandbox: bool = True) -> int:
        """Have a kernel ready on each idle worker for the assignment's first notebook with
        these limits (:func:`.worker.warm_task`), so that the next task's first cell runs at
        once; how many workers launched one (a busy one launches the next kernel itself)."""
        answers = self.client().run(warm_task, bundle, limits, sandbox)
        return sum(bool(answer) for answer in answers.values())

    def submit(self, task: Task, bundle: Bundle):
        """Submit one student (graded against ``bundle``); a future of its Result."""
        client = self.client()
        shared = self._bundle_future(client, bundle)
        key = f"dnncourse-{task.student}-{time.time_ns():x}-{os.urandom(4).hex()}"
        future = client.submit(grade_task, task, shared, key=key, pure=False)
        with self._lock:
            self._futures.add(future)
        return future

    def result(self, future, task: Task, timeout: float | None = None) -> Result | None:
        """The result of a future of :meth:`submit`; None if the cluster is gone.

        A task that failed is that student's ``grader error`` (a notebook that took down two
        workers included), never an exception; raises TimeoutError after ``timeout`` seconds.
        """
        from distributed.scheduler import KilledWorker

        try:
            result = future.result(timeout=timeout)
        except KilledWorker:
            result = failed(
                task.student,
                task.assignment,
                "the notebook took down two grading workers (see the workers' logs)",
            )
        except CancelledError:
            result = None  # the scheduler is gone (or the session closed)
        except TimeoutError:
            raise
        except Exception as error:  # the task itself failed: that student only
            result = failed(task.student, task.assignment, f"grading failed: {error!r}")
        with self._lock:
            self._futures.discard(future)
        if result is None:
            return None
        if not isinstance(result, Result) or result.student != task.student:
            result = failed(task.student, task.assignment, "the worker answered nonsense")
        if not result.checksum:  # what was tried, so that --resume does not retry it
            result = dataclasses.replace(result, checksum=task.checksum, bundle=task.bundle)
        return result

    def grade(self, task: Task, bundle: Bundle) -> Result:
        """Grade one student (blocking). Raises :class:`EngineError` if the student was not
        graded: the cluster cannot be reached or was lost (the next task connects anew), or
        the session is closed."""
        future = self.submit(task, bundle)
        result = self.result(future, task)
        if result is None:
            self._lost(future.client)
            raise EngineError("the Dask cluster was lost or stopped")
        return result

    def run(self, tasks: list[Task], bundle: Bundle, on_result: Callable[[Result], None]) -> int:
        """Grade ``tasks``; ``on_result`` for each as it arrives; the number not graded."""
        from distributed import as_completed

        if not tasks:
            return 0
        client = self.client()
        futures = {self.submit(task, bundle): task for task in tasks}
        done = 0
        try:
            for future in as_completed(futures, loop=client.loop):
                result = self.result(future, futures[future])
                if result is None:
                    break  # the scheduler is gone
                on_result(result)
                done += 1
        finally:
            client.cancel(list(futures), force=True)
            with self._lock:
                self._futures.difference_update(futures)
        return len(tasks) - done

    def _lost(self, client) -> None:
        """The cluster was lost: connect anew at the next task."""
        with self._lock:
            if self._client is client and not self._closed:
                stack, self._client, self._stack = self._stack, None, None
                self._shared.clear()
            else:
                stack = None
        if stack is not None:
            try:
                stack.close()
            except Exception:
                pass

    def close(self, kill: bool = False) -> None:
        """End the session (the embedded cluster stops). ``kill``: the gradings under way
        end now, not at their timeout (each is a grader error, for a client that will
        grade them again)."""
        with self._lock:
            self._closed = True
            stack, client, self._client, self._stack = self._stack, self._client, None, None
            futures, self._futures = list(self._futures), set()
            self._shared.clear()
        if client is None:
            return
        if kill:
            try:
                client.cancel(futures, force=True)
                client.run(kill_grader)  # on the workers' event loops, not behind a task
            except Exception:
                pass
        try:
            stack.close()
        except Exception:
            pass


def _tasks(course, submissions, limits, sandbox, bundle) -> list[Task]:
    return [
        Task(
            student=student,
            assignment=course.assignment,
            files=read_files(folder),
            bundle=bundle.hash,
            limits=limits,
            sandbox=sandbox,
        )
        for student, folder in sorted(submissions.items())
    ]


def grade_class(
    course: Course,
    submissions: dict[str, Path],
    jobs: int | None = None,
    limits: Limits | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    sandbox: bool = True,
    progress: bool = True,
) -> list[Result]:
    """Grade every student of ``submissions`` (student id -> folder); one result each.

    ``limits``: per student (:class:`~.protocol.Limits`, the timeout of a whole student
    included)."""
    limits = limits or Limits()
    out = Path(course.out)
    bundle = make_bundle(course, limits, sandbox)  # the reference run, once, before the class
    register(course, sorted(submissions))
    linked = {s: why for s, folder in submissions.items() if (why := symlink_in(folder))}
    ordinary = {s: f for s, f in submissions.items() if s not in linked}
    tasks = _tasks(course, ordinary, limits, sandbox, bundle)
    previous = stored_results(out) if resume else {}
    results = {
        s: store(course, bundle, refused(course, bundle, s, why)) for s, why in linked.items()
    }
    same = [
        t.student
        for t in tasks
        if (kept := previous.get(t.student))
        and kept.checksum == t.checksum
        and kept.bundle == bundle.hash
    ]
    for student, (score, top) in (scores_now(course, same) if same else {}).items():
        # kept, with the gradebook's score now: manual grades entered since count (a student
        # the gradebook lost is graded again)
        results[student] = dataclasses.replace(previous[student], score=score, max_score=top)
    todo = [t for t in tasks if t.student not in results]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    bar = tqdm(
        total=len(submissions),
        initial=len(results),
        desc=f"grading {course.assignment}",
        disable=not progress,
        unit="student",
    )

    def on_result(result: Result) -> None:
        results[result.student] = store(course, bundle, result)
        bar.update(1)
        bar.set_postfix_str(f"{result.student}: {result.status}", refresh=False)

    try:
        if todo:
            with Session(jobs, scheduler) as session:
                missing = session.run(todo, bundle, on_result)
            if missing:
                raise EngineError(
                    f"lost the Dask cluster with {missing} of {len(tasks)} students not "
                    f"graded; the {len(results)} results received are stored: run again "
                    "with --resume"
                )
    finally:
        bar.close()
        rows = [results[s] for s in sorted(submissions) if s in results]
        write_csv(rows, out / "grades.csv")
    return rows


def write_csv(results: list[Result], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(r.row() for r in results)


def summary(results: list[Result], sandbox: bool | None = None) -> str:
    """A table of the students by status, the mean score, and (if given) the sandbox line."""
    lines = [f"{'status':<18}{'students':>9}{'mean score':>12}"]
    for status in sorted({r.status for r in results}, key=list(Status).index):
        group = [r for r in results if r.status == status]
        mean = sum(r.score for r in group) / len(group)
        lines.append(f"{status:<18}{len(group):>9}{mean:>12.2f}")
    if results:
        total = sum(r.score for r in results) / len(results)
        top = max(r.max_score for r in results)
        lines.append(f"{'all':<18}{len(results):>9}{total:>12.2f}  (of {top:g})")
    kinds = {(c.notebook, c.grade_id): c.kind for r in results for c in r.checks}
    asserted = sorted(f"{nb}/{gid}" for (nb, gid), kind in kinds.items() if kind == "assert")
    if asserted:
        lines.append(
            f"graded cells: {len(kinds) - len(asserted)} decided by probes (outside the "
            f"student's process), {len(asserted)} by their asserts inside it (forgeable, as "
            f"in plain nbgrader): {', '.join(asserted)}"
        )
    held = [r for r in results if r.review]
    if held:
        cells = sum(1 for r in held for c in r.checks if c.review)
        lines.append(
            f"held for review: {cells} cells of {len(held)} students (0 points until you "
            "decide; column review of grades.csv)"
        )
        lines += [f"  {r.student}: {r.review}"[:300] for r in held[:20]]
        if len(held) > 20:
            lines.append(f"  ... and {len(held) - 20} more in grades.csv")
    if sandbox is not None:
        from .sandbox import summary_line

        lines.append(summary_line(sandbox))
    return "\n".join(lines)
