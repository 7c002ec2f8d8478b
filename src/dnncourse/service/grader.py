"""The service's side of grading: files in, a stored Result out, through the engine.

:meth:`Grader.grade` takes ``(assignment, student, files)`` (notebook name -> bytes) and
returns a :class:`dnncourse.grading.protocol.Result`: the status, the score, one
:class:`~dnncourse.grading.protocol.Check` per graded test cell (its message says why it
failed), the feedback page and the graded notebook. It is the service's one door to
grading (the queue, :mod:`.jobs`, calls it; the other service modules import only the
types of :mod:`dnncourse.grading.protocol`).

It grades through one :class:`dnncourse.grading.engine.Session`, as ``dnncourse grade``
does: an embedded ``LocalCluster`` of ``jobs`` worker processes, started with the first
grading and stopped with the service, or the cluster of ``--scheduler tcp://...`` (checked
at start: an unreachable scheduler is a clear error). What is the service's own: each
assignment is prepared once (``nbgrader generate_assignment`` into
``DATA/grading/<assignment>/``, the gradebook at ``--gradebook``) and packed into its
:class:`~dnncourse.grading.protocol.Bundle`; a new version of an assignment waits for its
gradings under way; the check messages are screened. Only this process writes: each result
goes into nbgrader's gradebook (:func:`dnncourse.grading.engine.store`; the gradebook holds
each student's latest graded submission), so formgrader and ``nbgrader export`` keep
working.
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
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..grading.course import Course, make_bundle, prepare, refuse_grading_settings
from ..grading.engine import EngineError, Session, check_scheduler, complete, store
from ..grading.protocol import Bundle, Result, Task, failed
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
    secret: set[str]


@dataclass
class Graded:
    """A submission graded by :meth:`Grader.run`, not yet stored (``prepared`` None: not
    graded, nothing to store)."""

    result: Result
    start: float
    prepared: Prepared | None = None


class Grader:
    """Grades submissions on the Dask engine; thread-safe (one grading per queue thread)."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.base = config.data / "grading"
        self.base.mkdir(parents=True, exist_ok=True)
        refuse_grading_settings(config.root / "nbgrader_config.py")  # at start, not per hand-in
        try:
            check_scheduler(config.scheduler)
        except EngineError as error:
            raise EngineError(f"cannot start the Dask grading engine: {error}") from None
        self._cond = threading.Condition()
        self._prepared: dict[str, tuple[int, Prepared]] = {}
        self._preparing: set[str] = set()
        self._busy: dict[str, int] = defaultdict(int)
        self.session = Session(config.jobs, config.scheduler, pid_file=self.base / "worker.pids")

    def close(self) -> None:
        """Stop grading: the gradings under way are killed (and redone at the next start)."""
        self.session.close(kill=True)

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
        return Prepared(course, bundle, secret)

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
        self.session.client()

    def release(self, assignment: str) -> None:
        with self._cond:
            self._busy[assignment] -= 1
            self._cond.notify_all()

    # -- grading -------------------------------------------------------------------------------
    def grade(
        self, assignment: str, student: str, files: dict[str, bytes], version: int = 1
    ) -> Result:
        """Grade one submission (blocking) and store it in the gradebook: :meth:`run` then
        :meth:`store`."""
        return self.store(self.run(assignment, student, files, version))

    def run(
        self, assignment: str, student: str, files: dict[str, bytes], version: int = 1
    ) -> "Graded":
        """Grade one submission on the engine (blocking), not yet stored: hand it to
        :meth:`store` (the queue does that in a thread of its own, so that the next
        submission goes to the freed worker at once). Never raises for a bad notebook; a
        grader error (the cluster lost, the service stopping) is not stored: the queue grades
        the submission again."""
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
            )
            try:
                result = self.session.grade(task, prepared.bundle)
            except EngineError as error:  # lost or stopping: the queue grades it again
                self.release(assignment)
                return Graded(failed(student, assignment, str(error)), start)
        except BaseException:
            self.release(assignment)
            raise
        return Graded(result, start, prepared)

    def store(self, graded: "Graded") -> Result:
        """Complete, screen and store a result of :meth:`run` (the gradebook, the pages);
        the prepared assignment it held is released."""
        if graded.prepared is None:  # not graded: nothing to store
            return graded.result
        prepared, result = graded.prepared, graded.result
        try:
            result = complete(prepared.course, prepared.bundle, result)
            checks = [
                dataclasses.replace(c, message=self._message(prepared, c.message))
                for c in result.checks
            ]
            result = store(
                prepared.course, prepared.bundle, dataclasses.replace(result, checks=tuple(checks))
            )
            seconds = round(time.perf_counter() - graded.start, 2)
            return dataclasses.replace(result, seconds=seconds)
        finally:
            self.release(prepared.course.assignment)

    def discard(self, graded: "Graded") -> None:
        """Drop a result of :meth:`run` unstored (the service stops: graded again later)."""
        if graded.prepared is not None:
            self.release(graded.prepared.course.assignment)

    def _message(self, prepared: Prepared, text: str) -> str:
        if any(line in text for line in prepared.secret):
            return WITHHELD
        return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
