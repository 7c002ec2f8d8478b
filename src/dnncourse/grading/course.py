"""The grading course: nbgrader's gradebook for the class, and the bundle the workers get.

``prepare`` copies ``nbgrader_config.py`` and the assignment's source folder (the course's
own layout, :func:`dnncourse.homework.layout`: ``solutions/<assignment>/`` here,
``source/<assignment>/`` in most nbgrader courses) into ``OUT/course/`` and runs
``nbgrader generate_assignment`` there once, with the gradebook at
``--db`` (default ``sqlite:///OUT/gradebook.db``; ``postgresql://...`` uses psycopg 3):
nbgrader stores every cell of the instructor notebook, hidden tests and checksums included.
:func:`make_bundle` packs what the workers need out of it (the released notebooks, the
instructor's cells and points, the data files) into a :class:`~.protocol.Bundle`; workers
never open the gradebook. Only the client writes it (:func:`save_result`, the scores per
grade cell as nbgrader's ``SaveAutoGrades`` stores them), always under :func:`db_lock`: a
file lock beside a SQLite file, an advisory lock in PostgreSQL, both with a timeout.
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
from nbgrader import utils as nbutils
from nbgrader.api import Gradebook
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from ..homework import Layout, assignments, layout, nbgrader, scratch_course
from .protocol import Bundle, Limits, Result
from .verdict import is_test

COURSE_ID = "dnncourse"
LOCK_TIMEOUT = 300.0  # seconds to wait for another grading's hold on the gradebook
PG_LOCK_KEY = 0x646E6E63  # "dnnc": the advisory lock all dnncourse gradings share


class GradebookBusy(TimeoutError):
    """The gradebook's writer lock was not free within the timeout."""


# nbgrader's update_or_create_submission triggers SQLAlchemy autoflush warnings: harmless.
warnings.filterwarnings("ignore", message=".*not in session.*")


def database_url(url: str) -> str:
    """A SQLAlchemy URL; plain ``postgresql://`` gets the installed driver (psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass
class Course:
    """Where the grading happens (on the client); JSON-serializable."""

    root: str  # the scratch course (nbgrader's root)
    out: str
    assignment: str
    db_url: str
    notebooks: list[str]  # notebook names (no .ipynb)
    source: str = "solutions"  # the course's folders (homework.Layout)
    release: str = "exercises"
    course_id: str = COURSE_ID
    ignore: tuple[str, ...] = Layout.ignore

    @property
    def layout(self) -> Layout:
        return Layout(self.source, self.release, self.course_id, tuple(self.ignore))

    def release_notebook(self, name: str) -> nbformat.NotebookNode:
        path = Path(self.root) / self.release / self.assignment / f"{name}.ipynb"
        return nbformat.read(path, as_version=4)

    @property
    def lock(self) -> Path:
        """The lock file of a SQLite gradebook."""
        return sqlite_lock(self.db_url)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def sqlite_lock(db_url) -> Path:
    """The lock file beside a SQLite gradebook."""
    path = Path(make_url(db_url).database or "gradebook.db").resolve()
    return path.with_name(path.name + ".lock")


@contextmanager
def db_lock(db_url: str, timeout: float = LOCK_TIMEOUT):
    """Hold the gradebook's writer lock (at most ``timeout`` s of waiting, then TimeoutError)."""
    url = make_url(db_url)
    deadline = time.monotonic() + timeout
    busy = GradebookBusy(f"the gradebook {url.render_as_string()} was busy for {timeout:g} s")
    if url.get_backend_name() == "sqlite":
        with open(sqlite_lock(url), "a") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise busy from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    elif url.get_backend_name() == "postgresql":
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                take = text("SELECT pg_try_advisory_lock(:key)")
                while not conn.execute(take, {"key": PG_LOCK_KEY}).scalar():
                    if time.monotonic() > deadline:
                        raise busy
                    time.sleep(0.05)
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
        finally:
            engine.dispose()
    else:  # another database: its own transactions only
        yield


@contextmanager
def gradebook(course: Course, timeout: float = LOCK_TIMEOUT):
    """nbgrader's Gradebook, under the writer lock."""
    with db_lock(course.db_url, timeout), Gradebook(course.db_url, course.course_id) as gb:
        yield gb


# nbgrader's settings of its own grading run, which dnncourse replaces: refused, not ignored
NOT_READ = {
    "Execute": "--cell-timeout and --timeout of `dnncourse grade` and `dnncourse serve`",
    "ExecutePreprocessor": "--cell-timeout and --timeout of `dnncourse grade` and `serve`",
    "LimitOutput": "the output caps of dnncourse.grading.protocol.Limits",
    "Autograde": "the options of `dnncourse grade`",
}


def refuse_grading_settings(config: Path) -> None:
    """Raise ValueError if ``nbgrader_config.py`` sets what only ``nbgrader autograde`` reads
    (``c.Execute.timeout``, ``c.LimitOutput.max_lines``, ...): dnncourse grades with its own
    limits, and a setting it silently ignored would promise what it does not do."""
    from traitlets.config.loader import PyFileConfigLoader

    loaded = PyFileConfigLoader(config.name, path=str(config.parent)).load_config()
    found = [
        f"c.{section}.{name}" for section in NOT_READ for name in sorted(loaded.get(section, {}))
    ]
    if found:
        uses = sorted({NOT_READ[name.split(".")[1]] for name in found})
        raise ValueError(
            f"{config} sets {', '.join(found)}, which dnncourse does not read (nbgrader's own "
            f"autograde does): use {'; '.join(uses)} instead, and remove "
            f"{'it' if len(found) == 1 else 'them'} from {config.name}"
        )


def prepare(root: Path, assignment: str, out: Path, db_url: str | None = None) -> Course:
    """Generate ``assignment`` into the gradebook; returns the grading course."""
    refuse_grading_settings(root / "nbgrader_config.py")
    out.mkdir(parents=True, exist_ok=True)
    lay = layout(root)
    source = root / lay.source / assignment
    known = assignments(root)
    if assignment not in known:
        raise ValueError(f"unknown assignment {assignment!r}; {lay.source}/ holds {known}")
    course_dir = out / "course"
    shutil.rmtree(course_dir / lay.source, ignore_errors=True)
    course_dir.mkdir(parents=True, exist_ok=True)
    scratch_course(root, course_dir, assignment)
    db_url = database_url(db_url or f"sqlite:///{(out / 'gradebook.db').resolve()}")
    course = Course(
        root=str(course_dir.resolve()),
        out=str(out.resolve()),
        assignment=assignment,
        db_url=db_url,
        notebooks=sorted(p.stem for p in source.glob("*.ipynb")),
        source=lay.source,
        release=lay.release,
        course_id=lay.course_id,
        ignore=lay.ignore,
    )
    with db_lock(db_url):
        nbgrader(
            course_dir,
            "generate_assignment",
            assignment,
            "--force",
            f"--CourseDirectory.db_url={db_url}",
            *lay.args(),
        )
    return course


def make_bundle(course: Course, limits: Limits | None = None, sandbox: bool = True) -> Bundle:
    """The released notebooks, the instructor's cells from the gradebook, the data files,
    and the trusted reference records of the instructor's solution (:mod:`.reference`: run
    once with ``limits``, then cached by checksum under ``OUT/reference/``)."""
    from . import reference

    files, cells = {}, {}
    for name in course.notebooks:
        solution = reference.solution_of(course, name)
        records = reference.records(
            solution, reference.cache_of(course), limits, sandbox, course.layout
        )
        files[f"reference/{name}.json"] = json.dumps(records, sort_keys=True).encode()
    for name in course.notebooks:
        files[f"release/{name}.ipynb"] = nbformat.writes(course.release_notebook(name)).encode()
    with gradebook(course) as gb:
        for name in course.notebooks:
            notebook = gb.find_notebook(name, course.assignment)
            cells[name] = {
                "kernelspec": notebook.kernelspec,
                "source_cells": {
                    c.name: {
                        "cell_type": c.cell_type,
                        "locked": c.locked,
                        "checksum": c.checksum,
                        "source": c.source,
                    }
                    for c in notebook.source_cells
                },
                "grade_cells": {c.name: float(c.max_score) for c in notebook.grade_cells},
            }
    files["gradebook.json"] = json.dumps(cells, sort_keys=True).encode()
    source = Path(course.root) / course.source / course.assignment
    for extra in reference.data_files(source, course.layout):  # as autograde copies them
        files[f"data/{extra.relative_to(source).as_posix()}"] = extra.read_bytes()
    return Bundle(course.assignment, files)


def register(course: Course, students: list[str]) -> None:
    """Create the students and their (empty) submissions in the gradebook."""
    with gradebook(course) as gb:
        for student in students:
            gb.update_or_create_student(student)
            gb.update_or_create_submission(course.assignment, student)


def _by_hand(graded: dict[str, bytes]) -> dict[tuple[str, str], float | None]:
    """nbgrader's automatic score of each answer graded by hand (a written answer, a code
    answer with points): 0 if left as released, else None (a person grades it); None for a
    task (nbgrader's ``SaveAutoGrades`` never scores one)."""
    scores = {}
    for name, data in graded.items():
        nb = nbformat.reads(data, as_version=4)
        for cell in nb.cells:
            if nbutils.is_task(cell):
                scores[(name, cell.metadata.nbgrader["grade_id"])] = None
            elif nbutils.is_grade(cell) and not is_test(cell):
                gid = cell.metadata.nbgrader["grade_id"]
                scores[(name, gid)] = nbutils.determine_grade(cell)[0]
    return scores


def save_result(course: Course, result: Result) -> tuple[float, float]:
    """Store the scores of ``result`` as ``SaveAutoGrades`` would; (score, max_score) back.

    Each graded test cell gets its ``auto_score`` (the check's points; zero for a cell
    without a check, as for a notebook that could not be graded); an answer graded by hand
    gets nbgrader's (zero if left as released, else none: it needs a manual grade); a manual
    grade an instructor entered stays and the cell is flagged for review, as nbgrader does.
    A cell held by the rules (``Check.review``) is flagged too: the formgrader lists it as
    needing a manual grade.
    The graded notebooks go to ``course/autograded/<student>/<assignment>/``, where the
    formgrader looks.
    """
    points = {(c.notebook, c.grade_id): c.points for c in result.checks}
    held = {(c.notebook, c.grade_id) for c in result.checks if c.review}
    by_hand = _by_hand(result.graded)
    with gradebook(course) as gb:
        gb.update_or_create_student(result.student)
        submission = gb.update_or_create_submission(course.assignment, result.student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                key = (notebook.name, grade.name)
                if key not in points and key in by_hand:
                    grade.auto_score = by_hand[key]
                else:
                    grade.auto_score = points.get(key, 0.0)
                grade.needs_manual_grade = (
                    grade.manual_score is not None or grade.auto_score is None or key in held
                )
        gb.db.commit()
        submission = gb.find_submission(course.assignment, result.student)
        score, max_score = float(submission.score), float(submission.max_score)
    graded = Path(course.root) / "autograded" / result.student / course.assignment
    for name, data in result.graded.items():
        graded.mkdir(parents=True, exist_ok=True)
        (graded / f"{name}.ipynb").write_bytes(data)
    return score, max_score


def scores_now(course: Course, students) -> dict[str, tuple[float, float]]:
    """(score, max_score) of each of ``students`` as the gradebook has them now, manual grades
    an instructor entered since included; a student without a submission there is left out."""
    from nbgrader.api import MissingEntry

    found = {}
    with gradebook(course) as gb:
        for student in students:
            try:
                submission = gb.find_submission(course.assignment, student)
            except MissingEntry:
                continue
            found[student] = (float(submission.score), float(submission.max_score))
    return found


def max_score(course: Course) -> float:
    with gradebook(course) as gb:
        return float(gb.find_assignment(course.assignment).max_score)
