"""The grading course: a scratch nbgrader course whose gradebook is the class's gradebook.

``prepare`` copies ``nbgrader_config.py`` and ``solutions/<assignment>/`` into
``OUT/course/`` and runs ``nbgrader generate_assignment`` there once, with the gradebook at
``--db`` (default ``sqlite:///OUT/gradebook.db``): nbgrader stores every cell of the
instructor notebook, hidden tests and checksums included, which is what ``OverwriteCells``
restores from. Workers share the gradebook; every access goes through :func:`gradebook`,
which holds a file lock so that SQLite sees one writer at a time. The lock is waited for at
most :data:`LOCK_TIMEOUT` seconds (then :class:`GradebookBusy`): a process that holds it
forever costs the students being graded a ``grader error``, never a hung class. Only the
workers open the gradebook; student kernels run sandboxed and never see ``OUT``.
"""

import fcntl
import json
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook

from ..homework import nbgrader

COURSE_ID = "dnncourse"
LOCK_TIMEOUT = 120.0  # seconds; a student's SaveAutoGrades takes well under one


class GradebookBusy(TimeoutError):
    """The gradebook lock was not free within :data:`LOCK_TIMEOUT` seconds."""


def _lock(lock, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                busy = f"the gradebook lock {lock.name} was busy for {timeout:g} s"
                raise GradebookBusy(busy) from None
            time.sleep(0.01)


# nbgrader's update_or_create_submission triggers SQLAlchemy autoflush warnings: harmless.
warnings.filterwarnings("ignore", message=".*not in session.*")


@dataclass
class Course:
    """Where the grading happens; JSON-serializable, handed to every worker."""

    root: str  # the scratch course (nbgrader's root)
    out: str
    assignment: str
    db_url: str
    notebooks: list[str]  # notebook names (no .ipynb)

    @property
    def lock(self) -> Path:
        return Path(self.out) / ".gradebook.lock"

    def release_notebook(self, name: str) -> nbformat.NotebookNode:
        path = Path(self.root) / "exercises" / self.assignment / f"{name}.ipynb"
        return nbformat.read(path, as_version=4)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@contextmanager
def gradebook(course: Course, timeout: float | None = None):
    """nbgrader's Gradebook, with an exclusive lock on ``OUT/.gradebook.lock``."""
    with open(course.lock, "a") as lock:
        _lock(lock, LOCK_TIMEOUT if timeout is None else timeout)
        try:
            with Gradebook(course.db_url, COURSE_ID) as gb:
                yield gb
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare(root: Path, assignment: str, out: Path, db_url: str | None = None) -> Course:
    """Generate ``assignment`` into the gradebook; returns the grading course."""
    out.mkdir(parents=True, exist_ok=True)
    source = root / "solutions" / assignment
    if not source.is_dir():
        known = sorted(p.name for p in (root / "solutions").iterdir() if p.is_dir())
        raise ValueError(f"unknown assignment {assignment!r}; solutions/ holds {known}")
    course_dir = out / "course"
    shutil.rmtree(course_dir / "solutions", ignore_errors=True)
    (course_dir / "solutions").mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "nbgrader_config.py", course_dir / "nbgrader_config.py")
    shutil.copytree(source, course_dir / "solutions" / assignment)
    db_url = db_url or f"sqlite:///{(out / 'gradebook.db').resolve()}"
    course = Course(
        root=str(course_dir.resolve()),
        out=str(out.resolve()),
        assignment=assignment,
        db_url=db_url,
        notebooks=sorted(p.stem for p in source.glob("*.ipynb")),
    )
    with open(course.lock, "a") as lock:
        _lock(lock, LOCK_TIMEOUT)
        nbgrader(
            course_dir,
            "generate_assignment",
            assignment,
            "--force",
            f"--CourseDirectory.db_url={db_url}",
        )
    return course


def register(course: Course, students: list[str]) -> None:
    """Create the students and their (empty) submissions in the gradebook."""
    with gradebook(course) as gb:
        for student in students:
            gb.update_or_create_student(student)
            gb.update_or_create_submission(course.assignment, student)


def max_score(course: Course) -> float:
    with gradebook(course) as gb:
        return float(gb.find_assignment(course.assignment).max_score)
