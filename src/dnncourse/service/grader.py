"""The one adapter between the service and the grading engine: files in, a Result out.

:meth:`Grader.grade` takes ``(assignment, student, files)`` (notebook name -> bytes) and
returns a :class:`dnncourse.grading.protocol.Result`: the status, the score, one
:class:`~dnncourse.grading.protocol.Check` per graded test cell (its message says why it
failed), the feedback page and the graded notebook. Nothing else in
:mod:`dnncourse.service` imports the grader.

It grades on the Dask engine (:mod:`dnncourse.grading.engine`): an embedded ``LocalCluster``
of ``jobs`` worker processes, started with the first grading and stopped with the service,
or the cluster of ``--scheduler tcp://...`` (checked at start: an unreachable scheduler is
a clear error). Each assignment is prepared once (``nbgrader generate_assignment`` into
``DATA/grading/<assignment>/``, the gradebook at ``--gradebook``) and packed into its
:class:`~dnncourse.grading.protocol.Bundle`, which goes to the cluster once; each
submission is one :class:`~dnncourse.grading.protocol.Task` carrying the notebook bytes,
with the worker's hard timeout per submission. Only this process writes: each result goes
into nbgrader's gradebook (:func:`dnncourse.grading.engine.store`; the gradebook holds each
student's latest graded submission), so formgrader and ``nbgrader export`` keep working.
Preparing an assignment costs seconds (skipped at a restart if ``solutions/<assignment>``
and the gradebook URL did not change); a regrade after a test fix prepares it again
(``version``) once no grading of it runs.

The check messages are the trusted verdict's (:mod:`dnncourse.grading.verdict`, written
outside the student's process); as a second line, one quoting a line of the hidden tests or
the solution is withheld, and a long one is cut.
"""

import dataclasses
import hashlib
import json
import os
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import psutil

from ..grading.course import Course, make_bundle, prepare
from ..grading.engine import (
    EngineError,
    check_scheduler,
    connect,
    result_of,
    scheduler_address,
    share_bundle,
    store,
    submit_task,
)
from ..grading.feedback import notice_page
from ..grading.protocol import Bundle, Result, Task
from ..grading.worker import failed, kill_grader, kill_tree, zero_checks
from ..homework import hidden_lines, layout
from .config import ServiceConfig

MESSAGE_CHARS = 500
WITHHELD = "(the message quoted the hidden test and is not shown)"


def safe_name(name: str) -> bool:
    """A plain file name: no folder, no ``..``, no hidden file."""
    parts = PurePosixPath(name).parts
    return (
        len(parts) == 1
        and parts[0] not in (".", "..")
        and not name.startswith(".")
        and "\\" not in name
        and "\0" not in name
    )


@dataclass
class Prepared:
    """An assignment ready to grade: its course, its bundle, the lines never to show."""

    course: Course
    bundle: Bundle
    cells: dict  # notebook -> the instructor's cells (the bundle's gradebook.json)
    secret: set[str]


class Grader:
    """Grades submissions on the Dask engine; thread-safe (one grading per queue thread)."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.base = config.data / "grading"
        self.base.mkdir(parents=True, exist_ok=True)
        if scheduler_address(config.scheduler):
            try:
                check_scheduler(config.scheduler)
            except EngineError as error:
                raise EngineError(f"cannot start the Dask grading engine: {error}") from None
        self._cond = threading.Condition()
        self._prepared: dict[str, tuple[int, Prepared]] = {}
        self._preparing: set[str] = set()
        self._busy: dict[str, int] = defaultdict(int)
        self._connect = threading.Lock()
        self._stack: ExitStack | None = None
        self._client = None
        self._shared: dict[str, tuple[object, str, object]] = {}  # assignment -> bundle future
        self._futures: set = set()
        self._closed = False
        self._reap()

    # -- the cluster ---------------------------------------------------------------------------
    def _reap(self) -> None:
        """Kill the Dask workers a killed service left behind (their pids are in a file).

        They die with the service (their nanny's pipe closes; the grading process and the
        kernel die with them), so this is a second line: an orphan would go on grading a
        submission that the queue grades again. A pid counts only for a process older than
        the file (not one that reused the pid since).
        """
        pids = self.base / "worker.pids"
        if pids.is_file():
            written = pids.stat().st_mtime
            for line in pids.read_text().split():
                try:
                    proc = psutil.Process(int(line))
                    mine = proc.pid != os.getpid() and proc.create_time() <= written + 1
                except (ValueError, psutil.Error):
                    continue
                if mine:
                    kill_tree(proc.pid)
        pids.write_text("")

    def client(self):
        """The Dask client, connected (and the embedded cluster started) on first use."""
        with self._connect:
            if self._closed:
                raise EngineError("the service is stopping")
            if self._client is None:
                stack = ExitStack()
                engine = connect(self.config.jobs, self.config.scheduler)
                self._client = stack.enter_context(engine)
                self._stack = stack
                self._shared.clear()
                if not scheduler_address(self.config.scheduler):  # ours, on this machine
                    pids = self._client.run(os.getpid).values()
                    (self.base / "worker.pids").write_text("".join(f"{p}\n" for p in pids))
            return self._client

    def _lost(self, client) -> None:
        """The cluster was lost: connect anew at the next grading."""
        with self._connect:
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

    def close(self) -> None:
        """Stop grading: the gradings under way are killed (and redone at the next start)."""
        with self._connect:
            self._closed = True
            stack, client, self._client, self._stack = self._stack, self._client, None, None
            futures, self._futures = list(self._futures), set()
            self._shared.clear()
        if client is None:
            return
        try:
            client.cancel(futures, force=True)
            client.run(kill_grader)  # a grading under way ends now, not at its timeout
        except Exception:
            pass
        try:
            stack.close()
        except Exception:
            pass

    # -- assignments ---------------------------------------------------------------------------
    def source(self, assignment: str) -> Path:
        """The instructor's folder of ``assignment`` (the course's layout: nbgrader_config.py)."""
        return self.config.root / layout(self.config.root).source / assignment

    def notebooks(self, assignment: str) -> list[str]:
        """The notebook names (no ``.ipynb``) of ``assignment``, as released."""
        source = self.source(assignment)
        return sorted(p.stem for p in source.glob("*.ipynb"))

    def _prepare(self, assignment: str) -> Prepared:
        out = self.base / assignment
        out.mkdir(parents=True, exist_ok=True)
        stamp = out / ".prepared"
        source = self._source_hash(assignment)
        known = out / "course.json"
        if stamp.is_file() and stamp.read_text() == source and known.is_file():
            course = Course(**json.loads(known.read_text()))  # unchanged since the last start
        else:
            stamp.unlink(missing_ok=True)
            course = prepare(self.config.root, assignment, out, self.config.gradebook)
            known.write_text(course.to_json())
            stamp.write_text(source)
        bundle = make_bundle(course, self.config.limits)  # the reference run: cached
        secret = set()
        for notebook in (self.source(assignment)).glob("*.ipynb"):
            secret |= hidden_lines(notebook, min_length=12)
        cells = json.loads(bundle.files["gradebook.json"])
        return Prepared(course, bundle, cells, secret)

    def _source_hash(self, assignment: str) -> str:
        """What a prepared course depends on: the instructor's files and the gradebook URL."""
        h = hashlib.sha256(self.config.gradebook.encode())
        files = [self.config.root / "nbgrader_config.py"]
        files += sorted((self.source(assignment)).rglob("*"))
        for path in files:
            if path.is_file():
                h.update(str(path.relative_to(self.config.root)).encode() + b"\0")
                h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()

    def prepared(self, assignment: str, version: int = 1) -> Prepared:
        """``assignment`` prepared at ``version``, reserved for one grading.

        Call :meth:`release` when done. A new version waits until no grading of the
        assignment runs, then prepares it again (a new bundle, sent to the cluster anew).
        """
        with self._cond:
            while True:
                known = self._prepared.get(assignment)
                if known and known[0] >= version and assignment not in self._preparing:
                    self._busy[assignment] += 1
                    return known[1]
                if assignment not in self._preparing and self._busy[assignment] == 0:
                    break
                self._cond.wait()
            self._preparing.add(assignment)
        try:
            prepared = self._prepare(assignment)
        finally:
            with self._cond:
                self._preparing.discard(assignment)
                self._cond.notify_all()
        with self._cond:
            self._prepared[assignment] = (version, prepared)
            self._busy[assignment] += 1
            return prepared

    def warm(self, assignment: str, version: int = 1) -> None:
        """Prepare ``assignment`` and start the engine now, so the first hand-in does not wait."""
        self.prepared(assignment, version)
        self.release(assignment)
        self.client()

    def release(self, assignment: str) -> None:
        with self._cond:
            self._busy[assignment] -= 1
            self._cond.notify_all()

    def _bundle_future(self, client, prepared: Prepared):
        """The future of the assignment's bundle on ``client`` (sent once per bundle)."""
        name, digest = prepared.course.assignment, prepared.bundle.hash
        with self._connect:
            known = self._shared.get(name)
            if known and known[0] is client and known[1] == digest:
                return known[2]
            future = share_bundle(client, prepared.bundle)
            self._shared[name] = (client, digest, future)
            return future

    # -- grading -------------------------------------------------------------------------------
    def grade(
        self, assignment: str, student: str, files: dict[str, bytes], version: int = 1
    ) -> Result:
        """Grade one submission (blocking) and store it in the gradebook; never raises for a
        bad notebook. A grader error (the cluster lost, the service stopping) is not stored:
        the queue grades the submission again."""
        for name in files:
            if not safe_name(name):
                raise ValueError(f"not a plain file name: {name!r}")
        start = time.perf_counter()
        prepared = self.prepared(assignment, version)
        try:
            task = Task(
                student=student,
                assignment=assignment,
                files=files,
                bundle=prepared.bundle.hash,
                limits=self.config.limits,
                timeout=self.config.timeout,
            )
            try:
                client = self.client()
            except EngineError as error:  # stopping: the queue grades it at the next start
                return failed(student, assignment, str(error))
            future = submit_task(client, task, self._bundle_future(client, prepared))
            with self._connect:
                self._futures.add(future)
            try:
                result = result_of(future, task)
            finally:
                with self._connect:
                    self._futures.discard(future)
            if result is None:
                self._lost(client)
                return failed(student, assignment, "the Dask cluster was lost or stopped")
            result = self._complete(prepared, result)
            result = store(prepared.course, result)
            seconds = round(time.perf_counter() - start, 2)
            return dataclasses.replace(result, seconds=seconds)
        finally:
            self.release(assignment)

    def _complete(self, prepared: Prepared, result: Result) -> Result:
        """Every test with a check and every notebook with a page; messages checked."""
        course, status = prepared.course, result.status
        why = f"not graded: {status}" + (f" ({result.detail})" if result.detail else "")
        checked = {c.notebook for c in result.checks}
        checks = []
        for name in course.notebooks:
            if name in checked:
                checks += [c for c in result.checks if c.notebook == name]
            elif name in prepared.cells:
                checks += [
                    dataclasses.replace(c, message=why)
                    for c in zero_checks(name, prepared.cells[name])
                ]
        checks = [
            dataclasses.replace(c, message=self._message(prepared, c.message)) for c in checks
        ]
        feedback = {
            name: result.feedback.get(name)
            or notice_page(f"{course.assignment}: {name}", status, result.detail)
            for name in course.notebooks
        }
        return dataclasses.replace(result, checks=tuple(checks), feedback=feedback)

    def _message(self, prepared: Prepared, text: str) -> str:
        if any(line in text for line in prepared.secret):
            return WITHHELD
        return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
