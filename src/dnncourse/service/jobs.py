"""The grading queue: a submission is stored before it is queued, and finished exactly once.

:meth:`Jobs.submit` writes the files under ``DATA/submissions/<key>/`` (fsync'd, with their
SHA-256), then commits the row in state ``queued``: only then does the student hear
"received". ``jobs`` threads each claim a queued submission (a conditional UPDATE, so two
threads never take the same one) in a fair order: round-robin by student (each student's
oldest waiting submission first, then each one's second, ...), a student holding at most a
fair share of the graders (``jobs`` / students with work, at least one) across all
assignments, and never two of their submissions of one assignment at once (they share a row
of the gradebook). The threads check the stored bytes against
the checksum and grade through :class:`~dnncourse.service.grader.Grader`; the result is
stored (gradebook, pages) by a storing thread, so the grading thread feeds its freed worker
the next submission at once, as ``dnncourse grade`` does, and the row is finished in one
UPDATE that only a ``grading`` row accepts. Nothing waits for a poll: a hand-in, a regrade
and a finished grading wake the grading threads, and every change of a submission wakes the
pages waiting for it (:class:`Changes`, the long poll of its JSON). On start, rows left
``grading`` by a crash are queued again: an interrupted grading is redone, a finished one
never. A grading that ends in ``grader error`` (the worker died, a bug of ours) is queued
once more before that status is final.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import statistics
import threading
import traceback
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from ..grading.protocol import Result, Status, checksum, failed
from .config import ServiceConfig, private_files
from .grader import Graded, Grader
from .models import GRADED, GRADING, QUEUED, Assignment, Submission, User, utcnow

log = logging.getLogger("dnncourse.service")
MAX_ATTEMPTS = 2  # a grading that ends in "grader error" (a worker died) is tried once more


def fair_order(queued: list, busy: Counter) -> list:
    """``queued`` rows (``id``, ``user_id``, ``queued_at``; oldest first) taken round-robin by
    student: first each student's oldest waiting submission, in the order they came, then each
    one's second, and so on; a submission of a student with ``busy[user]`` gradings under way
    goes as many rounds later."""
    seen = Counter(busy)
    keyed = []
    for row in queued:
        keyed.append((seen[row.user_id], row.queued_at, row.id, row))
        seen[row.user_id] += 1
    return [row for *_, row in sorted(keyed, key=lambda k: k[:3])]


class Changes:
    """The pages waiting for a submission to change (long polls of its JSON), woken from the
    queue's threads as soon as it does: each waiter's asyncio event is set on its own loop.

    ``changed(sub_id)`` wakes the waiters of that submission; ``everyone=True`` wakes all of
    them (a submission left or joined the queue: the others' positions moved).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._waiters: dict[int, set] = defaultdict(set)

    @contextmanager
    def watch(self, sub_id: int):
        """An :class:`asyncio.Event` set at the next change (enter it before reading the
        state: a change in between is not missed)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters[sub_id].add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._waiters[sub_id].discard(entry)
                if not self._waiters[sub_id]:
                    del self._waiters[sub_id]

    def __call__(self, sub_id: int | None = None, everyone: bool = False) -> None:
        with self._lock:
            waiters = [
                entry
                for key, entries in self._waiters.items()
                if everyone or key == sub_id
                for entry in entries
            ]
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)


class RateLimited(Exception):
    """The student reached the assignment's hourly limit; the message says until when."""


def _write(path: Path, data: bytes) -> None:
    """Write a new file, readable by the service's user only, and sync it to disk."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Jobs:
    def __init__(self, config: ServiceConfig, sessions, grader: Grader):
        self.config, self.sessions, self.grader = config, sessions, grader
        self.store = config.data / "submissions"
        self.feedback = config.data / "feedback"
        self.store.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.feedback.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._claim_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # results are stored (gradebook, pages, the row) here, off the grading threads
        self._storing = ThreadPoolExecutor(max(1, config.jobs), thread_name_prefix="storing")
        self.changed = Changes()

    # -- the web side ------------------------------------------------------------------------
    def submit(self, db, user: User, assignment: Assignment, files: dict[str, bytes]):
        """Store ``files`` and queue them; raises :class:`RateLimited` past the hourly limit."""
        with self._submit_lock:
            since = utcnow() - timedelta(hours=1)
            recent = db.scalars(
                select(Submission.created_at)
                .where(
                    Submission.user_id == user.id,
                    Submission.assignment == assignment.name,
                    Submission.created_at > since,
                )
                .order_by(Submission.created_at)
            ).all()
            if assignment.per_hour and len(recent) >= assignment.per_hour:
                again = recent[0] + timedelta(hours=1)
                raise RateLimited(
                    f"You have handed in {assignment.name} {len(recent)} times in the last "
                    f"hour; the limit is {assignment.per_hour} per hour. You can hand in "
                    f"again at {again:%H:%M} UTC. Meanwhile, run the visible tests in your "
                    "notebook."
                )
            key = secrets.token_hex(16)
            folder = self.store / key
            folder.mkdir(mode=0o700)
            listed = []
            for name, data in sorted(files.items()):
                _write(folder / name, data)
                listed.append([name, len(data), hashlib.sha256(data).hexdigest()])
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            sub = Submission(
                user_id=user.id,
                assignment=assignment.name,
                folder=key,
                files_json=json.dumps(listed),
                checksum=checksum(files),
                state=QUEUED,
            )
            db.add(sub)
            db.commit()
        self._wake.set()
        self.changed(sub.id, everyone=True)
        return sub

    def left_this_hour(self, db, user: User, assignment) -> int | None:
        """How many more times ``user`` may hand in ``assignment`` now (None: no limit)."""
        if not assignment.per_hour:
            return None
        since = utcnow() - timedelta(hours=1)
        recent = db.scalar(
            select(func.count()).where(
                Submission.user_id == user.id,
                Submission.assignment == assignment.name,
                Submission.created_at > since,
            )
        )
        return max(0, assignment.per_hour - recent)

    def regrade(self, db, assignment: Assignment, ids: list[int]) -> int:
        """Queue submissions ``ids`` again on a freshly prepared assignment; returns how many.

        One grading now is asked to queue its row again when it finishes (``requeue``), set
        first, so that a grading finishing meanwhile is caught by one statement or the other.
        """
        assignment.version += 1
        mine = Submission.id.in_(ids)
        db.execute(
            update(Submission).where(mine, Submission.state == GRADING).values(requeue=True)
        )
        db.execute(
            update(Submission)
            .where(mine, Submission.state == GRADED)
            .values(state=QUEUED, queued_at=utcnow())
        )
        db.commit()
        self._wake.set()
        self.changed(everyone=True)
        return len(ids)

    # -- the grading side --------------------------------------------------------------------
    def start(self) -> None:
        with self.sessions() as db:
            redo = db.execute(
                update(Submission).where(Submission.state == GRADING).values(state=QUEUED)
            ).rowcount
            db.commit()
            waiting = db.scalar(select(func.count()).where(Submission.state == QUEUED))
        if redo or waiting:
            log.warning("queue: %d interrupted gradings redone, %d queued in all", redo, waiting)
        threading.Thread(target=self._warm, name="grader-warm", daemon=True).start()
        for i in range(self.config.jobs):
            thread = threading.Thread(target=self._run, name=f"grader-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _warm(self) -> None:
        """Prepare every assignment now, so that the first hand-in does not wait for it."""
        with self.sessions() as db:
            versions = {a.name: a.version for a in db.scalars(select(Assignment))}
        for name in self.config.assignments or sorted(versions):
            if self._stop.is_set():
                return
            try:
                self.grader.warm(name, versions.get(name, 1))
            except Exception:
                log.exception("queue: preparing %s failed", name)
        private_files(self.config.data)  # the gradebook, made by the first preparation

    def stop(self) -> None:
        """Stop taking work; gradings under way are killed and redone at the next start."""
        self._stop.set()
        self._wake.set()
        self.grader.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._storing.shutdown(wait=True, cancel_futures=True)

    def _waiting(self, db) -> tuple[list, Counter, set]:
        """The queued submissions in fair order, gradings per student, (student, assignment)
        pairs being graded."""
        grading = db.execute(
            select(Submission.user_id, Submission.assignment).where(Submission.state == GRADING)
        ).all()
        queued = db.execute(
            select(Submission.id, Submission.user_id, Submission.assignment, Submission.queued_at)
            .where(Submission.state == QUEUED)
            .order_by(Submission.queued_at, Submission.id)
        ).all()
        busy = Counter(user for user, _ in grading)
        return fair_order(queued, busy), busy, set(grading)

    def position(self, db, sub_id: int) -> tuple[int, float | None]:
        """How many queued submissions are ahead of ``sub_id``, and about how many seconds
        until its feedback (None before any grading finished)."""
        order, _, _ = self._waiting(db)
        ahead = next((i for i, row in enumerate(order) if row.id == sub_id), len(order))
        recent = db.scalars(
            select(Submission.seconds)
            .where(Submission.finished > 0, Submission.seconds > 0)
            .order_by(Submission.graded_at.desc())
            .limit(20)
        ).all()
        if not recent:
            return ahead, None
        typical = statistics.median(recent)
        return ahead, (ahead // self.config.jobs + 1) * typical

    def _share(self, students: set) -> int:
        """The graders one student may hold while ``students`` have work."""
        return max(1, self.config.jobs // max(1, len(students)))

    def _claim(self):
        """Take the first queued submission in fair order that its student may start now.

        A student holds at most a fair share of the graders (``jobs`` divided by the students
        with work, at least one), all assignments together, and never two submissions of one
        assignment at once (they share a row of the gradebook).
        """
        with self._claim_lock, self.sessions() as db:
            order, busy, pairs = self._waiting(db)
            share = self._share({row.user_id for row in order} | set(busy))
            for row in order:
                if (row.user_id, row.assignment) in pairs or busy[row.user_id] >= share:
                    continue
                sub = db.get(Submission, row.id)
                attempt = sub.attempts + 1  # read before the UPDATE (it syncs the object)
                taken = db.execute(
                    update(Submission)
                    .where(Submission.id == sub.id, Submission.state == QUEUED)
                    .values(
                        state=GRADING,
                        attempts=Submission.attempts + 1,
                        started_at=utcnow(),
                        requeue=False,
                    )
                ).rowcount
                db.commit()
                if taken:
                    version = db.get(Assignment, sub.assignment).version
                    job = (sub.id, sub.user.login, sub.assignment, version, sub.folder, sub.files)
                    return job, attempt
        return None

    def _run(self) -> None:
        """A grading thread: claim, grade on the engine, hand the result to the storing
        threads and claim the next at once (the worker it freed is fed without waiting for
        the gradebook)."""
        while not self._stop.is_set():
            try:
                job = self._claim()
            except Exception:
                log.exception("queue: claiming failed")
                job = None
            if job is None:
                self._wake.wait(self.config.poll_seconds)
                self._wake.clear()
                continue
            self._wake.set()  # another thread may find more work
            (sub_id, login, assignment, version, key, listed), attempt = job
            self.changed(sub_id, everyone=True)  # it leaves the queue: positions move
            try:
                graded = self._grade(login, assignment, version, key, listed)
            except Exception as error:  # a bug of ours: this submission only, and say so
                log.exception("queue: grading submission %s failed", sub_id)
                graded = Graded(failed(login, assignment, repr(error)), 0.0)
                traceback.print_exc()
            if self._stop.is_set():  # shutting down: left "grading", redone at the next start
                self.grader.discard(graded)
                return
            self._storing.submit(self._store, sub_id, attempt, graded)

    def _store(self, sub_id: int, attempt: int, graded: Graded) -> None:
        """A storing thread: the gradebook and the pages (:meth:`Grader.store`), then the
        submission's row: graded, or queued again after a grader error."""
        try:
            if self._stop.is_set():
                self.grader.discard(graded)  # left "grading", redone at the next start
                result = None
            else:
                try:
                    result = self.grader.store(graded)
                except Exception as error:  # a bug of ours: this submission only
                    log.exception("queue: storing submission %s failed", sub_id)
                    result = failed(graded.result.student, graded.result.assignment, repr(error))
            if result is None or self._stop.is_set():
                return
            if result.status == Status.GRADER_ERROR and attempt < MAX_ATTEMPTS:
                log.warning("queue: submission %s: %s; queued again", sub_id, result.detail)
                self._requeue(sub_id)
            else:
                self._finish(sub_id, result)
        except Exception:
            log.exception("queue: finishing submission %s failed", sub_id)
        finally:
            self._wake.set()  # a student's next submission of this assignment may start now

    def _requeue(self, sub_id: int) -> None:
        """A grading that failed on our side (a worker died, a bug): try once more."""
        with self.sessions() as db:
            db.execute(
                update(Submission)
                .where(Submission.id == sub_id, Submission.state == GRADING)
                .values(state=QUEUED, queued_at=utcnow())
            )
            db.commit()
        self._wake.set()
        self.changed(sub_id, everyone=True)

    def _grade(self, login, assignment, version, key, listed) -> Graded:
        files = {}
        for name, _size, digest in listed:
            data = (self.store / key / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                detail = f"the stored {name} does not match its checksum"
                return Graded(failed(login, assignment, detail), 0.0)
            files[name] = data
        return self.grader.run(assignment, login, files, version)

    def _finish(self, sub_id: int, result: Result) -> None:
        folder = self.feedback / str(sub_id)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700)
        for name, page in result.feedback.items():
            _write(folder / f"{name}.html", page.encode())
        checks = [
            {
                "notebook": c.notebook,
                "name": c.grade_id,
                "points": c.points,
                "max_points": c.max_points,
                "passed": c.passed,
                "message": c.message,
                "review": c.review,
                "kind": c.kind,
            }
            for c in result.checks
        ]
        with self.sessions() as db:
            sub = db.get(Submission, sub_id)
            values = dict(
                state=QUEUED if sub.requeue else GRADED,
                requeue=False,
                finished=Submission.finished + 1,
                graded_at=utcnow(),
                status=str(result.status),
                score=result.score,
                max_score=result.max_score,
                detail=result.detail,
                seconds=result.seconds,
                checks_json=json.dumps(checks),
            )
            if sub.requeue:
                values["queued_at"] = utcnow()
            db.execute(
                update(Submission)
                .where(Submission.id == sub_id, Submission.state == GRADING)
                .values(**values)
            )
            db.commit()
        self.changed(sub_id, everyone=bool(values["state"] == QUEUED))
        log.info(
            "graded submission %s: %s %s/%s", sub_id, result.status, result.score, result.max_score
        )
