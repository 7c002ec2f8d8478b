"""The one adapter between the service and the grading engine: files in, a Result out.

:meth:`Grader.grade` takes ``(assignment, student, files)`` (notebook name -> bytes) and
returns a :class:`dnncourse.grading.protocol.Result`: the status, the score, one
:class:`~dnncourse.grading.protocol.Check` per graded test cell, the feedback page and the
graded notebook. Nothing else in :mod:`dnncourse.service` imports the grader, so the Dask
engine (``grading/engine.py``, ``--scheduler``) replaces only the body of :meth:`grade`.

Today it runs on the class grader (:mod:`dnncourse.grading.pool`): each assignment is
prepared once (``nbgrader generate_assignment`` into ``DATA/grading/<assignment>/``, the
gradebook at ``--gradebook``), and up to ``jobs`` warm worker processes grade one student
each, with the class grader's per-student hard timeout. Grades land in nbgrader's gradebook
as with ``dnncourse grade`` (the gradebook holds each student's latest graded submission),
so formgrader and ``nbgrader export`` keep working. Preparing an assignment costs seconds
(skipped at a restart if ``solutions/<assignment>`` and the gradebook URL did not change);
a regrade after a test fix prepares it again (``version``) once no grading of it runs.

The check messages are the test's own ``ename: evalue`` (what the feedback page shows);
a message quoting a hidden-test or solution line is withheld.
"""

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path, PurePosixPath

import nbformat
import psutil
from nbgrader import utils as nbutils

from ..grading.course import Course, gradebook, prepare, register
from ..grading.course import max_score as assignment_max
from ..grading.pool import Worker, kill_tree
from ..grading.protocol import Check, Result, Status, checksum
from ..grading.worker import _zero
from ..homework import hidden_lines
from .config import ServiceConfig

MESSAGE_CHARS = 500


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


class Grader:
    """Grades submissions on prepared courses with warm workers; thread-safe."""

    def __init__(self, config: ServiceConfig):
        if config.scheduler:
            raise NotImplementedError(
                "--scheduler needs the Dask grading engine (dnncourse.grading.engine); "
                "this build grades on local worker processes (--jobs)"
            )
        self.config = config
        self.base = config.data / "grading"
        self.base.mkdir(parents=True, exist_ok=True)
        self._cond = threading.Condition()
        self._courses: dict[str, tuple[int, Course]] = {}
        self._preparing: set[str] = set()
        self._busy: dict[str, int] = defaultdict(int)
        self._idle: dict[str, list[Worker]] = defaultdict(list)
        self._secret: dict[str, set[str]] = {}
        self._live: set[Worker] = set()
        self._closed = False
        self._reap()

    def _reap(self) -> None:
        """Kill the workers a killed service left behind (their pids are in a file).

        An orphan would go on grading a submission that the queue grades again.
        """
        pids = self.base / "worker.pids"
        if pids.is_file():
            for line in pids.read_text().split():
                try:
                    proc = psutil.Process(int(line))
                    mine = "dnncourse.grading.worker" in " ".join(proc.cmdline())
                    mine = mine and str(self.base) in " ".join(proc.cmdline())
                except (ValueError, psutil.Error):
                    continue
                if mine:
                    kill_tree(proc.pid)
        pids.write_text("")

    # -- courses -----------------------------------------------------------------------------
    def notebooks(self, assignment: str) -> list[str]:
        """The notebook names (no ``.ipynb``) of ``assignment``, as released."""
        source = self.config.root / "solutions" / assignment
        return sorted(p.stem for p in source.glob("*.ipynb"))

    def _prepare(self, assignment: str) -> Course:
        out = self.base / assignment
        out.mkdir(parents=True, exist_ok=True)
        lock = out / ".gradebook.lock"  # one gradebook, one lock, for all assignments
        if not lock.is_symlink():
            lock.unlink(missing_ok=True)
            (self.base / ".gradebook.lock").touch()
            lock.symlink_to(self.base / ".gradebook.lock")
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
        secret = set()
        for notebook in (self.config.root / "solutions" / assignment).glob("*.ipynb"):
            secret |= hidden_lines(notebook, min_length=12)
        self._secret[assignment] = secret
        return course

    def _source_hash(self, assignment: str) -> str:
        """What a prepared course depends on: the instructor's files and the gradebook URL."""
        h = hashlib.sha256(self.config.gradebook.encode())
        files = [self.config.root / "nbgrader_config.py"]
        files += sorted((self.config.root / "solutions" / assignment).rglob("*"))
        for path in files:
            if path.is_file():
                h.update(str(path.relative_to(self.config.root)).encode() + b"\0")
                h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()

    def course(self, assignment: str, version: int = 1) -> Course:
        """The prepared course of ``assignment`` at ``version``, reserved for one grading.

        Call :meth:`release` when done. A new version waits until no grading of the
        assignment runs, then prepares it again (the workers of the old version stop).
        """
        with self._cond:
            while True:
                known = self._courses.get(assignment)
                if known and known[0] >= version and assignment not in self._preparing:
                    self._busy[assignment] += 1
                    return known[1]
                if assignment not in self._preparing and self._busy[assignment] == 0:
                    break
                self._cond.wait()
            self._preparing.add(assignment)
            stale = self._idle.pop(assignment, [])
        try:
            for worker in stale:
                self._retire(worker)
            course = self._prepare(assignment)
        finally:
            with self._cond:
                self._preparing.discard(assignment)
                self._cond.notify_all()
        with self._cond:
            self._courses[assignment] = (version, course)
            self._busy[assignment] += 1
            return course

    def warm(self, assignment: str, version: int = 1) -> None:
        """Prepare ``assignment`` now (at start), so that the first hand-in does not wait."""
        self.course(assignment, version)
        self.release(assignment)

    def release(self, assignment: str) -> None:
        with self._cond:
            self._busy[assignment] -= 1
            self._cond.notify_all()

    # -- workers -----------------------------------------------------------------------------
    def _worker(self, course: Course) -> Worker:
        with self._cond:
            idle = self._idle[course.assignment]
            if idle:
                return idle.pop()
            total = sum(len(v) for v in self._idle.values())
            spare = next((v for v in self._idle.values() if v), None)
            victim = spare.pop() if spare and total >= self.config.jobs else None
        if victim is not None:
            self._retire(victim)
        logs = Path(course.out) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // max(1, self.config.jobs))
        worker = Worker(course, logs / f"worker-{threading.get_ident()}.log", threads)
        with self._cond, open(self.base / "worker.pids", "a") as pids:
            pids.write(f"{worker.proc.pid}\n")
            self._live.add(worker)
        return worker

    def _done(self, course: Course, worker: Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle[course.assignment].append(worker)
                return
        self._retire(worker)

    def _retire(self, worker: Worker, kill: bool = False) -> None:
        with self._cond:
            self._live.discard(worker)
        worker.stop(kill=kill)

    def close(self) -> None:
        """Stop the idle workers and kill the busy ones (their gradings are redone)."""
        with self._cond:
            self._closed = True
            idle = [w for v in self._idle.values() for w in v]
            busy = self._live.difference(idle)
            self._idle.clear()
        for worker in idle:
            self._retire(worker)
        for worker in busy:
            self._retire(worker, kill=True)

    # -- grading -----------------------------------------------------------------------------
    def grade(
        self, assignment: str, student: str, files: dict[str, bytes], version: int = 1
    ) -> Result:
        """Grade one submission (blocking); never raises for a bad notebook."""
        for name in files:
            if not safe_name(name):
                raise ValueError(f"not a plain file name: {name!r}")
        course = self.course(assignment, version)
        try:
            return self._grade(course, student, files)
        finally:
            self.release(assignment)

    def _grade(self, course: Course, student: str, files: dict[str, bytes]) -> Result:
        start = time.perf_counter()
        shutil.rmtree(Path(course.out) / "feedback" / student, ignore_errors=True)
        shutil.rmtree(
            Path(course.root) / "autograded" / student / course.assignment, ignore_errors=True
        )
        register(course, [student])
        tmp = self.config.data / "tmp"
        tmp.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tmp) as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            task = {"student": student, "folder": folder, "limits": asdict(self.config.limits)}
            worker = self._worker(course)
            row = worker.grade(task, self.config.timeout)
            if row is None:
                alive = worker.proc.poll() is None
                self._retire(worker, kill=True)
                detail = (
                    f"grading took longer than {self.config.timeout:g} s: stopped"
                    if alive
                    else "the grading worker died"
                )
                row = {"status": Status.TIMEOUT if alive else Status.GRADER_ERROR}
                row["detail"] = detail
                for name in course.notebooks:  # the gradebook must not keep older grades
                    try:
                        _zero(course, student, name)
                    except Exception:
                        pass
            else:
                self._done(course, worker)
        try:
            status = Status(row.get("status"))
        except ValueError:
            status = Status.GRADER_ERROR
        checks = self._checks(course, student, status, row.get("detail", ""))
        max_score = float(row.get("max_score") or assignment_max(course))
        feedback, graded = {}, {}
        for name in course.notebooks:
            page = Path(course.out) / "feedback" / student / f"{name}.html"
            if page.is_file():
                feedback[name] = page.read_text(errors="replace")
            notebook = Path(course.root) / "autograded" / student / course.assignment
            if (notebook / f"{name}.ipynb").is_file():
                graded[name] = (notebook / f"{name}.ipynb").read_bytes()
        return Result(
            student=student,
            assignment=course.assignment,
            status=status,
            score=float(row.get("score") or 0.0),
            max_score=max_score,
            detail=str(row.get("detail", "")),
            seconds=round(time.perf_counter() - start, 2),
            checksum=checksum(files),
            checks=tuple(checks),
            feedback=feedback,
            graded=graded,
        )

    def _message(self, assignment: str, text: str) -> str:
        if any(line in text for line in self._secret.get(assignment, ())):
            return "(the message quoted the hidden test and is not shown)"
        return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"

    def _checks(self, course: Course, student: str, status: Status, detail: str) -> list[Check]:
        """One check per graded cell, in the notebook's order, from the gradebook."""
        checks = []
        with gradebook(course) as gb:
            submission = gb.find_submission(course.assignment, student)
            scores = {
                (nb.name, g.name): (float(g.score or 0), float(g.max_score or 0))
                for nb in submission.notebooks
                for g in nb.grades
            }
        for name in course.notebooks:
            release = course.release_notebook(name)
            path = Path(course.root) / "autograded" / student / course.assignment
            errors = _errors(path / f"{name}.ipynb")
            for cell in release.cells:
                if not (nbutils.is_grade(cell) and cell.cell_type == "code"):
                    continue
                gid = cell.metadata.nbgrader["grade_id"]
                points, most = scores.get(
                    (name, gid), (0.0, float(cell.metadata.nbgrader.get("points", 0)))
                )
                passed = most > 0 and points >= most
                if passed:
                    message = ""
                elif gid in errors:
                    message = self._message(course.assignment, errors[gid])
                elif not errors and status != Status.OK:
                    message = f"not graded: {status}" + (f" ({detail})" if detail else "")
                    message = self._message(course.assignment, message)
                else:
                    message = "failed"
                checks.append(Check(name, gid, points, most, passed, message))
        return checks


def _errors(path: Path) -> dict[str, str]:
    """grade_id -> ``ename: evalue`` of each test cell that raised, in a graded notebook."""
    if not path.is_file():
        return {}
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError, json.JSONDecodeError):
        return {}
    errors = {}
    for cell in nb.cells:
        if cell.cell_type != "code" or not nbutils.is_grade(cell):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors[cell.metadata.nbgrader["grade_id"]] = (
                    f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
                )
    return errors
