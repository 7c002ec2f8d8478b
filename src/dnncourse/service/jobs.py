"""The grading queue: a submission is stored before it is queued, and finished exactly once.

:meth:`Jobs.submit` writes the files under ``DATA/submissions/<key>/`` (fsync'd, with their
SHA-256), then commits the row in state ``queued``: only then does the student hear
"received". ``jobs`` threads each claim the oldest queued submission (a conditional UPDATE,
so two threads never take the same one; never two of one student's submissions of one
assignment at once, as they share a row of the gradebook), check the stored bytes against
the checksum, grade through :class:`~dnncourse.service.grader.Grader` and finish the row
in one UPDATE that only a ``grading`` row accepts. On start, rows left ``grading`` by a
crash are queued again: an interrupted grading is redone, a finished one never. A grading
that ends in ``grader error`` (the worker died, a bug of ours) is queued once more before
that status is final.
"""

import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import traceback
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from ..grading.protocol import Result, Status, checksum, failed
from .config import ServiceConfig
from .grader import Grader
from .models import GRADED, GRADING, QUEUED, Assignment, Submission, User, utcnow

log = logging.getLogger("dnncourse.service")
MAX_ATTEMPTS = 2  # a grading that ends in "grader error" (a worker died) is tried once more


class RateLimited(Exception):
    """The student reached the assignment's hourly limit; the message says until when."""


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Jobs:
    def __init__(self, config: ServiceConfig, sessions, grader: Grader):
        self.config, self.sessions, self.grader = config, sessions, grader
        self.store = config.data / "submissions"
        self.feedback = config.data / "feedback"
        self.store.mkdir(parents=True, exist_ok=True)
        self.feedback.mkdir(parents=True, exist_ok=True)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._claim_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

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
            folder.mkdir()
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
        return sub

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

    def stop(self) -> None:
        """Stop taking work; gradings under way are killed and redone at the next start."""
        self._stop.set()
        self._wake.set()
        self.grader.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _claim(self):
        """Take the oldest queued submission whose student has none of it in grading."""
        with self._claim_lock, self.sessions() as db:
            busy = set(
                db.execute(
                    select(Submission.user_id, Submission.assignment).where(
                        Submission.state == GRADING
                    )
                ).all()
            )
            queued = db.scalars(
                select(Submission)
                .where(Submission.state == QUEUED)
                .order_by(Submission.queued_at, Submission.id)
                .limit(200)
            ).all()
            for sub in queued:
                if (sub.user_id, sub.assignment) in busy:
                    continue
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
            try:
                result = self._grade(login, assignment, version, key, listed)
            except Exception as error:  # a bug of ours: this submission only, and say so
                log.exception("queue: grading submission %s failed", sub_id)
                result = failed(login, assignment, repr(error))
                traceback.print_exc()
            if self._stop.is_set():  # shutting down: left "grading", redone at the next start
                return
            if result.status == Status.GRADER_ERROR and attempt < MAX_ATTEMPTS:
                log.warning("queue: submission %s: %s; queued again", sub_id, result.detail)
                self._requeue(sub_id)
            else:
                self._finish(sub_id, result)

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

    def _grade(self, login, assignment, version, key, listed) -> Result:
        files = {}
        for name, _size, digest in listed:
            data = (self.store / key / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                return failed(login, assignment, f"the stored {name} does not match its checksum")
            files[name] = data
        return self.grader.grade(assignment, login, files, version)

    def _finish(self, sub_id: int, result: Result) -> None:
        folder = self.feedback / str(sub_id)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name, page in result.feedback.items():
            (folder / f"{name}.html").write_text(page)
        checks = [
            {
                "notebook": c.notebook,
                "name": c.grade_id,
                "points": c.points,
                "max_points": c.max_points,
                "passed": c.passed,
                "message": c.message,
                "review": c.review,
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
        log.info(
            "graded submission %s: %s %s/%s", sub_id, result.status, result.score, result.max_score
        )
